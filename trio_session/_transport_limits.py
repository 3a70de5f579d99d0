"""Pre-authentication limits of the venue's accept path, and observable close codes.

Why a gate in front of everything: a connection costs the venue a task, buffers and an
fd from the moment it is accepted, long before the peer has proved who it is.  The
gate counts such *pre-authentication* connections, in all and per IP address, and the
accept loop refuses a connection beyond either cap before anything is allocated for it
(:func:`refuse_connection`).  A slot is released when the session layer reports the
peer authenticated (``Transport.mark_authenticated``) or when the connection ends.

Why one reaper instead of a deadline per connection: connections accepted in a burst
(an attacker opens thousands at once) also time out in a burst, and Trio would wake
every one of them in the same scheduler pass, stalling everyone else for as long as
their teardown takes (measured on 2 cores: 2,000 idle connections timing out together
took about 0.7 s of CPU and delayed a participant's round trip by up to 0.3 s).  The
reaper expires connections one at a time, :data:`REAP_INTERVAL` apart, so other tasks
run between two teardowns: a connection still in the TLS handshake or the WebSocket
upgrade has its socket closed synchronously; one past the upgrade has the cancel
scope of its session-layer handshake cancelled (``Transport.handshake_deadline``).
An expiry can therefore come a little after the deadline when many are due at once;
:data:`REAP_GRACE` bounds that.

This module is private.
"""

from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING, Final

import attrs
import trio

from ._errors import CloseCode

if TYPE_CHECKING:
    from ._config import SessionConfig

__all__ = [
    "REAP_GRACE",
    "REAP_INTERVAL",
    "PreAuthGate",
    "PreAuthSlot",
    "PreAuthStatistics",
    "TransportLimits",
    "observable_close",
    "refuse_connection",
]

logger = logging.getLogger("trio_session.transport")

#: The reaper expires at most one connection per this many seconds.  Each expiry wakes
#: a task whose teardown costs ~0.1 ms before the upgrade and ~0.3 ms after it (2-core
#: loopback measurements), so teardowns take at most about a third of the CPU even when
#: thousands are due at once; 1,024 expire within about 1.5 s (a Trio sleep this short
#: lasts about a millisecond: the event loop's timer resolution).
REAP_INTERVAL: Final = 0.0005
#: A session-layer handshake scope also carries its own deadline this much after the
#: reaper's, so that an expiry is never later than that, however far the reaper lags.
REAP_GRACE: Final = 2.0

#: What a plain-TCP client refused at the cap gets: a complete HTTP response, and
#: ``Connection: close``.  Sent before its request is read, which HTTP clients accept.
HTTP_503: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Retry-After: 1\r\n"
    b"Content-Length: 0\r\n"
    b"Connection: close\r\n\r\n"
)


def observable_close(code: int, reason: str = "") -> tuple[int, str]:
    """The WebSocket close code and reason that carry the protocol close code ``code``.

    WebSocket code ``4000 + code`` (the private-use range 4000-4999 holds protocol
    codes 0-999), except ``NORMAL`` (0), which is the standard 1000; a code above 999
    cannot be carried and becomes 1011.  The reason is the code's name (e.g.
    ``"RATE_LIMITED"``), then ``": "`` and ``reason`` if given; the close frame cuts it
    to 123 bytes.  docs/protocol.md, "Observable close codes".
    """
    try:
        name = CloseCode(code).name
    except ValueError:
        name = f"CODE_{code}"
    text = f"{name}: {reason}" if reason else name
    if code == 0:
        return 1000, text
    return (4000 + code if 0 < code <= 999 else 1011), text


@attrs.frozen(kw_only=True)
class TransportLimits:
    """The venue transport's limits; see :class:`~trio_session.SessionConfig` for each."""

    max_preauth_connections: int = 1024
    max_preauth_per_address: int = 64
    websocket_ping_rate: float = 5.0

    @classmethod
    def from_config(cls, config: SessionConfig) -> TransportLimits:
        return cls(
            max_preauth_connections=config.max_preauth_connections,
            max_preauth_per_address=config.max_preauth_per_address,
            websocket_ping_rate=config.websocket_ping_rate,
        )


@attrs.frozen
class PreAuthStatistics:
    """What :meth:`PreAuthGate.statistics` returns."""

    #: Connections not yet authenticated, now.
    pending: int
    #: Connections admitted (since the start).
    admitted: int
    #: Connections refused at accept because a cap was reached (since the start).
    refused: int
    #: Connections the reaper expired: TLS, upgrade or authentication not done in time.
    expired: int


class PreAuthSlot:
    """One admitted connection's place in the pre-authentication count and the reaper's
    queue."""

    __slots__ = (
        "_gate",
        "address",
        "deadline",
        "opened_at",
        "queued",
        "released",
        "scope",
        "stream",
        "upgrading",
    )

    def __init__(
        self, gate: PreAuthGate, address: str, stream: trio.SocketStream, now: float
    ) -> None:
        self._gate = gate
        self.address = address
        self.stream: trio.SocketStream | None = stream
        self.opened_at = now
        self.deadline = now + gate.handshake_timeout
        #: Until the WebSocket upgrade is accepted the reaper closes the socket at the
        #: deadline; after it, it cancels ``scope`` (the session layer's handshake).
        self.upgrading = True
        self.scope: trio.CancelScope | None = None
        #: Still in the reaper's queue (False once expired or released).
        self.queued = True
        self.released = False

    def upgraded(self) -> None:
        """The WebSocket upgrade is done: the session layer's handshake comes next."""
        self.upgrading = False

    def release(self) -> None:
        """Authenticated, or gone: stop counting this connection.  Idempotent."""
        if not self.released:
            self.released = True
            self.upgrading = False
            self.scope = None
            self.stream = None  # the reaper's queue may keep the slot a while: not the socket
            self._gate._release(self.address)


class PreAuthGate:
    """Counts pre-authentication connections and reaps those stuck before the upgrade."""

    def __init__(self, limits: TransportLimits, *, handshake_timeout: float) -> None:
        self.limits = limits
        self.handshake_timeout = handshake_timeout
        self._pending = 0
        self._by_address: dict[str, int] = {}
        self._queue: collections.deque[PreAuthSlot] = collections.deque()
        self._wakeup = trio.Event()
        self._admitted = 0
        self._refused = 0
        self._refused_at_cap = 0
        self._expired = 0

    def statistics(self) -> PreAuthStatistics:
        return PreAuthStatistics(self._pending, self._admitted, self._refused, self._expired)

    def admit(self, address: str, stream: trio.SocketStream) -> PreAuthSlot | None:
        """A slot for a new connection from ``address`` (an IP), or None to refuse it."""
        limits = self.limits
        if self._pending >= limits.max_preauth_connections:
            if not self._refused_at_cap:
                logger.warning(
                    "%d connections are not authenticated yet (max_preauth_connections): "
                    "refusing new connections",
                    self._pending,
                )
            self._refused_at_cap += 1
            self._refused += 1
            return None
        count = self._by_address.get(address, 0)
        if count >= limits.max_preauth_per_address:
            logger.debug(
                "refused a connection from %s: %d not authenticated yet (max_preauth_per_address)",
                address,
                count,
            )
            self._refused += 1
            return None
        if self._refused_at_cap:
            logger.warning(
                "accepting connections again; refused %d at max_preauth_connections",
                self._refused_at_cap,
            )
            self._refused_at_cap = 0
        self._pending += 1
        self._admitted += 1
        self._by_address[address] = count + 1
        slot = PreAuthSlot(self, address, stream, trio.current_time())
        self._queue.append(slot)
        if len(self._queue) == 1:
            self._wakeup.set()
        return slot

    def _release(self, address: str) -> None:
        self._pending -= 1
        left = self._by_address[address] - 1
        if left:
            self._by_address[address] = left
        else:
            del self._by_address[address]

    async def reap(self) -> None:
        """Expire unauthenticated connections at their deadline, paced; runs forever."""
        queue = self._queue
        while True:
            while queue and queue[0].released:
                queue.popleft().queued = False  # authenticated or gone
            if not queue:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            if queue[0].deadline > trio.current_time():
                # Admission order is deadline order: the head is always the next due.
                await trio.sleep_until(queue[0].deadline)
                continue
            self._expire(queue.popleft())
            await trio.sleep(REAP_INTERVAL)

    def _expire(self, slot: PreAuthSlot) -> None:
        slot.queued = False
        if slot.released:
            return
        if slot.upgrading and slot.stream is not None:
            self._expired += 1
            _close_now(slot.stream)
        elif slot.scope is not None:
            self._expired += 1
            slot.scope.cancel()


def _close_now(stream: trio.SocketStream) -> None:
    """Close the socket at once, without a checkpoint: the task blocked on it wakes up
    with ClosedResourceError and ends."""
    stream.socket.close()


async def refuse_connection(stream: trio.SocketStream, *, tls: bool) -> None:
    """Refuse a connection beyond a cap: HTTP 503 on plain TCP, a bare close under TLS
    (answering would cost a TLS handshake)."""
    try:
        if not tls:
            with trio.move_on_after(0.1):
                await stream.send_all(HTTP_503)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        _close_now(stream)
