"""The timer side of a :class:`~._connection.Connection`: heartbeats and key rotation.

One job: say when the runtime must wake up next (:meth:`heartbeat_deadline`,
:meth:`rotation_deadline`) and what happens then (liveness checks, tier-1
ratchet, DH rekeys), and fail the connection on a timer's typed error.  A mixin
over the attributes the connection owns, so that the facade stays one object
with one API, as h11's connection does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from .._errors import SessionError
from ._channel import Channel, Flow
from ._liveness import Liveness
from ._rekey import RekeyMachine
from ._types import ConnectionState

__all__ = ["ConnectionTimers"]

_OPEN: Final = ConnectionState.OPEN


class ConnectionTimers:
    """Heartbeat and key-rotation timers (mixed into ``Connection``)."""

    # The connection's state and error, which a timer may change; the rest is read.
    __slots__ = ("_ratchet_early", "error", "state")

    state: ConnectionState
    error: SessionError | None
    _clock: Callable[[], float]
    _channel: Channel | None
    _flow: Flow | None
    _liveness: Liveness
    _rekey: RekeyMachine
    _ratchet_early: bool

    def heartbeat_deadline(self) -> float:
        """When :meth:`handle_heartbeat_timer` next has something to do."""
        flow = self._flow
        return self._liveness.deadline(flow.unacked_since if flow is not None else None)

    def handle_heartbeat_timer(self) -> bool:
        """Note a silent peer, fail a dead one (the writer then sends what is due).

        Returns True once per silence, when nothing was received for
        ``stale_after`` (the peer may be unreachable: report STALE).  Raises
        HeartbeatTimeout when nothing was received for ``heartbeat_timeout``.
        """
        if self.state is not _OPEN:
            return False
        try:
            return self._liveness.check(self._clock())
        except SessionError as exc:
            self._fail(exc)
            raise

    @property
    def peer_silent(self) -> bool:
        """Nothing was received for ``stale_after`` (until the next frame arrives)."""
        return self._liveness.silent

    def rotation_deadline(self) -> float:
        """When :meth:`handle_rotation_timer` next has something to do."""
        channel = self._channel
        if self.state is not _OPEN or channel is None:
            return float("inf")
        return min(channel.ratchet_deadline(), self._rekey.deadline())

    def handle_rotation_timer(self) -> None:
        """Tier-1 ratchet on time; venue: start a DH rekey or fail a stalled one;
        participant: ask for a DH rekey, fail if the venue never does one."""
        channel = self._channel
        if self.state is _OPEN and channel is not None:
            now = self._clock()
            channel.on_ratchet_timer(now)
            self._guarded(self._rekey.on_timer, now)

    def ratchet(self) -> None:
        """Step our sending key (tier 1) with the next frame."""
        if self._channel is not None:
            self._channel.step_due = True
        else:
            self._ratchet_early = True

    def start_rekey(self) -> None:
        """Venue: queue a DH rekey (tier 2); a no-op while one is in flight."""
        self._rekey.start(open=self.state is _OPEN)

    def request_rekey(self) -> None:
        """Participant: ask the venue for a DH rekey."""
        self._rekey.request(self._clock(), open=self.state is _OPEN)

    def _guarded(self, timer: Callable[[float], None], now: float) -> None:
        """Run a timer check; its typed error fails the connection before it propagates."""
        try:
            timer(now)
        except SessionError as exc:
            self._fail(exc)
            raise

    def _fail(self, exc: SessionError) -> None:
        if self.state is not ConnectionState.ERROR:
            self.state = ConnectionState.ERROR
            self.error = exc
