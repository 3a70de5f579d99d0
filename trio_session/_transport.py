"""Transport: one binary WebSocket message per protocol frame, over trio-websocket.

The session layer above does its own heartbeats, credit flow control and
sequencing, so all it needs from the network is "send these bytes as one
message", "give me the next message" and "close, within a bounded time".  This
module defines exactly that, the small :class:`Transport` protocol, and gathers
its implementations:

* :class:`WebSocketTransport`, a thin adapter over trio-websocket 0.12.2, made by
  :func:`connect_transport` (client, ``_transport_client``) and :func:`serve_transport`
  (server, ``_transport_server``, with the pre-authentication limits of
  ``_transport_limits`` and the byte-level checks of ``_transport_guard``);
* :class:`MemoryTransport`, an in-memory pair on Trio memory channels
  (:func:`memory_transport_pair`, ``_transport_memory``) for deterministic tests
  with ``MockClock``.

All errors leave the transport as :class:`~trio_session._errors.ConnectionLost`,
:class:`~trio_session._errors.HandshakeTimeout` or
:class:`~trio_session._errors.FrameError` (chained with ``from``), or as Trio
cancellation; no ExceptionGroup from trio-websocket's internals reaches callers.

This module is private; ``trio_session`` re-exports what users need.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

from ._transport_client import check_url, connect_transport
from ._transport_limits import PreAuthStatistics, TransportLimits, observable_close
from ._transport_memory import MemoryTransport, memory_transport_pair
from ._transport_server import TransportServer, serve_transport
from ._transport_ws import MESSAGE_QUEUE_SIZE, RECEIVE_BUFFER_SIZE, WebSocketTransport

__all__ = [
    "MESSAGE_QUEUE_SIZE",
    "RECEIVE_BUFFER_SIZE",
    "MemoryTransport",
    "PreAuthStatistics",
    "Transport",
    "TransportLimits",
    "TransportServer",
    "WebSocketTransport",
    "check_url",
    "connect_transport",
    "memory_transport_pair",
    "observable_close",
    "serve_transport",
]


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

        ``code`` and ``reason`` are the WebSocket close code and reason; to carry a
        protocol close code use :func:`observable_close`.  Idempotent; always
        releases the socket, even when cancelled.
        """
        ...

    async def fail(self, code: int, reason: str = "") -> None:
        """Send a close frame with ``code`` and ``reason`` and drop the connection
        without waiting for the peer's answer (RFC 6455 "fail the connection").

        For refusals and violations: ``await transport.fail(*observable_close(c))``.
        Idempotent; always releases the socket.
        """
        ...

    def handshake_deadline(self, timeout: float) -> AbstractContextManager[object]:
        """A context in which the authentication handshake runs: it raises
        :class:`trio.TooSlowError` once ``timeout`` has passed since :attr:`opened_at`,
        like ``trio.fail_at(opened_at + timeout)``.  The venue's WebSocket transport
        paces these expiries (see ``WebSocketTransport.handshake_deadline``)."""
        ...

    def mark_authenticated(self) -> None:
        """The peer has authenticated: stop counting this connection against the
        venue's pre-authentication limits.  Idempotent; a no-op where there are none."""
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
