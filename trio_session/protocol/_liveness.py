"""Liveness: heartbeats, probes, dead-peer detection, and the deadlines that drive them.

Only the participant keeps an idle link alive (docs/protocol.md, "Heartbeats");
the venue answers, and probes a participant that fell silent.  The difference
lives in the two role classes; the core tracks when we last sent and heard
something and whether a probe is outstanding::

    LISTENING --probe sent--> PROBING --HEARTBEAT_ACK--> LISTENING
    LISTENING / PROBING --nothing heard for the timeout--> DEAD

Besides the state, ``silent`` says that nothing was heard for ``stale_after``:
the runtime reports STALE then, well before the timeout ends the connection.

This machine decides *when* a heartbeat, a probe or its answer is owed; the
channel seals them (they carry the current ack and window).
"""

from __future__ import annotations

import abc
import enum
import math
import random
from typing import Final

from .._config import SessionConfig
from .._errors import HeartbeatTimeout
from ._events import Event, HeartbeatAcked
from ._types import ConnectionStats
from ._wire import FrameType

__all__ = ["ACK_DELAY", "Liveness", "LivenessState", "ParticipantLiveness", "VenueLiveness"]

#: Delayed acknowledgement: received data is acknowledged within this many
#: seconds even when no other frame would carry the ack (TCP-style delayed ACK).
ACK_DELAY: Final = 0.02
#: Send times of this many recent heartbeats are kept to measure RTT.
RTT_SAMPLES: Final = 16


class LivenessState(enum.Enum):
    LISTENING = "listening"  # no probe of ours is outstanding
    PROBING = "probing"  # our probe awaits a HEARTBEAT_ACK
    DEAD = "dead"  # nothing heard for the timeout: the connection is over


class Liveness(abc.ABC):
    """Role-agnostic heartbeat bookkeeping of one connection.

    ``last_rx`` and ``last_tx`` are written by the connection for every frame
    received and every write (``last_data_tx`` for every DATA frame);
    ``owed_ack`` is the id of the latest HEARTBEAT still to be answered.

    Two thresholds of silence, on purpose: after ``stale_after`` the peer is
    *silent* (the runtime reports the session STALE at once, while the
    connection is kept in case the link recovers, as it does after a short
    black hole or a peer's pause); after ``timeout`` it is dead and the
    connection ends.  ``silent`` is cleared by the next frame received.
    """

    __slots__ = (
        "_after",
        "_hb_id",
        "_jitter",
        "_sent",
        "_stale_cfg",
        "_stats",
        "interval",
        "last_beat",
        "last_data_tx",
        "last_rx",
        "last_tx",
        "owed_ack",
        "silent",
        "stale_after",
        "state",
        "timeout",
    )

    def __init__(self, config: SessionConfig, stats: ConnectionStats, now: float) -> None:
        self.state = LivenessState.LISTENING
        self.interval = config.heartbeat_interval
        self.timeout = config.heartbeat_timeout
        self.last_rx = now
        self.last_tx = now
        #: When we last sent a HEARTBEAT, and a DATA frame.
        self.last_beat = now
        self.last_data_tx = -math.inf
        self.owed_ack: int | None = None
        #: Nothing was received for ``stale_after`` (cleared by the next frame).
        self.silent = False
        self._stale_cfg = config.stale_after
        self.stale_after = self._stale_threshold()
        self._jitter = config.heartbeat_jitter
        self._stats = stats
        self._hb_id = 0
        self._sent: dict[int, float] = {}
        self._after = self._beat_interval()

    @abc.abstractmethod
    def _beat_interval(self) -> float:
        """Silence after which we probe; for the participant also its beat period."""

    @abc.abstractmethod
    def _beat_at(self) -> float:
        """When our next heartbeat (not a probe) is due; inf for none."""

    def _stale_threshold(self) -> float:
        # Never below 1.5 intervals, so the normal gap between beats is not silence;
        # never beyond the timeout.
        return min(self.timeout, max(self._stale_cfg, 1.5 * self.interval))

    def adopt_venue_timing(self, heartbeat_ms: int, timeout_ms: int) -> None:
        """Use the timing the venue dictated in ServerHello.

        The timeout is kept at 1.5 intervals at least, so one late beat is not fatal.
        """
        self.interval = heartbeat_ms / 1000
        self.timeout = max(timeout_ms / 1000, self.interval * 1.5)
        self.stale_after = self._stale_threshold()
        self._after = self._beat_interval()

    def deadline(self, unacked_since: float | None) -> float:
        """When :meth:`check` or the writer next has something to do.

        ``unacked_since`` (from the channel) adds the delayed-ack deadline.
        """
        rx = self.last_rx
        deadline = rx + (self.timeout if self.silent else self.stale_after)
        beat = self._beat_at()
        if beat < deadline:
            deadline = beat
        if self.state is not LivenessState.PROBING:
            deadline = min(deadline, rx + self._after)
        if unacked_since is not None:
            deadline = min(deadline, unacked_since + ACK_DELAY)
        return deadline

    def check(self, now: float) -> bool:
        """Raise HeartbeatTimeout when nothing was received for the timeout.

        Returns True exactly once per silence: when nothing was received for
        ``stale_after`` (the runtime reports the session STALE then).
        """
        silence = now - self.last_rx
        if silence >= self.timeout:
            self.state = LivenessState.DEAD
            raise HeartbeatTimeout(
                f"no frame from the peer for {silence:.3f}s (heartbeat_timeout {self.timeout}s)"
            )
        if not self.silent and silence >= self.stale_after:
            self.silent = True
            self._after = self._beat_interval()
            return True
        return False

    def heard(self) -> None:
        """A frame arrived after a silence (``last_rx`` is already updated)."""
        self.silent = False
        self._after = self._beat_interval()

    def beat_due(self, now: float) -> bool:
        """True when :meth:`next_beat` would produce a heartbeat or probe."""
        return now >= self._beat_at() or (
            self.state is not LivenessState.PROBING and now >= self.last_rx + self._after
        )

    def next_beat(self, now: float) -> tuple[int, bool] | None:
        """The heartbeat to send now as ``(id, probe)``, or None.

        A probe when nothing was heard for the probe interval (one at a time);
        otherwise a plain heartbeat when the role's beat is due.
        """
        if self.state is not LivenessState.PROBING and now >= self.last_rx + self._after:
            probe = True
        elif now >= self._beat_at():
            probe = False
        else:
            return None
        self._hb_id = hb_id = (self._hb_id + 1) & 0xFFFFFFFF
        self._sent[hb_id] = now
        if len(self._sent) > RTT_SAMPLES:
            del self._sent[next(iter(self._sent))]
        if probe:
            self.state = LivenessState.PROBING
            self._stats.probes_sent += 1
        self._stats.heartbeats_sent += 1
        self.last_beat = now
        self._after = self._beat_interval()
        return hb_id, probe

    def on_heartbeat(self, frame_type: FrameType, hb_id: int, now: float) -> list[Event]:
        """A HEARTBEAT is answered (the latest id wins); a HEARTBEAT_ACK measures RTT."""
        if frame_type is FrameType.HEARTBEAT:
            self.owed_ack = hb_id
            return []
        rtt = self.acked(hb_id, now)
        return [] if rtt is None else [HeartbeatAcked(rtt)]

    def acked(self, hb_id: int, now: float) -> float | None:
        """A HEARTBEAT_ACK arrived: any answer ends an outstanding probe.

        Returns the RTT when ``hb_id`` is one of ours still remembered.
        """
        self.state = LivenessState.LISTENING
        sent = self._sent.pop(hb_id, None)
        if sent is None:
            return None
        rtt = max(0.0, now - sent)
        self._stats.last_rtt = rtt
        return rtt


class ParticipantLiveness(Liveness):
    """Beats every interval, busy or idle, each beat after a random ``(1 - jitter)
    .. 1`` interval; four times as often while the venue is silent.

    Beating on a busy link too costs one small frame per interval and keeps the
    RTT measured under traffic.  The jitter spreads the beats of thousands of
    sessions that started together (a venue restart reconnects all of them at
    once).  Faster beats during a silence find out within a quarter interval
    that the link is back.
    """

    __slots__ = ()

    def _beat_interval(self) -> float:
        base = self.interval / 4 if self.silent else self.interval
        j = self._jitter  # validated: 0 <= j < 1
        if j <= 0:
            return base
        # Not from the connection's rng: jitter needs no secrecy, and keeping it
        # out of the handshake's random stream keeps the spec's vectors reproducible.
        return base * (1 - j * random.random())

    def _beat_at(self) -> float:
        return self.last_beat + self._after


class VenueLiveness(Liveness):
    """Sends no idle heartbeats; probes a participant silent half-way to the timeout.

    That halves idle traffic and keeps per-session timers off the venue.  While
    it sends data it beats once per interval, so that its RTT is measured under
    traffic too (an idle session keeps its last RTT).
    """

    __slots__ = ()

    def _beat_interval(self) -> float:
        return self.interval + (self.timeout - self.interval) / 2

    def _beat_at(self) -> float:
        if self.last_data_tx > self.last_beat:
            return self.last_beat + self.interval
        return math.inf
