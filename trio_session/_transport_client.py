"""The client side of the WebSocket transport: URL checks, connect and upgrade.

TCP connect, TLS handshake and the WebSocket upgrade run under one deadline that we
own (trio-websocket's does not fire against a peer that accepts TCP and stalls), the
stream is force-closed on any failure, and the reader runs under the
:class:`~trio_session._transport_ws._ReaderSupervisor` (see ``_transport_ws`` for
why).  The ClientHello is offered in the upgrade request (``_transport_hello``).

This module is private; ``trio_session._transport`` re-exports what others need.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import urllib.parse

import trio
import trio_websocket

from ._errors import ConnectionLost, HandshakeTimeout
from ._transport_hello import hello_header, hello_in
from ._transport_ws import (
    MESSAGE_QUEUE_SIZE,
    RECEIVE_BUFFER_SIZE,
    WebSocketTransport,
    _map_errors,
    _ReaderSupervisor,
)

__all__ = ["check_url", "connect_transport"]

logger = logging.getLogger("trio_session.transport")


def check_url(url: str, ssl_context: ssl.SSLContext | None = None) -> None:
    """Raise ValueError, naming ``url`` and the fix, unless it is a usable ws/wss URL.

    Called by ``connect()`` before anything starts, so a typo fails at once and
    as itself (never from inside a task group, never retried).
    """
    _split_url(url, ssl_context)


def _split_url(
    url: str, ssl_context: ssl.SSLContext | None
) -> tuple[urllib.parse.SplitResult, str, int | None]:
    if not isinstance(url, str):
        raise TypeError(f"the venue URL must be a str, got {type(url).__name__}")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535"
        raise ValueError(f"invalid venue URL {url!r}: {exc}") from None
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(
            f"invalid venue URL {url!r}: the scheme must be ws:// or wss://, "
            f"not {parts.scheme + '://' if parts.scheme else 'missing'}"
        )
    host = parts.hostname
    if not host:
        raise ValueError(f"invalid venue URL {url!r}: no host (e.g. ws://127.0.0.1:8765/)")
    if parts.scheme == "ws" and ssl_context is not None:
        raise ValueError(f"ssl_context given for the ws:// URL {url!r}: TLS needs a wss:// URL")
    return parts, host, port


def _parse_url(
    url: str, ssl_context: ssl.SSLContext | None
) -> tuple[str, int, str, str, ssl.SSLContext | None]:
    """Return ``(host, port, host_header, resource, ssl_context)`` for a ws/wss URL."""
    parts, host, port = _split_url(url, ssl_context)
    if parts.scheme == "ws":
        context = None
    else:
        context = ssl_context if ssl_context is not None else ssl.create_default_context()
    default_port = 443 if context is not None else 80
    port = port if port is not None else default_port
    host_for_header = f"[{host}]" if ":" in host else host
    host_header = host_for_header if port == default_port else f"{host_for_header}:{port}"
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return host, port, host_header, resource, context


async def _open_tcp(host: str, port: int) -> trio.SocketStream:
    """``trio.open_tcp_stream``, minus its per-attempt task for an IP-address host.

    With one address there is nothing to race (happy eyeballs) and nothing to
    resolve: connecting in this task saves a task spawn and two scheduling rounds
    on every connect.  Host names go through ``open_tcp_stream`` as before.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return await trio.open_tcp_stream(host, port)
    family = trio.socket.AF_INET6 if address.version == 6 else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def connect_transport(
    url: str,
    *,
    nursery: trio.Nursery,
    ssl_context: ssl.SSLContext | None = None,
    connect_timeout: float,
    max_message_size: int,
    close_timeout: float = 2.0,
    hello: bytes | None = None,
) -> WebSocketTransport:
    """Open a WebSocket client connection to a ``ws://`` or ``wss://`` URL.

    ``hello``: the first message, offered in the upgrade request
    (``_transport_hello``); the transport's ``hello_taken`` says whether the
    venue took it from there, and then its first ``receive()`` returns the
    venue's answer from the 101 response (else the caller sends ``hello`` as a
    message).

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
            with _map_errors(remote=True, what=f"cannot connect to {host}:{port}"):
                tcp = await _open_tcp(host, port)
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
                    extra_headers=None if hello is None else hello_header(hello),
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
        early = None if hello is None else hello_in(ws.handshake_headers)
        transport = WebSocketTransport(ws, stream, reader, close_timeout=close_timeout, early=early)
        logger.debug("connected to %s", transport.remote_address)
        return transport
    assert timeout_scope.cancelled_caught  # and the stream was closed on the way out
    logger.debug("connect to %s:%s timed out after %ss", host, port, connect_timeout)
    raise HandshakeTimeout(f"connect to {host}:{port} timed out after {connect_timeout}s")
