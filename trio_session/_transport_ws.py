"""WebSocket connections over trio-websocket: :class:`WebSocketTransport` (the client side
of opening one is ``_transport_client``, the venue side ``_transport_server``).

Why we do not use trio-websocket's high-level API: ``open_websocket``'s
``connect_timeout`` does not fire against a peer that accepts TCP and then stalls; a
cancelled client handshake leaks the TCP stream; ``serve_websocket`` raises handler
errors as four nested ExceptionGroups.  So we open the TCP/TLS stream ourselves, run
the WebSocket handshake under one deadline that we own, force-close the stream on any
failure, and run our own accept loop (``_transport_server``).

Two more trio-websocket behaviours are covered here (found by reading
``trio_websocket/_impl.py`` 0.12.2 and checked by tests):

* its reader task raises ``ConnectionRejected`` *into the nursery it runs in* when a
  server answers the upgrade with an HTTP error, and it never wakes a pending
  handshake when the TCP connection ends before the upgrade completes (the handshake
  then waits for our deadline instead of failing at once).  We run the reader under a
  small supervisor (:class:`_ReaderSupervisor`) that records the reader's error
  instead of crashing the caller's nursery, wakes a pending handshake as soon as the
  reader ends, and closes the stream then;
* after a clean *remote* close on the client side, or after it rejects an oversized
  message, trio-websocket never closes the TCP stream itself
  (``WebSocketConnection.aclose`` returns early once a close reason is known), which
  would leak a socket.  Our reader supervisor and :meth:`WebSocketTransport.aclose`
  always close the stream.

On the venue side the stream under trio-websocket is a
:class:`~trio_session._transport_guard.StreamGuard`, which covers the defects only
visible at the byte level (pipelined data after the upgrade request, declared frame
lengths, ping floods, owed close frames).

Backpressure note: trio-websocket answers WebSocket pings and close frames only while
its internal message queue has room.  We keep that queue small
(:data:`MESSAGE_QUEUE_SIZE`) and :meth:`WebSocketTransport.receive` cheap; the session
layer must read continuously and apply its own policy in its own channel.  Writes
share one lock with pong/close replies and have no deadline of their own: the session
layer must bound every ``send`` with ``trio.fail_after``.

This module is private; ``trio_session._transport`` re-exports what others need.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, cast, final

import attrs
import trio
import trio_websocket

from ._errors import ConnectionLost, FrameError
from ._transport_hello import hello_header
from ._transport_limits import REAP_GRACE

if TYPE_CHECKING:
    from ._transport_guard import StreamGuard
    from ._transport_limits import PreAuthSlot

__all__ = [
    "MESSAGE_QUEUE_SIZE",
    "RECEIVE_BUFFER_SIZE",
    "WebSocketTransport",
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

    __slots__ = ("_reader", "_remote", "_what")

    def __init__(
        self,
        reader: _ReaderSupervisor | None = None,
        *,
        remote: bool = True,
        what: str = "connection lost",
    ) -> None:
        self._reader = reader
        self._remote = remote
        self._what = what

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
            message = f"{self._what}: {_explain(exc)}"
        cause: BaseException = exc
        guard = self._reader.guard if self._reader is not None else None
        if guard is not None and guard.violation is not None:
            code, why = guard.violation
            message = f"connection closed by us with WebSocket code {code}: {why}"
        elif self._reader is not None and self._reader.error is not None:
            # The reader died with an unexpected error: that is the real cause.
            cause = self._reader.error
            message = f"{message} (reader failed: {type(cause).__name__})"
        raise ConnectionLost(message, remote=self._remote) from cause


def _explain(exc: BaseException) -> str:
    """Name an error by its chain of causes, on one line: trio wraps an
    ``ssl.SSLError`` (e.g. an untrusted certificate) in a BrokenResourceError
    with no text, and ``open_tcp_stream`` hides why each address failed in an
    exception group.  Groups are looked through (their first leaf stands for
    them), never named: no ExceptionGroup text reaches a user."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BaseExceptionGroup):
            current = current.exceptions[0] if current.exceptions else None
            continue
        text = " ".join(str(current).split())
        part = f"{type(current).__name__}: {text}" if text else type(current).__name__
        if not parts or parts[-1] != part:
            parts.append(part)
        current = current.__cause__ or current.__context__
    return " <- ".join(parts)


def _map_errors(
    reader: _ReaderSupervisor | None = None, *, remote: bool = True, what: str = "connection lost"
) -> _ErrorMapper:
    """Translate trio / trio-websocket errors into :class:`ConnectionLost`.

    The one place where transport errors cross into our taxonomy (as httpcore's
    ``map_exceptions``), always chained with ``raise ... from``.  ``reader``
    supplies the reader's own failure, when it had one, as the real cause.
    """
    return _ErrorMapper(reader, remote=remote, what=what)


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
    #: The venue side's stream guard, whose verdict explains a close it caused.
    guard: StreamGuard | None = None
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
            if self.guard is None:
                await trio.aclose_forcefully(self.stream)
            else:
                await self.guard.finish()


def _peer_address(stream: trio.abc.Stream) -> str:
    """``"ip:port"`` (``"[ip]:port"`` for IPv6) of a socket or TLS stream's peer."""
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
        "_early",
        "_opened_at",
        "_reader",
        "_remote_address",
        "_request",
        "_resend",
        "_slot",
        "_stream",
        "_took",
        "_ws",
        "hello_taken",
    )

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection | None,
        stream: trio.abc.Stream,
        reader: _ReaderSupervisor,
        *,
        close_timeout: float,
        opened_at: float | None = None,
        remote_address: str | None = None,
        slot: PreAuthSlot | None = None,
        early: bytes | None = None,
        request: trio_websocket.WebSocketRequest | None = None,
    ) -> None:
        #: The peer's first message, carried in its upgrade request or 101 response
        #: (``_transport_hello``): what the first ``receive()`` returns.
        self._early = early
        #: The first messages went with the upgrade: the participant's M1 in the
        #: request, the venue's answer in the 101 response.
        self.hello_taken = early is not None
        #: Venue: the upgrade request, accepted by the first ``send()`` (which then
        #: goes in the 101 response when the request carried the peer's first
        #: message), ``receive()`` or close; ``ws`` is None until then.
        self._request = request
        #: Venue: (the hello taken from the request, the answer the 101 carried) until
        #: the first in-band message, in case a proxy dropped the 101's header.
        self._resend: tuple[bytes, bytes] | None = None
        #: Venue: the hello taken from the upgrade request.
        self._took = early if request is not None else None
        self._opened_at = trio.current_time() if opened_at is None else opened_at
        self._ws = ws
        self._stream = stream
        self._reader = reader
        self._close_timeout = close_timeout
        self._closed = False
        self._slot = slot
        # Read once: getpeername() fails after the socket is closed.
        self._remote_address = remote_address or _peer_address(stream)

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
        ws = self._ws
        return self._closed or self._reader.finished or (ws is not None and ws.closed is not None)

    async def send(self, data: bytes) -> None:
        """Send ``data`` as one binary message; see :meth:`Transport.send`.

        Has no deadline of its own (a peer that stops reading blocks it once
        the TCP buffers fill): bound it with ``trio.fail_after``.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise ConnectionLost("transport closed locally")
        if self._ws is None:
            await self._accept(data)
            return
        with _map_errors(self._reader, remote=True):
            await self._ws.send_message(data)

    async def receive(self) -> bytes:
        """Return the next binary message; see :meth:`Transport.receive`.

        Messages the peer sent before closing are delivered first; on the venue, a
        ClientHello carried in the upgrade request comes before them all.
        """
        if self._early is not None:
            # Not a full checkpoint: the early message came with the upgrade, whose
            # reading was one, and the handshake should answer it in this scheduler
            # pass, not the next (connect latency).  Cancellation is still honoured.
            await trio.lowlevel.checkpoint_if_cancelled()
            early, self._early = self._early, None
            return early
        ws = self._ws or await self._accept(None)
        with _map_errors(self._reader, remote=not self._closed):
            message = await ws.get_message()
            if self._resend is not None:
                message = await self._answer_again(ws, message)
        if isinstance(message, bytes):
            return message
        raise FrameError("received a text WebSocket message; only binary is allowed", remote=True)

    async def _accept(self, first: bytes | None) -> trio_websocket.WebSocketConnection:
        """Venue: accept the upgrade; ``first`` (our first frame) goes in the 101
        response if the request carried the peer's first message."""
        request, self._request = self._request, None
        if request is None:  # an earlier accept failed
            await trio.lowlevel.checkpoint()
            raise ConnectionLost("connection closed during the WebSocket upgrade")
        headers = hello_header(first) if first is not None and self.hello_taken else None
        try:
            with _map_errors(self._reader, remote=True):
                ws = await request.accept(extra_headers=headers)
        except ConnectionLost:
            raise
        except Exception as exc:  # wsproto/h11 refusing the request after all
            raise ConnectionLost(f"WebSocket upgrade failed: {type(exc).__name__}") from exc
        self._ws = ws
        if self._reader.guard is not None:
            self._reader.guard.upgraded(ws)
        if headers is not None and first is not None and self._took is not None:
            self._resend = (self._took, first)
        if first is not None and headers is None:
            with _map_errors(self._reader, remote=True):
                await ws.send_message(first)
        return ws

    async def _answer_again(
        self, ws: trio_websocket.WebSocketConnection, message: bytes | str
    ) -> bytes | str:
        """Venue, first in-band message after answering in the 101: a repeat of the
        hello, byte for byte, means the 101's header did not reach the participant (a
        proxy dropped it), which then sent its hello in band: the same answer goes
        again, in band (bytes we already have: no new work).  Anything else is
        returned as it is (the handshake refuses a different hello)."""
        assert self._resend is not None
        (hello, answer), self._resend = self._resend, None
        if message != hello:
            return message
        await ws.send_message(answer)
        return await ws.get_message()

    async def _accept_to_close(self) -> None:
        """Venue, closing before its first send: accept the upgrade (within
        ``close_timeout``) so that the close code reaches the peer, as it would
        have after an immediate upgrade."""
        if self._request is None or trio.current_effective_deadline() == float("-inf"):
            return
        with trio.move_on_after(self._close_timeout), contextlib.suppress(ConnectionLost):
            await self._accept(None)

    @contextlib.contextmanager
    def handshake_deadline(self, timeout: float) -> Iterator[None]:
        """Raise :class:`trio.TooSlowError` if the block is still running ``timeout``
        after :attr:`opened_at`, as ``trio.fail_at(opened_at + timeout)`` does.

        On a venue connection still counted as pre-authentication, the server's reaper
        enforces it instead of a deadline of this task's own: expiries are paced, so
        that thousands of connections timing out together do not stall everyone else
        (an expiry may then come up to ``REAP_GRACE`` late).
        """
        slot = self._slot
        deadline = self._opened_at + timeout
        if slot is None or not slot.queued or slot.released or slot.deadline != deadline:
            with trio.fail_at(deadline):
                yield
            return
        with trio.CancelScope(deadline=deadline + REAP_GRACE) as scope:
            slot.scope = scope
            try:
                yield
            finally:
                slot.scope = None
        if scope.cancelled_caught:
            raise trio.TooSlowError

    def mark_authenticated(self) -> None:
        """The session layer authenticated the peer: release its pre-authentication slot.

        Idempotent; a no-op on client connections.
        """
        if self._slot is not None:
            self._slot.release()

    async def fail(self, code: int, reason: str = "") -> None:
        """Fail the connection (RFC 6455 §7.1.7): send a close frame, do not wait.

        For refusals and protocol violations, where waiting for the peer's answer
        would only let it hold the connection.  On the venue side the close frame is
        written if the socket takes it within ``close_timeout``, then TCP is closed;
        a client's frames must be masked by trio-websocket, so there this is
        :meth:`aclose`.  Idempotent.

        Raises:
            ValueError: as :meth:`aclose`.
        """
        guard = self._reader.guard
        if guard is None or self._closed:
            await self.aclose(code, reason)
            return
        await self._accept_to_close()
        self._closed = True
        await guard.fail(code, reason)
        logger.debug("failed connection to %s with code %d", self._remote_address, code)
        if not 1000 <= code <= 4999:
            raise ValueError(f"invalid WebSocket close code {code}")

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close gracefully within ``close_timeout``, then forcefully.

        Idempotent; the stream is closed even if this is cancelled or the
        peer never answers the close frame.  Called in a cancelled scope (as
        ``trio.aclose_forcefully`` does), it closes the socket at once.

        Raises:
            ValueError: ``code`` is not a valid WebSocket close code (1000-4999);
                the connection is still closed, forcefully.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        await self._accept_to_close()
        self._closed = True
        valid = 1000 <= code <= 4999
        try:
            # Without its reader nobody can see the peer's close frame: waiting
            # for the close handshake would only burn close_timeout.  Cancelled,
            # nothing can be sent: skip trio-websocket's close path entirely.
            if (
                valid
                and self._ws is not None
                and not self._reader.finished
                and trio.current_effective_deadline() != float("-inf")
            ):
                with trio.move_on_after(self._close_timeout):
                    try:
                        await self._ws.aclose(code, reason or None)
                    except Exception as exc:  # e.g. wsproto state errors: close anyway
                        logger.debug("graceful close of %s failed: %r", self._remote_address, exc)
        finally:
            guard = self._reader.guard
            if guard is None:
                await trio.aclose_forcefully(self._stream)
            else:  # trio-websocket may owe a close frame (e.g. 1007) it never sent
                await guard.finish()
            logger.debug("closed transport to %s", self._remote_address)
        if not valid:
            raise ValueError(f"invalid WebSocket close code {code}")
