"""Liveness: heartbeats, probes, dead-peer detection, and the deadlines that drive them.

Only the participant keeps an idle link alive (docs/protocol.md, "Heartbeats");
the venue answers, and probes a participant that fell silent.  The difference
lives in the two role classes; the core tracks when we last sent and heard
something and whether a probe is outstanding::

    LISTENING --probe sent--> PROBING --HEARTBEAT_ACK--> LISTENING
    LISTENING / PROBING --nothing heard for the timeout--> DEAD

This machine decides *when* a heartbeat, a probe or its answer is owed; the
channel seals them (they carry the current ack and window).
"""

from __future__ import annotations

import abc
import enum
import random
from typing import ClassVar, Final

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
    received and every write; ``owed_ack`` is the id of the latest HEARTBEAT
    still to be answered.
    """

    #: Whether this role sends heartbeats on an idle link (not only probes).
    beats_when_idle: ClassVar[bool]

    __slots__ = (
        "_after",
        "_hb_id",
        "_jitter",
        "_sent",
        "_stats",
        "interval",
        "last_rx",
        "last_tx",
        "owed_ack",
        "state",
        "timeout",
    )

    def __init__(self, config: SessionConfig, stats: ConnectionStats, now: float) -> None:
        self.state = LivenessState.LISTENING
        self.interval = config.heartbeat_interval
        self.timeout = config.heartbeat_timeout
        self.last_rx = now
        self.last_tx = now
        self.owed_ack: int | None = None
        self._jitter = config.heartbeat_jitter
        self._stats = stats
        self._hb_id = 0
        self._sent: dict[int, float] = {}
        self._after = self._beat_interval()

    @abc.abstractmethod
    def _beat_interval(self) -> float:
        """Silence after which we send a heartbeat (participant) or probe (venue)."""

    def adopt_venue_timing(self, heartbeat_ms: int, timeout_ms: int) -> None:
        """Use the timing the venue dictated in ServerHello.

        The timeout is kept at 1.5 intervals at least, so one late beat is not fatal.
        """
        self.interval = heartbeat_ms / 1000
        self.timeout = max(timeout_ms / 1000, self.interval * 1.5)
        self._after = self._beat_interval()

    def deadline(self, unacked_since: float | None) -> float:
        """When :meth:`check` or the writer next has something to do.

        ``unacked_since`` (from the channel) adds the delayed-ack deadline.
        """
        after = self._after
        deadline = self.last_rx + self.timeout
        if self.beats_when_idle:
            deadline = min(deadline, self.last_tx + after)
        if self.state is not LivenessState.PROBING:
            deadline = min(deadline, self.last_rx + after)
        if unacked_since is not None:
            deadline = min(deadline, unacked_since + ACK_DELAY)
        return deadline

    def check(self, now: float) -> None:
        """Raise HeartbeatTimeout when nothing was received for the timeout."""
        if now >= self.last_rx + self.timeout:
            self.state = LivenessState.DEAD
            raise HeartbeatTimeout(
                f"no frame from the peer for {now - self.last_rx:.3f}s "
                f"(heartbeat_timeout {self.timeout}s)"
            )

    def beat_due(self, now: float) -> bool:
        """True when :meth:`next_beat` would produce a heartbeat or probe."""
        after = self._after
        return (self.beats_when_idle and now >= self.last_tx + after) or (
            self.state is not LivenessState.PROBING and now >= self.last_rx + after
        )

    def next_beat(self, now: float, *, quiet: bool) -> tuple[int, bool] | None:
        """The heartbeat to send now as ``(id, probe)``, or None.

        A probe when nothing was heard for the beat interval (one at a time);
        otherwise, for a role that beats when idle and only if this write
        carries nothing else (``quiet``), a plain heartbeat.
        """
        after = self._after
        if self.state is not LivenessState.PROBING and now >= self.last_rx + after:
            probe = True
        elif self.beats_when_idle and quiet and now >= self.last_tx + after:
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
    """Beats on an idle link, each beat after a random ``(1 - jitter) .. 1`` interval.

    The jitter spreads the beats of thousands of sessions that started together
    (a venue restart reconnects all of them at once).
    """

    beats_when_idle = True
    __slots__ = ()

    def _beat_interval(self) -> float:
        j = self._jitter  # validated: 0 <= j < 1
        if j <= 0:
            return self.interval
        # Not from the connection's rng: jitter needs no secrecy, and keeping it
        # out of the handshake's random stream keeps the spec's vectors reproducible.
        return self.interval * (1 - j * random.random())


class VenueLiveness(Liveness):
    """Sends no idle heartbeats; probes a participant silent half-way to the timeout.

    That halves idle traffic and keeps per-session timers off the venue.
    """

    beats_when_idle = False
    __slots__ = ()

    def _beat_interval(self) -> float:
        return self.interval + (self.timeout - self.interval) / 2
