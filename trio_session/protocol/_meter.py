"""The control-frame meter: how many control frames a peer may send us.

Control frames (ACK, HEARTBEAT, HEARTBEAT_ACK, REKEY, REKEY_ACK, REKEY_REQUEST,
CLOSE) carry no application data, so credit does not bound them, and each costs
the receiver a MAC check and a decode; an authenticated peer could send tens of
thousands a second and keep a core busy.  What a correct peer sends is bounded
by two things, and the meter allows exactly those:

* answers to our own frames: at most two ACKs per DATA frame we sent (one when
  it arrives, one when its messages are consumed), one HEARTBEAT_ACK per
  HEARTBEAT, one REKEY_ACK per REKEY.  Our frames *earn* the peer that many
  (:meth:`ControlMeter.earn`), up to :data:`MAX_OWED` outstanding;
* its own initiatives: heartbeats and probes (at most two per heartbeat
  interval), delayed acks, rekey requests, CLOSE.  A token bucket of ``rate``
  per second (``control_frame_rate`` plus four per heartbeat interval), bursts
  of twice that.

Answers we send (ACK, HEARTBEAT_ACK) earn nothing, so two peers can never
inflate each other's allowance.  A frame beyond both is a flood
(docs/protocol.md, "Flow control and acknowledgement").
"""

from __future__ import annotations

from typing import Final

from .._errors import ControlFlood
from ._wire import FrameType

__all__ = ["MAX_OWED", "ControlMeter", "earned_by"]

#: Answers a peer may still owe us at most (a burst of our frames beyond this
#: earns nothing more: a correct peer acknowledges far less often).
MAX_OWED: Final = 8192

#: What each frame type we send earns the peer, by type byte.
_EARNS: Final = {FrameType.DATA.value: 2, FrameType.HEARTBEAT.value: 1, FrameType.REKEY.value: 1}


def earned_by(frames: list[bytes]) -> int:
    """The answers ``frames`` (sealed, about to be sent) entitle the peer to."""
    earns = _EARNS
    return sum(earns.get(f[0], 0) for f in frames)


class ControlMeter:
    """Counts the peer's control frames against what it has earned and a token bucket."""

    __slots__ = ("_burst", "_last", "_tokens", "owed", "rate")

    def __init__(self, rate: float, now: float) -> None:
        #: Control frames per second the peer may send on its own initiative.
        self.rate = rate
        self._burst = 2 * rate
        self._tokens = self._burst
        self._last = now
        #: Answers our frames entitle the peer to and it has not sent yet.
        self.owed = 0

    def earn(self, n: int) -> None:
        if n:
            self.owed = min(MAX_OWED, self.owed + n)

    def spend(self, now: float, frame_type: FrameType) -> None:
        """One control frame arrived; raises ControlFlood when the peer had no
        allowance left for it."""
        if self.owed:
            self.owed -= 1
            return
        tokens = min(self._burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if tokens < 1.0:
            self._tokens = tokens
            raise ControlFlood(
                f"peer sent {frame_type.name} beyond its control-frame allowance "
                f"({self.rate:g}/s besides answers to our frames)"
            )
        self._tokens = tokens - 1.0
