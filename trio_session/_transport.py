"""Transport: one binary WebSocket message per protocol frame, over trio-websocket.

The session layer above does its own heartbeats, credit flow control and
sequencing, so all it needs from the network is "send these bytes as one
message", "give me the next message" and "close, within a bounded time".  This
module provides exactly that behind the small :class:`Transport` protocol, with
two implementations:

* :class:`WebSocketTransport`, a thin adapter over trio-websocket 0.12.2, made by
  :func:`connect_transport` (client) and :func:`serve_transport` (server);
* :class:`MemoryTransport`, an in-memory pair on Trio memory channels
  (:func:`memory_transport_pair`) for deterministic tests with ``MockClock``.

Why we do not use trio-websocket's high-level API (see
``research/libs-and-style.md`` §A.5): ``open_websocket``'s ``connect_timeout``
does not fire against a peer that accepts TCP and then stalls; a cancelled
client handshake leaks the TCP stream; ``serve_websocket`` raises handler errors
as four nested ExceptionGroups.  So we open the TCP/TLS stream ourselves, run
the WebSocket handshake under one deadline that we own, force-close the stream
on any failure, and run our own accept loop.

Two more trio-websocket behaviours are covered here (found by reading
``trio_websocket/_impl.py`` 0.12.2 and checked by tests):

* its reader task raises ``ConnectionRejected`` *into the nursery it runs in*
  when a server answers the upgrade with an HTTP error, and it never wakes a
  pending handshake when the TCP connection ends before the upgrade completes
  (the handshake then waits for our deadline instead of failing at once).  We
  run the reader under a small supervisor (:class:`_ReaderSupervisor`) that
  records the reader's error instead of crashing the caller's nursery, wakes a
  pending handshake as soon as the reader ends, and closes the stream then;
* after a clean *remote* close on the client side, or after it rejects an
  oversized message, trio-websocket never closes the TCP stream itself
  (``WebSocketConnection.aclose`` returns early once a close reason is known),
  which would leak a socket.  Our reader supervisor and :meth:`WebSocketTransport.aclose`
  always close the stream.

All errors leave this module as :class:`~trio_session._errors.ConnectionLost`,
:class:`~trio_session._errors.HandshakeTimeout` or
:class:`~trio_session._errors.FrameError` (chained with ``from``), or as Trio
cancellation; no ExceptionGroup from trio-websocket's internals reaches callers.

Backpressure note: trio-websocket answers WebSocket pings and close frames only
while its internal message queue has room.  We keep that queue small
(:data:`MESSAGE_QUEUE_SIZE`) and :meth:`WebSocketTransport.receive` cheap; the
session layer must read continuously and apply its own policy in its own
channel.  Writes share one lock with pong/close replies and have no deadline of
their own: the session layer must bound every :meth:`Transport.send` with
``trio.fail_after``.

This module is private; ``trio_session`` re-exports what users need.
"""

from __future__ import annotations

import logging
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Protocol, cast, final

import attrs
import trio
import trio_websocket

from ._errors import ConnectionLost, FrameError, HandshakeTimeout

__all__ = [
    "MESSAGE_QUEUE_SIZE",
    "RECEIVE_BUFFER_SIZE",
    "MemoryTransport",
    "Transport",
    "TransportServer",
    "WebSocketTransport",
    "connect_transport",
    "memory_transport_pair",
    "serve_transport",
]

logger = logging.getLogger("trio_session.transport")

#: Size of trio-websocket's internal message queue.  Small, because the
#: library stops reading the socket (and so stops answering pings and close
#: frames) while it is full; big enough that a reader that pauses for a moment
#: does not stall the socket.  Not 0: a rendezvous would stall the reader on
#: every message.
MESSAGE_QUEUE_SIZE = 16

#: Bytes asked of the socket per read by trio-websocket's reader (its default
#: is 4 KiB, which costs a Trio checkpoint per 4 KiB under load).
RECEIVE_BUFFER_SIZE = 64 * 1024

# Errors that mean "the connection is gone" at the trio / trio-websocket boundary.
_LOST_ERRORS: tuple[type[BaseException], ...] = (
    trio_websocket.ConnectionClosed,
    trio_websocket.HandshakeError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    OSError,  # includes ssl.SSLError
)


class Transport(Protocol):
    """What the session layer needs from a connection: whole binary messages.

    Implementations: :class:`WebSocketTransport` and :class:`MemoryTransport`.
    """

    async def send(self, data: bytes) -> None:
        """Send ``data`` as one binary message.

        Raises:
            ConnectionLost: the connection is closed or broke (also after a
                local :meth:`aclose`).
        """
        ...

    async def receive(self) -> bytes:
        """Return the next binary message.

        Raises:
            ConnectionLost: the connection broke or the peer closed it (the
                message carries the close code and reason).
            FrameError: the peer sent a text message (a protocol violation).
        """
        ...

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection: gracefully within ``close_timeout``, then by force.

        Idempotent; always releases the socket, even when cancelled.
        """
        ...

    @property
    def remote_address(self) -> str:
        """The peer's address as ``"ip:port"`` (``"[ip]:port"`` for IPv6)."""
        ...

    @property
    def closed(self) -> bool:
        """True once the connection is known to be closed, by either side."""
        ...

    @property
    def opened_at(self) -> float:
        """Trio time at which the connection was accepted/opened: the start of
        the one handshake deadline that covers upgrade and authentication."""
        ...


# ---------------------------------------------------------------------------
# Error mapping


def _describe_close(reason: trio_websocket.CloseReason | None) -> str:
    if reason is None:
        return "connection closed"
    text = f"connection closed: code {reason.code}"
    return f"{text} {reason.reason}" if reason.reason else text


class _ErrorMapper:
    """Context manager made by :func:`_map_errors`.

    A class, not ``@contextmanager``, because it sits on the per-message path.
    """

    __slots__ = ("_reader", "_remote")

    def __init__(self, reader: _ReaderSupervisor | None = None, *, remote: bool = True) -> None:
        self._reader = reader
        self._remote = remote

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None or not isinstance(exc, _LOST_ERRORS):
            return
        if isinstance(exc, trio_websocket.ConnectionClosed):
            message = _describe_close(exc.reason)
        elif isinstance(exc, trio_websocket.ConnectionRejected):
            message = f"WebSocket upgrade rejected: HTTP {exc.status_code}"
        else:
            message = f"connection lost: {_explain(exc)}"
        cause: BaseException = exc
        if self._reader is not None and self._reader.error is not None:
            # The reader died with an unexpected error: that is the real cause.
            cause = self._reader.error
            message = f"{message} (reader failed: {type(cause).__name__})"
        raise ConnectionLost(message, remote=self._remote) from cause


def _explain(exc: BaseException) -> str:
    """Name an error by its innermost cause: trio wraps an ``ssl.SSLError``
    (e.g. an untrusted certificate) in a BrokenResourceError with no text."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        parts.append(f"{type(current).__name__}: {text}" if text else type(current).__name__)
        current = current.__cause__ or current.__context__
    return " <- ".join(parts)


def _map_errors(reader: _ReaderSupervisor | None = None, *, remote: bool = True) -> _ErrorMapper:
    """Translate trio / trio-websocket errors into :class:`ConnectionLost`.

    The one place where transport errors cross into our taxonomy (as httpcore's
    ``map_exceptions``), always chained with ``raise ... from``.  ``reader``
    supplies the reader's own failure, when it had one, as the real cause.
    """
    return _ErrorMapper(reader, remote=remote)


# ---------------------------------------------------------------------------
# Reader supervision


@attrs.define(eq=False)
class _ReaderSupervisor:
    """Runs trio-websocket's reader task for one connection.

    trio-websocket's ``wrap_*_stream`` take a nursery and only call its
    ``start_soon`` to spawn the reader; this object stands in for that nursery
    (duck-typed) so that we can (1) keep reader errors such as
    ``ConnectionRejected`` out of the caller's nursery, (2) wake a pending
    handshake when the reader ends before the upgrade completes, and (3) close
    the stream when the reader ends, which trio-websocket does not always do.
    """

    nursery: trio.Nursery
    stream: trio.abc.AsyncResource
    #: Cancelled when the reader ends, to abort a pending handshake wait.
    handshake_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    #: The reader's unexpected error, if it failed.
    error: Exception | None = None
    finished: bool = False

    def start_soon(
        self,
        async_fn: Callable[..., Awaitable[object]],
        *args: object,
        name: object = None,
    ) -> None:
        self.nursery.start_soon(self._run, async_fn, args, name=name or async_fn)

    def as_nursery(self) -> trio.Nursery:
        # trio-websocket only ever calls ``start_soon`` on the nursery it is given.
        return cast("trio.Nursery", self)

    async def _run(
        self, async_fn: Callable[..., Awaitable[object]], args: tuple[object, ...]
    ) -> None:
        try:
            await async_fn(*args)
        except Exception as exc:  # never let the reader crash the caller's nursery
            self.error = exc
            logger.debug("websocket reader ended with %s", type(exc).__name__, exc_info=True)
        finally:
            self.finished = True
            self.handshake_scope.cancel()
            # Without its reader a connection can neither answer pings nor see
            # a close: release the socket now rather than at the owner's aclose.
            await trio.aclose_forcefully(self.stream)


def _peer_address(stream: trio.abc.Stream) -> str:
    sock_stream = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(sock_stream, trio.SocketStream):
        try:
            addr = sock_stream.socket.getpeername()
        except OSError:
            return "unknown"
        if isinstance(addr, tuple):
            host, port = addr[0], addr[1]
            return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
        return str(addr)
    return "unknown"


# ---------------------------------------------------------------------------
# WebSocket transport


@final
class WebSocketTransport(trio.abc.AsyncResource):
    """A :class:`Transport` over one trio-websocket connection.

    Made by :func:`connect_transport` or :func:`serve_transport`; not
    constructed directly.  The reader task lives in the nursery that was
    given at creation; :meth:`aclose` closes the stream, which ends it.
    """

    __slots__ = (
        "_close_timeout",
        "_closed",
        "_opened_at",
        "_reader",
        "_remote_address",
        "_stream",
        "_ws",
    )

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        stream: trio.abc.Stream,
        reader: _ReaderSupervisor,
        *,
        close_timeout: float,
        opened_at: float | None = None,
    ) -> None:
        self._opened_at = trio.current_time() if opened_at is None else opened_at
        self._ws = ws
        self._stream = stream
        self._reader = reader
        self._close_timeout = close_timeout
        self._closed = False
        # Read once: getpeername() fails after the socket is closed.
        self._remote_address = _peer_address(stream)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<WebSocketTransport {self._remote_address} {state}>"

    @property
    def opened_at(self) -> float:
        return self._opened_at

    @property
    def remote_address(self) -> str:
        return self._remote_address

    @property
    def closed(self) -> bool:
        # The reader ending (remote close, reset, or its nursery cancelled)
        # also means that nothing more can be sent.
        return self._closed or self._reader.finished or self._ws.closed is not None

    async def send(self, data: bytes) -> None:
        """Send ``data`` as one binary message; see :meth:`Transport.send`.

        Has no deadline of its own (a peer that stops reading blocks it once
        the TCP buffers fill): bound it with ``trio.fail_after``.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise ConnectionLost("transport closed locally")
        with _map_errors(self._reader, remote=True):
            await self._ws.send_message(data)

    async def receive(self) -> bytes:
        """Return the next binary message; see :meth:`Transport.receive`.

        Messages the peer sent before closing are delivered first.
        """
        with _map_errors(self._reader, remote=not self._closed):
            message = await self._ws.get_message()
        if isinstance(message, bytes):
            return message
        raise FrameError("received a text WebSocket message; only binary is allowed", remote=True)

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close gracefully within ``close_timeout``, then forcefully.

        Idempotent; the stream is closed even if this is cancelled or the
        peer never answers the close frame.

        Raises:
            ValueError: ``code`` is not a valid WebSocket close code (1000-4999);
                the connection is still closed, forcefully.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        valid = 1000 <= code <= 4999
        try:
            # Without its reader nobody can see the peer's close frame: waiting
            # for the close handshake would only burn close_timeout.
            if valid and not self._reader.finished:
                with trio.move_on_after(self._close_timeout):
                    try:
                        await self._ws.aclose(code, reason or None)
                    except Exception as exc:  # e.g. wsproto state errors: close anyway
                        logger.debug("graceful close of %s failed: %r", self._remote_address, exc)
        finally:
            await trio.aclose_forcefully(self._stream)
            logger.debug("closed transport to %s", self._remote_address)
        if not valid:
            raise ValueError(f"invalid WebSocket close code {code}")


def _parse_url(
    url: str, ssl_context: ssl.SSLContext | None
) -> tuple[str, int, str, str, ssl.SSLContext | None]:
    """Return ``(host, port, host_header, resource, ssl_context)`` for a ws/wss URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"WebSocket URL scheme must be ws or wss, got {parts.scheme!r}")
    host = parts.hostname
    if not host:
        raise ValueError("WebSocket URL has no host")
    if parts.scheme == "ws":
        if ssl_context is not None:
            raise ValueError("ssl_context given for a ws:// URL; use wss://")
        context = None
    else:
        context = ssl_context if ssl_context is not None else ssl.create_default_context()
    default_port = 443 if context is not None else 80
    port = parts.port if parts.port is not None else default_port
    host_for_header = f"[{host}]" if ":" in host else host
    host_header = host_for_header if port == default_port else f"{host_for_header}:{port}"
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return host, port, host_header, resource, context


async def connect_transport(
    url: str,
    *,
    nursery: trio.Nursery,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float,
    max_message_size: int,
    close_timeout: float = 2.0,
) -> WebSocketTransport:
    """Open a WebSocket client connection to a ``ws://`` or ``wss://`` URL.

    TCP connect, TLS handshake (``wss``: ``ssl_context``, default
    :func:`ssl.create_default_context`) and WebSocket upgrade all run under
    one deadline, ``connect_timeout``, that we own (trio-websocket's does not
    work against a stalled peer).  On any failure or cancellation the stream
    is closed before the error propagates, so no socket leaks.

    The connection's reader task runs in ``nursery`` (normally the session
    nursery), which therefore must outlive the transport; :meth:`aclose`
    ends the reader, and cancelling ``nursery`` ends the reader and closes the
    stream.  The reader never raises into ``nursery``.

    Raises:
        HandshakeTimeout: not connected within ``connect_timeout``.
        ConnectionLost: refused, reset, TLS failure, or upgrade rejected or
            aborted by the server (chained from the original error).
        ValueError: malformed URL, or ``ssl_context`` given for ``ws://``.
    """
    host, port, host_header, resource, context = _parse_url(url, ssl_context)
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None = None
    with trio.move_on_after(connect_timeout) as timeout_scope:
        try:
            with _map_errors(remote=True):
                tcp = await trio.open_tcp_stream(host, port)
                stream = tcp
                if context is not None:
                    stream = trio.SSLStream(
                        tcp, context, server_hostname=host, https_compatible=True
                    )
                    await stream.do_handshake()
            # The upgrade runs in this task and the reader goes straight into
            # ``nursery``: no task of our own in between, which would cost a
            # spawn and scheduling rounds on every connect.
            reader = _ReaderSupervisor(nursery, stream)
            ws: trio_websocket.WebSocketConnection | None = None
            with reader.handshake_scope:
                ws = await trio_websocket.wrap_client_stream(
                    reader.as_nursery(),
                    stream,
                    host_header,
                    resource,
                    message_queue_size=MESSAGE_QUEUE_SIZE,
                    max_message_size=max_message_size,
                    receive_buffer_size=RECEIVE_BUFFER_SIZE,
                )
            if ws is None:
                # The reader ended before the upgrade finished (it recorded why).
                error = reader.error
                if isinstance(error, trio_websocket.ConnectionRejected):
                    raise ConnectionLost(
                        f"WebSocket upgrade rejected: HTTP {error.status_code}", remote=True
                    ) from error
                raise ConnectionLost(
                    "connection closed during the WebSocket upgrade", remote=True
                ) from error
        except BaseException:
            # The reader, if it started, ends on its own once the stream is closed.
            if stream is not None:
                await trio.aclose_forcefully(stream)
            raise
        transport = WebSocketTransport(ws, stream, reader, close_timeout=close_timeout)
        logger.debug("connected to %s", transport.remote_address)
        return transport
    assert timeout_scope.cancelled_caught  # and the stream was closed on the way out
    logger.debug("connect to %s:%s timed out after %ss", host, port, connect_timeout)
    raise HandshakeTimeout(f"connect to {host}:{port} timed out after {connect_timeout}s")


# ---------------------------------------------------------------------------
# Server


@attrs.frozen
class TransportServer:
    """What ``await nursery.start(serve_transport, ...)`` returns."""

    #: The host the server was asked to bind.
    host: str
    #: The actual bound port (of the first listener, when there are several).
    port: int
    #: The listeners accepting connections (SSL listeners when TLS is on).
    listeners: list[trio.SocketListener] | list[trio.SSLListener[trio.SocketStream]]


async def serve_transport(
    handler: Callable[[Transport], Awaitable[None]],
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    handshake_timeout: float,
    max_message_size: int,
    close_timeout: float = 2.0,
    task_status: trio.TaskStatus[TransportServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept WebSocket connections and run ``handler(transport)`` for each.

    Use as ``server = await nursery.start(serve_transport, handler, host, 0, ...)``;
    runs until cancelled.  Each connection gets its own task and nursery, so
    one connection cannot cancel another.  Per connection, the TLS handshake
    (when ``ssl_context`` is given) and the WebSocket upgrade must finish within
    ``handshake_timeout``; a client that fails or stalls is dropped and logged
    at DEBUG (a slowloris or garbage client never disturbs the server).

    When ``handler`` returns the transport is closed with 1000; when it raises
    an ``Exception``, the error is logged with ``logger.exception``, swallowed
    (so the server keeps serving) and the transport is closed with 1011.  The
    session layer is expected to map its own errors before they get here.
    Cancellation propagates and closes the transport forcefully.
    """

    async def serve_connection(
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
    ) -> None:
        await _serve_connection(
            stream,
            handler,
            handshake_timeout=handshake_timeout,
            max_message_size=max_message_size,
            close_timeout=close_timeout,
        )

    tcp_listeners = await trio.open_tcp_listeners(port, host=host)
    try:
        listeners: list[trio.SocketListener] | list[trio.SSLListener[trio.SocketStream]]
        if ssl_context is not None:
            listeners = [
                trio.SSLListener(listener, ssl_context, https_compatible=True)
                for listener in tcp_listeners
            ]
        else:
            listeners = tcp_listeners
        bound_port = int(tcp_listeners[0].socket.getsockname()[1])
        server = TransportServer(host=host, port=bound_port, listeners=listeners)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, serve_connection, listeners)
            logger.debug("serving on %s:%s", host, bound_port)
            task_status.started(server)
    finally:
        # serve_listeners closes them too; this covers failures before it runs.
        for listener in tcp_listeners:
            await trio.aclose_forcefully(listener)


async def _serve_connection(
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
    handler: Callable[[Transport], Awaitable[None]],
    *,
    handshake_timeout: float,
    max_message_size: int,
    close_timeout: float,
) -> None:
    """Handshake one accepted connection and run the handler; never raises
    anything but cancellation (``trio.serve_listeners`` closes the stream)."""
    address = _peer_address(stream)
    opened_at = trio.current_time()
    try:
        async with trio.open_nursery() as nursery:
            reader = _ReaderSupervisor(nursery, stream)
            ws = await _server_handshake(stream, reader, handshake_timeout, max_message_size)
            if ws is None:
                nursery.cancel_scope.cancel()
                await trio.aclose_forcefully(stream)
                return
            transport = WebSocketTransport(
                ws, stream, reader, close_timeout=close_timeout, opened_at=opened_at
            )
            logger.debug("accepted connection from %s", address)
            code = 1000
            try:
                await handler(transport)
            except Exception:
                code = 1011
                logger.exception("connection handler for %s raised", address)
            finally:
                await transport.aclose(code)
    except Exception:  # pragma: no cover - a bug in this module; keep serving others
        logger.exception("internal error serving %s", address)


async def _server_handshake(
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
    reader: _ReaderSupervisor,
    handshake_timeout: float,
    max_message_size: int,
) -> trio_websocket.WebSocketConnection | None:
    """TLS + WebSocket upgrade under ``handshake_timeout``; None on any failure."""
    address = _peer_address(stream)
    with trio.move_on_after(handshake_timeout) as timeout_scope:
        try:
            if isinstance(stream, trio.SSLStream):
                await stream.do_handshake()
            with reader.handshake_scope:
                request = await trio_websocket.wrap_server_stream(
                    reader.as_nursery(),
                    stream,
                    message_queue_size=MESSAGE_QUEUE_SIZE,
                    max_message_size=max_message_size,
                    receive_buffer_size=RECEIVE_BUFFER_SIZE,
                )
                return await request.accept()
        except Exception as exc:  # garbage clients can make wsproto raise anything
            logger.debug("handshake with %s failed: %s: %s", address, type(exc).__name__, exc)
            return None
    if timeout_scope.cancelled_caught:
        logger.debug("handshake with %s timed out after %ss", address, handshake_timeout)
    else:
        logger.debug("connection from %s ended during the handshake", address)
    return None


# ---------------------------------------------------------------------------
# In-memory transport


@attrs.define(eq=False)
class _MemoryLink:
    """State shared by the two ends of a memory pair."""

    broken: bool = False
    ends: list[MemoryTransport] = attrs.Factory(list)


@final
class MemoryTransport(trio.abc.AsyncResource):
    """One end of :func:`memory_transport_pair`: a :class:`Transport` on memory channels.

    Deterministic (no I/O, works with ``MockClock``).  Closing one end is a
    clean close: the peer receives what was already sent, then
    :class:`ConnectionLost` with the close code.  :meth:`break_` simulates an
    abrupt loss (a reset): undelivered messages are dropped and both ends
    raise :class:`ConnectionLost`.
    """

    __slots__ = (
        "_close_code",
        "_close_reason",
        "_closed",
        "_link",
        "_name",
        "_opened_at",
        "_receive_channel",
        "_send_channel",
    )

    def __init__(
        self,
        link: _MemoryLink,
        name: str,
        send_channel: trio.MemorySendChannel[bytes],
        receive_channel: trio.MemoryReceiveChannel[bytes],
    ) -> None:
        self._link = link
        self._name = name
        self._send_channel = send_channel
        self._receive_channel = receive_channel
        self._closed = False
        self._close_code: int | None = None
        self._close_reason = ""
        self._opened_at = trio.current_time()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<MemoryTransport {self._name} {state}>"

    @property
    def opened_at(self) -> float:
        return self._opened_at

    @property
    def remote_address(self) -> str:
        return "memory:" + ("b" if self._name == "a" else "a")

    @property
    def closed(self) -> bool:
        return self._closed or self._link.broken or self._peer()._closed

    def _peer(self) -> MemoryTransport:
        a, b = self._link.ends
        return b if a is self else a

    def _lost(self) -> ConnectionLost:
        if self._link.broken:
            return ConnectionLost("connection lost: link broken", remote=True)
        if self._closed:
            return ConnectionLost("transport closed locally")
        peer = self._peer()
        text = f"connection closed: code {peer._close_code}"
        if peer._close_reason:
            text += f" {peer._close_reason}"
        return ConnectionLost(text, remote=True)

    async def send(self, data: bytes) -> None:
        if self._closed or self._link.broken:
            await trio.lowlevel.checkpoint()
            raise self._lost()
        try:
            await self._send_channel.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self._lost() from exc

    async def receive(self) -> bytes:
        try:
            return await self._receive_channel.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError) as exc:
            raise self._lost() from exc

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close this end; the peer drains what was sent, then sees the close."""
        if not self._closed:
            self._closed = True
            self._close_code = code
            self._close_reason = reason
            self._send_channel.close()
            self._receive_channel.close()
        await trio.lowlevel.checkpoint()

    def break_(self) -> None:
        """Simulate an abrupt connection loss on both ends (synchronous)."""
        self._link.broken = True
        for end in self._link.ends:
            end._send_channel.close()
            end._receive_channel.close()

    abort = break_


def memory_transport_pair(*, capacity: int = 64) -> tuple[MemoryTransport, MemoryTransport]:
    """Return two connected :class:`MemoryTransport` ends.

    Args:
        capacity: messages buffered per direction before ``send`` blocks.
    """
    a_to_b_send, a_to_b_receive = trio.open_memory_channel[bytes](capacity)
    b_to_a_send, b_to_a_receive = trio.open_memory_channel[bytes](capacity)
    link = _MemoryLink()
    a = MemoryTransport(link, "a", a_to_b_send, b_to_a_receive)
    b = MemoryTransport(link, "b", b_to_a_send, a_to_b_receive)
    link.ends.extend((a, b))
    return a, b
