"""The authenticated channel of one connection, and the data flow over it.

Both exist once the handshake completed.

:class:`Channel` seals and opens frames.  It owns the keys of both directions
(:class:`~._keys.EpochKeys`), the key schedule the rekey machine derives new
chains from, the control sequence numbers of this connection, and the tier-1
ratchet trigger of the sending direction.  Every authenticated frame goes out
through :meth:`Channel.seal` and comes in through :meth:`Channel.open`, which
checks size, header, epoch, tag and sequence, in that order, before a body is
decoded (docs/protocol.md, "Receiving an authenticated frame").

:class:`Flow` carries data messages over the channel: it numbers them (the data
sequence numbers live in the session record, since they continue across
connections), keeps them for replay, grants and respects credit, and decides
when an acknowledgement is due.  Its state (:class:`FlowState`) is ``REPLAYING``
while a resume's retransmission is owed (new data waits behind it) and
``STREAMING`` afterwards.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Sequence
from typing import Final

import msgspec

from .._config import SessionConfig
from .._errors import (
    CloseCode,
    FrameError,
    IntegrityError,
    LocalProtocolError,
    RemoteProtocolError,
    SequenceError,
)
from ._crypto import TAG_LEN
from ._events import CloseReceived, MessagesReceived
from ._keys import MAX_EPOCH, ChainKeys, EpochKeys, KeySchedule
from ._liveness import ACK_DELAY
from ._record import SessionRecord
from ._types import DIR_C2V, DIR_V2C, ConnectionStats
from ._wire import (
    FLAG_PROBE,
    FLAG_SYSTEM,
    HANDSHAKE_TYPES,
    HEADER,
    HEADER_LEN,
    MODE_MAC,
    SEQ_LIMIT,
    Ack,
    Close,
    Data,
    FrameType,
    Heartbeat,
    decode_body,
    parse_header,
)

__all__ = ["Channel", "Flow", "FlowState", "credit_window", "parse_close"]

#: The smallest authenticated frame: a header and a tag.
MIN_FRAME: Final = HEADER_LEN + TAG_LEN
_encode: Final = msgspec.msgpack.Encoder().encode


class Channel:
    """Seal and open the authenticated frames of one connection.

    Args:
        record: the logical session (its ``next_rx_seq`` is the expected data seq).
        schedule: the connection's key schedule (the rekey machine derives from it).
        tx, rx: our sending and the peer's sending direction's keys.
        config: ratchet limits.
        stats: the connection's counters, updated in place.
        clock: monotonic seconds.
        ratchet_jitter: extra delay of this connection's tier-1 timer.
        on_peer_dh_switch: called when the peer's first frame under a DH rekey's
            keys verified (the rekey is then confirmed on both sides).
    """

    __slots__ = (
        "_clock",
        "_on_peer_dh_switch",
        "_ratchet_interval",
        "_ratchet_messages",
        "authenticated",
        "confirm_resume_on_rx",
        "hold_step",
        "ratchet_jitter",
        "record",
        "rx",
        "rx_control_seq",
        "schedule",
        "stats",
        "step_due",
        "tx",
        "tx_control_seq",
    )

    def __init__(
        self,
        record: SessionRecord,
        schedule: KeySchedule,
        tx: EpochKeys,
        rx: EpochKeys,
        config: SessionConfig,
        stats: ConnectionStats,
        clock: Callable[[], float],
        *,
        ratchet_jitter: float = 0.0,
        on_peer_dh_switch: Callable[[], None] | None = None,
    ) -> None:
        self.record = record
        self.schedule = schedule
        self.tx = tx
        self.rx = rx
        self.stats = stats
        self._clock = clock
        self._on_peer_dh_switch = on_peer_dh_switch or _nothing
        self._ratchet_messages = config.ratchet_messages
        self._ratchet_interval = config.ratchet_interval
        self.ratchet_jitter = ratchet_jitter
        self.tx_control_seq = 0
        self.rx_control_seq = 0
        #: Tier-1 step owed with the next frame; ``hold_step`` defers it while a
        #: DH switch we started must be the next epoch.
        self.step_due = False
        self.hold_step = False
        #: True once a frame from the peer authenticated on this connection.
        self.authenticated = False
        #: Forget the previous resume generation at the first authenticated frame.
        self.confirm_resume_on_rx = False

    @classmethod
    def from_handshake(
        cls,
        record: SessionRecord,
        schedule: KeySchedule,
        chains: ChainKeys,
        tx_direction: int,
        config: SessionConfig,
        stats: ConnectionStats,
        clock: Callable[[], float],
        *,
        mode: str = MODE_MAC,
        ratchet_jitter: float = 0.0,
        on_peer_dh_switch: Callable[[], None] | None = None,
    ) -> Channel:
        """The channel of a completed handshake: epoch 0 of both directions' chains,
        protected in the ``mode`` the handshake chose."""
        now = clock()
        sid = record.session_id
        rx_direction = DIR_V2C if tx_direction == DIR_C2V else DIR_C2V
        return cls(
            record,
            schedule,
            EpochKeys(tx_direction, sid, chains.for_direction(tx_direction), now, mode),
            EpochKeys(rx_direction, sid, chains.for_direction(rx_direction), now, mode),
            config,
            stats,
            clock,
            ratchet_jitter=ratchet_jitter,
            on_peer_dh_switch=on_peer_dh_switch,
        )

    @property
    def mode(self) -> str:
        """How frames are protected: ``"mac"`` or ``"aead"``."""
        return self.tx.mode

    def __repr__(self) -> str:
        return (
            f"<Channel {self.tx.mode} tx_epoch={self.tx.epoch} rx_epoch={self.rx.epoch} "
            f"control={self.tx_control_seq}/{self.rx_control_seq}>"
        )

    def seal(self, frame_type: FrameType, flags: int, seq: int, body: bytes) -> bytes:
        """Authenticate ``header || body`` under the current sending epoch.

        A due tier-1 step is applied first, but never before the epoch carried a
        frame (so a receiver only ever sees its epoch or the next) nor while
        ``hold_step`` is set.  The caller chooses ``seq``: :meth:`seal_control`
        and :meth:`Flow.send_data` number frames correctly.
        """
        tx = self.tx
        if (
            (self.step_due or tx.frames_in_epoch >= self._ratchet_messages)
            and tx.frames_in_epoch > 0
            and not self.hold_step
        ):
            self._step(tx)
        tx.frames_in_epoch += 1
        header = HEADER.pack(frame_type, flags, tx.epoch, seq)
        return tx.frame_key.seal(header, body, seq, frame_type is FrameType.DATA)

    def _step(self, tx: EpochKeys) -> None:
        self.step_due = False
        if tx.epoch < MAX_EPOCH:  # at the last epoch the key is kept (docs/protocol.md)
            tx.advance(*tx.candidate(), self._clock())
            self.stats.ratchets += 1

    def seal_control(self, frame_type: FrameType, body: bytes, flags: int = 0) -> bytes:
        """Seal a control frame with the next control seq (below 2^63, like data seqs,
        so the two spaces never meet in an AEAD nonce)."""
        seq = self.tx_control_seq
        if seq >= SEQ_LIMIT:
            raise LocalProtocolError("control sequence space exhausted; reconnect")
        self.tx_control_seq = seq + 1
        return self.seal(frame_type, flags, seq, body)

    def open(self, frame: bytes) -> tuple[FrameType, int, int, memoryview]:
        """Check size, header, epoch, tag and sequence, in that order, before any decoding.

        Returns ``(type, flags, seq, body)``; the body is still undecoded (and, in
        mode ``"aead"``, decrypted).  On success the frame's sequence space and
        epoch have moved on.
        """
        if len(frame) < MIN_FRAME:
            raise FrameError(f"frame too short ({len(frame)} bytes)", remote=True)
        frame_type, flags, epoch, seq = parse_header(frame)
        if frame_type in HANDSHAKE_TYPES:
            raise FrameError(f"unexpected {frame_type.name} after the handshake", remote=True)
        if flags and not (
            (flags == FLAG_PROBE and frame_type is FrameType.HEARTBEAT)
            or (flags == FLAG_SYSTEM and frame_type is FrameType.DATA)
        ):
            raise FrameError(f"reserved flags 0x{flags:02x} set on {frame_type.name}", remote=True)
        rx = self.rx
        if epoch == rx.epoch:
            key = rx.frame_key
            new_chain = None
        elif epoch == rx.epoch + 1:
            new_chain, key = rx.candidate()
        else:
            raise IntegrityError(
                f"frame under key epoch {epoch}, expected {rx.epoch} or {rx.epoch + 1}", remote=True
            )
        # The tag is checked (in mode "aead": the body decrypted) before the
        # sequence number: a frame damaged on the line is an integrity failure,
        # not blamed on the peer as a replay.
        body = key.open(frame, seq, frame_type is FrameType.DATA)
        if body is None:
            raise IntegrityError(f"bad tag on {frame_type.name} frame", remote=True)
        self._check_seq(frame_type, seq)
        if new_chain is not None and rx.advance(new_chain, key, self._clock()):
            self._on_peer_dh_switch()  # the old key is gone; this was a DH switch
        if not self.authenticated:
            self._first_authenticated()
        return frame_type, flags, seq, body

    def _check_seq(self, frame_type: FrameType, seq: int) -> None:
        if frame_type is FrameType.DATA:
            expected = self.record.next_rx_seq
            if seq == expected:
                return
            kind = "data"
        else:
            expected = self.rx_control_seq
            if seq == expected:
                self.rx_control_seq = seq + 1
                return
            kind = "control"
        raise SequenceError(f"{kind} frame seq {seq}, expected {expected}", remote=True)

    def _first_authenticated(self) -> None:
        self.authenticated = True
        if self.confirm_resume_on_rx:
            self.confirm_resume_on_rx = False
            self.record.confirm_latest_resume_secret()

    def ratchet_deadline(self) -> float:
        """When the tier-1 timer is due (infinite while a step is already owed)."""
        if self.step_due:
            return float("inf")
        return self.tx.epoch_started + self._ratchet_interval + self.ratchet_jitter

    def on_ratchet_timer(self, now: float) -> None:
        # A due step is applied to the next frame; an idle link keeps its key.
        if now >= self.tx.epoch_started + self._ratchet_interval + self.ratchet_jitter:
            self.step_due = True


def _nothing() -> None:
    pass


def parse_close(body: memoryview) -> CloseReceived:
    """Decode an opened CLOSE frame's body."""
    close = decode_body(FrameType.CLOSE, body, Close)
    retry = None if close.retry_after_ms is None else close.retry_after_ms / 1000
    return CloseReceived(CloseCode.from_wire(close.code), close.reason, retry)


class FlowState(enum.Enum):
    REPLAYING = "replaying"  # a resume's retransmission is owed; new data waits behind it
    STREAMING = "streaming"


def message_credit(config: SessionConfig) -> int:
    """Messages of credit granted beyond those consumed: ``inbound_capacity``, fewer
    when that many messages of ``max_message_size`` would exceed ``inbound_max_bytes``."""
    return min(config.inbound_capacity, config.inbound_max_bytes // config.max_message_size)


def credit_window(record: SessionRecord | None, config: SessionConfig) -> int:
    """The window the reference grants now (docs/protocol.md, "Flow control").

    ``base + credit`` (the base: what the application consumed, or with a durable
    store what it committed), but never more than the messages of
    ``max_message_size`` that still fit in ``inbound_max_bytes`` next to the bytes
    already held: however large the messages the peer sends, what it may park here
    stays within the budget, and the wire format is unchanged (the peer just
    follows the window).
    """
    credit = message_credit(config)
    if record is None:
        return credit
    room = max(0, config.inbound_max_bytes - record.rx_held_bytes) // config.max_message_size
    return min(record.credit_base + credit, record.rx_held_until + room)


class Flow:
    """Data messages over a channel: numbering, replay, credit, acknowledgement.

    Credit counts messages: we grant ``window`` = consumed + credit (the reader
    never blocks on a full queue, and the bytes a peer can park stay within
    ``inbound_max_bytes``: :func:`credit_window`), and send only below the
    peer's window.  Every frame that carries ``(ack, window)`` takes them from
    :meth:`grant`.
    """

    __slots__ = (
        "_ack_every",
        "_clock",
        "_credit",
        "_grant_every",
        "_inbound_max_bytes",
        "_max_batch_bytes",
        "_max_message_size",
        "_replay_max_bytes",
        "_replay_max_messages",
        "ack_sent",
        "adv_window",
        "channel",
        "confirm_owed",
        "record",
        "state",
        "stats",
        "unacked_since",
    )

    def __init__(
        self,
        channel: Channel,
        config: SessionConfig,
        stats: ConnectionStats,
        clock: Callable[[], float],
    ) -> None:
        self.channel = channel
        self.record = record = channel.record
        self.stats = stats
        self._clock = clock
        self._credit = cap = message_credit(config)
        # ack_due's thresholds, asked on every frame: an ACK once a quarter of the
        # credit was received unacknowledged, or half of it consumed unadvertised.
        self._ack_every = max(1, cap // 4)
        self._grant_every = max(1, cap // 2)
        self._inbound_max_bytes = config.inbound_max_bytes
        self._max_message_size = config.max_message_size
        self._max_batch_bytes = config.max_batch_bytes
        self._replay_max_messages = config.replay_max_messages
        self._replay_max_bytes = config.replay_max_bytes
        self.state = FlowState.STREAMING
        #: The credit we granted (exclusive data seq limit) and the ack we last sent.
        self.adv_window = credit_window(record, config)
        self.ack_sent = record.ack_position
        #: When the oldest unacknowledged received data arrived (delayed ack).
        self.unacked_since: float | None = None
        #: An ACK is owed even below the thresholds (the venue confirms a handshake).
        self.confirm_owed = False

    def __repr__(self) -> str:
        return f"<Flow {self.state.value} window={self.adv_window} ack={self.ack_sent}>"

    def resume_from(self, peer_next_rx: int, peer_window: int) -> int:
        """Apply the peer's position from the handshake; returns messages to retransmit.

        Validates before anything in the record changes.
        """
        record = self.record
        if peer_next_rx > record.next_tx_seq:
            raise RemoteProtocolError(
                f"peer claims to have received up to {peer_next_rx}, we sent {record.next_tx_seq}",
                remote=True,
            )
        if peer_next_rx < record.peer_ack:
            raise RemoteProtocolError(
                "peer asks for messages it had already acknowledged", remote=True
            )
        record.trim(peer_next_rx)
        record.peer_ack = max(record.peer_ack, peer_next_rx)
        record.peer_window = max(record.peer_window, peer_window)
        pending = record.replay_messages
        self.state = FlowState.REPLAYING if pending else FlowState.STREAMING
        return pending

    # -- sending -----------------------------------------------------------------------------

    def grant(self) -> tuple[int, int]:
        """(ack, window) to advertise now; records them as sent."""
        record = self.record
        stable = record.rx_stable
        if stable is None:
            ack = record.next_rx_seq
            window = record.rx_consumed + self._credit
        else:  # durable store: only what the application committed and the store holds
            ack = stable
            window = stable + self._credit
        room = (self._inbound_max_bytes - record.rx_held_bytes) // self._max_message_size
        limit = record.rx_held_until + max(0, room)  # the byte budget (credit_window)
        if window > limit:
            window = limit
        if window < self.adv_window:
            window = self.adv_window
        self.adv_window = window
        self.ack_sent = ack
        self.unacked_since = None
        return ack, window

    def send_window(self) -> int:
        """How many messages may be sent now: the peer's credit and our replay room."""
        if self.state is FlowState.REPLAYING:
            return 0
        record = self.record
        credit = record.peer_window - record.next_tx_seq
        room = self._replay_max_messages - record.replay_messages
        return max(0, min(credit, room))

    def send_data(self, payloads: Sequence[bytes], flags: int = 0) -> bytes:
        """One DATA frame for ``payloads``, numbered and kept for replay.

        Limits are the caller's to respect; a violation is a LocalProtocolError.
        """
        record = self.record
        n = len(payloads)
        if n == 0:
            raise LocalProtocolError("send_data needs at least one message")
        window = self.send_window()
        if n > window:
            raise LocalProtocolError(f"{n} messages exceed the send window {window}")
        msgs = list(payloads)
        size = 0
        limit = self._max_message_size
        for m in msgs:
            if type(m) is not bytes:
                raise LocalProtocolError("messages must be bytes")
            lm = len(m)
            if lm > limit:
                raise LocalProtocolError(f"message of {lm} bytes exceeds max_message_size {limit}")
            size += lm
        if size > max(0, self._replay_max_bytes - record.replay_bytes):
            raise LocalProtocolError("batch exceeds the replay buffer byte budget")
        seq = record.next_tx_seq
        if seq + n >= SEQ_LIMIT:
            raise LocalProtocolError("sequence space exhausted; start a new session")
        ack, window = self.grant()
        frame = self.channel.seal(FrameType.DATA, flags, seq, _encode(Data(ack, window, msgs)))
        self.confirm_owed = False
        record.next_tx_seq = seq + n
        record.add_replay((seq, msgs, flags))
        record.replay_messages += n
        record.replay_bytes += size
        stats = self.stats
        stats.messages_sent += n
        stats.frames_sent += 1
        stats.bytes_sent += len(frame)
        return frame

    def write_retransmission(self, out: list[bytes]) -> None:
        """After a resume: every unacknowledged message again, by its original seq."""
        self.state = FlowState.STREAMING
        record = self.record
        count = 0
        for first, msgs, flags in record.unacked_from(record.peer_ack):
            for start, end in _batches(msgs, self._max_batch_bytes):
                ack, window = self.grant()
                body = _encode(Data(ack, window, msgs[start:end]))
                out.append(self.channel.seal(FrameType.DATA, flags, first + start, body))
                count += end - start
        self.stats.retransmitted += count

    def heartbeat(self, frame_type: FrameType, hb_id: int, flags: int = 0) -> bytes:
        """A HEARTBEAT or HEARTBEAT_ACK carrying our ack, window and next data seq."""
        ack, window = self.grant()
        body = _encode(Heartbeat(hb_id, ack, window, self.record.next_tx_seq))
        return self.channel.seal_control(frame_type, body, flags)

    def ack_frame(self) -> bytes:
        ack, window = self.grant()
        return self.channel.seal_control(FrameType.ACK, _encode(Ack(ack, window)))

    def ack_due(self, now: float) -> bool:
        """Whether a separate ACK is worth a frame (docs/protocol.md, "Flow control")."""
        record = self.record
        if record.ack_position - self.ack_sent >= self._ack_every:
            return True
        since = self.unacked_since
        if since is not None and now >= since + ACK_DELAY:
            return True
        return record.credit_base + self._credit - self.adv_window >= self._grant_every

    def stable_advanced(self, now: float) -> bool:
        """Durable store: ``rx_stable`` grew.  Returns whether an ACK is due now;
        otherwise the delayed ack carries it within 20 ms."""
        if self.unacked_since is None and self.record.ack_position > self.ack_sent:
            self.unacked_since = now
        return self.ack_due(now)

    # -- receiving ---------------------------------------------------------------------------

    def accept_data(self, seq: int, flags: int, body: memoryview) -> MessagesReceived | None:
        """Decode an opened DATA frame: credit, sizes, then deliver (None when every
        message in it is a retransmitted copy of one already held)."""
        data = decode_body(FrameType.DATA, body, Data)
        n = len(data.msgs)
        if n == 0:
            raise FrameError("DATA frame without messages", remote=True)
        if seq + n > self.adv_window:
            raise RemoteProtocolError(
                f"peer sent up to seq {seq + n - 1} beyond the granted window {self.adv_window}",
                remote=True,
            )
        limit = self._max_message_size
        nbytes = 0
        for m in data.msgs:
            lm = len(m)
            if lm > limit:
                raise FrameError(f"message of {lm} bytes exceeds max_message_size", remote=True)
            nbytes += lm
        record = self.record
        record.next_rx_seq = seq + n
        if self.unacked_since is None:
            self.unacked_since = self._clock()
        self.peer_grant(data.ack, data.window)
        msgs = data.msgs
        held = record.rx_dedup - seq
        if held > 0:  # after a resume that offered less than we held (Record.resume_at)
            if held >= n:
                return None
            nbytes -= sum(map(len, msgs[:held]))
            seq += held
            msgs = msgs[held:]
            n -= held
        self.stats.messages_received += n
        record.hold(seq + n, nbytes)
        return MessagesReceived(seq, msgs, flags == FLAG_SYSTEM, nbytes)

    def accept_ack(self, body: memoryview) -> None:
        ack = decode_body(FrameType.ACK, body, Ack)
        self.peer_grant(ack.ack, ack.window)

    def accept_heartbeat(self, frame_type: FrameType, body: memoryview) -> Heartbeat:
        """HEARTBEAT or HEARTBEAT_ACK: its ``next_seq`` reveals a lost DATA frame."""
        hb = decode_body(frame_type, body, Heartbeat)
        if hb.next_seq != self.record.next_rx_seq:
            raise SequenceError(
                f"peer's next data seq is {hb.next_seq} but we received up to "
                f"{self.record.next_rx_seq}: a DATA frame was lost",
                remote=True,
            )
        self.peer_grant(hb.ack, hb.window)
        return hb

    def peer_grant(self, ack: int, window: int) -> None:
        """The peer's ack trims the replay buffer; its window only grows."""
        record = self.record
        if ack > record.next_tx_seq:
            raise RemoteProtocolError(
                f"peer acknowledged seq {ack} beyond what we sent ({record.next_tx_seq})",
                remote=True,
            )
        if ack > record.peer_ack:
            record.trim(ack)
        if window > record.peer_window:
            record.peer_window = window


def _batches(msgs: list[bytes], cap: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` slices of ``msgs`` of at most ``cap`` payload bytes (at least one each)."""
    start = 0
    while start < len(msgs):
        size = 0
        end = start
        while end < len(msgs) and (end == start or size + len(msgs[end]) <= cap):
            size += len(msgs[end])
            end += 1
        yield start, end
        start = end
