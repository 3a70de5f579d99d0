"""The venue side of the transport: our accept loop, admission, upgrade and handler.

Why our own accept loop instead of ``trio.serve_listeners``: a connection beyond the
pre-authentication caps must be refused before a task, a TLS object or any buffer
exists for it (``_transport_limits``), and the per-connection work before the upgrade
must be as small as possible, because an attacker can hold thousands of such
connections.  Until the client's HTTP request head is complete a connection is one
task blocked on its socket; trio-websocket (its reader task, wsproto, h11) starts only
then.  Its pre-upgrade deadline is enforced by the gate's reaper, not by a cancel
scope of its own (see ``_transport_limits`` for why).

This module is private; ``trio_session._transport`` re-exports what others need.
"""

from __future__ import annotations

import errno
import logging
import os
import ssl
from collections.abc import Awaitable, Callable

import attrs
import trio
import trio_websocket

from ._transport_guard import StreamGuard
from ._transport_hello import hello_in
from ._transport_limits import PreAuthGate, PreAuthSlot, PreAuthStatistics, TransportLimits
from ._transport_limits import refuse_connection as _refuse
from ._transport_ws import (
    MESSAGE_QUEUE_SIZE,
    RECEIVE_BUFFER_SIZE,
    WebSocketTransport,
    _peer_address,
    _ReaderSupervisor,
)

__all__ = ["TransportServer", "serve_transport"]

logger = logging.getLogger("trio_session.transport")

Handler = Callable[[WebSocketTransport], Awaitable[None]]

#: accept() errors that mean "out of fds or memory for now": back off, keep serving.
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_BACKOFF = 0.1


@attrs.frozen
class TransportServer:
    """What ``await nursery.start(serve_transport, ...)`` returns."""

    #: The host the server was asked to bind.
    host: str
    #: The actual bound port (of the first listener, when there are several).
    port: int
    #: The listeners accepting connections (SSL listeners when TLS is on).
    listeners: list[trio.SocketListener] | list[trio.SSLListener[trio.SocketStream]]
    _gate: PreAuthGate = attrs.field(repr=False, alias="gate")

    def statistics(self) -> PreAuthStatistics:
        """Pre-authentication connections now, and those refused or expired so far."""
        return self._gate.statistics()


async def serve_transport(
    handler: Handler,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    handshake_timeout: float,
    max_message_size: int,
    close_timeout: float = 2.0,
    limits: TransportLimits | None = None,
    task_status: trio.TaskStatus[TransportServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept WebSocket connections and run ``handler(transport)`` for each.

    Use as ``server = await nursery.start(serve_transport, handler, host, 0, ...)``;
    runs until cancelled.  Each connection gets its own task and nursery, so
    one connection cannot cancel another.  Per connection, the TLS handshake
    (when ``ssl_context`` is given) and the WebSocket upgrade must finish within
    ``handshake_timeout``; a client that fails or stalls is dropped and logged
    at DEBUG (a slowloris or garbage client never disturbs the server).

    Until its handler calls ``transport.mark_authenticated()`` a connection counts
    against ``limits`` (pre-authentication caps, in all and per IP address); beyond
    them a new connection is refused at once with HTTP 503 (a plain close under
    TLS).  Every connection's frames are checked as they arrive (declared sizes
    against ``max_message_size``, fragments, the ping rate; ``_transport_guard``).

    When ``handler`` returns the transport is closed with 1000; when it raises
    an ``Exception``, the error is logged with ``logger.exception``, swallowed
    (so the server keeps serving) and the transport is closed with 1011.  The
    session layer is expected to map its own errors before they get here.
    Cancellation propagates and closes the transport forcefully.
    """
    limits = limits or TransportLimits()
    gate = PreAuthGate(limits, handshake_timeout=handshake_timeout)
    tls = ssl_context is not None

    async def serve_connection(tcp: trio.SocketStream, slot: PreAuthSlot) -> None:
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] = tcp
        if ssl_context is not None:
            stream = trio.SSLStream(tcp, ssl_context, server_side=True, https_compatible=True)
        guard = StreamGuard(
            stream,
            address=_peer_address(tcp),
            max_message_size=max_message_size,
            ping_rate=limits.websocket_ping_rate,
            close_timeout=close_timeout,
        )
        try:
            await _serve_connection(
                guard, slot, handler, max_message_size=max_message_size, close_timeout=close_timeout
            )
        finally:
            slot.release()
            await guard.finish()

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
        server = TransportServer(host=host, port=bound_port, listeners=listeners, gate=gate)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gate.reap)
            for listener in tcp_listeners:
                nursery.start_soon(_accept_loop, listener, gate, tls, serve_connection, nursery)
            logger.debug("serving on %s:%s", host, bound_port)
            task_status.started(server)
    finally:
        for listener in tcp_listeners:
            await trio.aclose_forcefully(listener)


async def _accept_loop(
    listener: trio.SocketListener,
    gate: PreAuthGate,
    tls: bool,
    serve_connection: Callable[[trio.SocketStream, PreAuthSlot], Awaitable[None]],
    nursery: trio.Nursery,
) -> None:
    """Accept, admit or refuse, spawn; as ``trio.serve_listeners`` but admission first."""
    while True:
        try:
            tcp = await listener.accept()
        except OSError as exc:
            if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                raise
            logger.error(
                "accept failed with %s (%s); retrying in %ss",
                errno.errorcode[exc.errno],
                os.strerror(exc.errno),
                _ACCEPT_BACKOFF,
            )
            await trio.sleep(_ACCEPT_BACKOFF)
            continue
        slot = gate.admit(_peer_ip(tcp), tcp)
        if slot is None:
            await _refuse(tcp, tls=tls)
        else:
            nursery.start_soon(serve_connection, tcp, slot)


def _peer_ip(tcp: trio.SocketStream) -> str:
    try:
        return str(tcp.socket.getpeername()[0])
    except OSError:  # reset before we looked: counted under one shared name
        return "unknown"


async def _serve_connection(
    guard: StreamGuard,
    slot: PreAuthSlot,
    handler: Handler,
    *,
    max_message_size: int,
    close_timeout: float,
) -> None:
    """Upgrade one admitted connection and run the handler; never raises anything but
    cancellation (the caller closes the stream)."""
    address = guard.address
    try:
        async with trio.open_nursery() as nursery:
            reader = _ReaderSupervisor(nursery, guard, guard=guard)
            request = await _server_handshake(guard, reader, max_message_size)
            if request is None:
                nursery.cancel_scope.cancel()
                return
            slot.upgraded()
            transport = WebSocketTransport(
                None,
                guard,
                reader,
                close_timeout=close_timeout,
                opened_at=slot.opened_at,
                remote_address=address,
                slot=slot,
                early=hello_in(request.headers),
                request=request,
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
    guard: StreamGuard, reader: _ReaderSupervisor, max_message_size: int
) -> trio_websocket.WebSocketRequest | None:
    """TLS and the WebSocket upgrade request; None on any failure.  No deadline here:
    the gate's reaper closes the socket of a connection still upgrading at its
    deadline.

    The request is accepted by the transport's first send, receive or close, so that
    when it carried the participant's ClientHello (``_transport_hello``) the 101
    response carries the answer.
    """
    address = guard.address
    try:
        if isinstance(guard.stream, trio.SSLStream):
            await guard.stream.do_handshake()
        if not await guard.read_request_head():
            logger.debug("connection from %s ended or sent no WebSocket upgrade", address)
            return None
        with reader.handshake_scope:
            request = await trio_websocket.wrap_server_stream(
                reader.as_nursery(),
                guard,
                message_queue_size=MESSAGE_QUEUE_SIZE,
                max_message_size=max_message_size,
                receive_buffer_size=RECEIVE_BUFFER_SIZE,
            )
            return request
    except Exception as exc:  # garbage clients can make wsproto raise anything
        logger.debug("handshake with %s failed: %s: %s", address, type(exc).__name__, exc)
        return None
    logger.debug("connection from %s ended during the handshake", address)
    return None
