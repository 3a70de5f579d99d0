"""The outbox: frames owed to the peer, and the order in which they go out.

Received frames and timers only make frames *owed*; the writer collects them
with :meth:`Connection.data_to_send`.  The order is a rule, not an accident:

1. handshake frames and REJECT, as queued;
2. a resume's retransmission (it must precede any new data);
3. answers to the peer: REKEY_ACK (its epoch switch applies to everything after
   it), HEARTBEAT_ACK;
4. our own initiatives: REKEY, REKEY_REQUEST;
5. CLOSE, after which nothing more is written;
6. a probe or idle heartbeat, and an ACK when nothing else carries the ack.

After a close or a failure only our CLOSE may still go out.
"""

from __future__ import annotations

from collections.abc import Callable

from ._channel import Channel, Flow, FlowState
from ._liveness import Liveness
from ._rekey import RekeyMachine
from ._wire import FLAG_PROBE, Close, FrameType, encode_body

__all__ = ["Outbox"]


class Outbox:
    """Frames owed by one connection: queued ones, a pending CLOSE, and what the
    channel, the rekey machine and liveness say is due."""

    __slots__ = ("_liveness", "_rekey", "close", "frames")

    def __init__(self, rekey: RekeyMachine, liveness: Liveness) -> None:
        #: Frames queued as they are (handshake messages, REJECT).
        self.frames: list[bytes] = []
        #: A CLOSE to seal and send next.
        self.close: Close | None = None
        self._rekey = rekey
        self._liveness = liveness

    def pending(self, flow: Flow | None, is_open: bool, clock: Callable[[], float]) -> bool:
        """True when :meth:`take` would return something (asked after every frame:
        the clock is read only when nothing untimed is owed)."""
        if self.frames or self.close is not None:
            return True
        if not is_open or flow is None:
            return False
        liveness = self._liveness
        if (
            flow.confirm_owed
            or liveness.owed_ack is not None
            or flow.state is FlowState.REPLAYING
            or self._rekey.has_output()
        ):
            return True
        now = clock()
        return liveness.beat_due(now) or flow.ack_due(now)

    def take(self, flow: Flow | None, is_open: bool, clock: Callable[[], float]) -> list[bytes]:
        """Everything owed now, sealed, in order."""
        out = self.frames
        self.frames = []
        if flow is not None:
            if is_open:
                self._write_owed(flow, out, clock)
            else:
                self._write_close(flow.channel, out)
        return out

    def _write_owed(self, flow: Flow, out: list[bytes], clock: Callable[[], float]) -> None:
        if flow.state is FlowState.REPLAYING:
            flow.write_retransmission(out)
        self._rekey.write_answers(out)
        liveness = self._liveness
        if liveness.owed_ack is not None:
            out.append(flow.heartbeat(FrameType.HEARTBEAT_ACK, liveness.owed_ack))
            liveness.owed_ack = None
        self._rekey.write_requests(out)
        if self._write_close(flow.channel, out):
            return
        now = clock()
        beat = liveness.next_beat(now)
        if beat is not None:
            hb_id, probe = beat
            out.append(flow.heartbeat(FrameType.HEARTBEAT, hb_id, FLAG_PROBE if probe else 0))
        if not out and (flow.ack_due(now) or flow.confirm_owed):
            out.append(flow.ack_frame())
        flow.confirm_owed = False

    def _write_close(self, channel: Channel, out: list[bytes]) -> bool:
        close, self.close = self.close, None
        if close is None:
            return False
        out.append(channel.seal_control(FrameType.CLOSE, encode_body(close)))
        return True
