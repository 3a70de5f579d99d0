"""The sans-IO session protocol: bytes in, events out; it never touches a socket.

Design notes (in the spirit of h11's ``_state.py``):

Rule 1: everything that decides what is valid on the wire lives here, so it can
be tested back to back without Trio, fuzzed, and reused by another runtime.

Rule 2: this module never sends anything by itself.  Received frames update
state and may *owe* control frames (heartbeat acks, rekey acks, acks); frames
are only built when the runtime asks (:meth:`Connection.data_to_send`,
:meth:`Connection.send_data`).  In the Trio runtime one writer task makes those
calls, so sequence numbers and key epochs are assigned in exactly the order the
bytes go on the wire.

Two objects:

* :class:`SessionState` is the *logical session*: session id, data sequence
  numbers, replay buffer, resume secrets.  It outlives connections, which is
  what makes resume possible.
* :class:`Connection` (:class:`ClientConnection`, :class:`VenueConnection`) is
  one authenticated connection: handshake, key epochs, control sequence
  numbers, heartbeat and rekey bookkeeping.

Connection states::

    participant: HANDSHAKING --M2 ok--> OPEN --close()/CLOSE--> CLOSING/CLOSED
    venue:       HANDSHAKING --M1--> AWAITING_ACCEPT --accept()--> HANDSHAKING
                 --M3 ok--> OPEN ...
    any failure (bad input, timeout) --> ERROR; the error is kept in ``.error``.

Flow control is credit based: each side advertises ``window`` = the data
sequence number the peer may send up to (exclusive), i.e. messages the
application consumed plus the inbound capacity.  The reader therefore never has
to block on a full inbound queue, and heartbeats, acks and rekeys keep flowing
while the application is not reading.
"""

from __future__ import annotations

import abc
import enum
import hmac
import os
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

import attrs

from . import _crypto as c
from ._config import SessionConfig
from ._errors import (
    AuthenticationError,
    CloseCode,
    FrameError,
    HeartbeatTimeout,
    IntegrityError,
    LocalProtocolError,
    RekeyTimeout,
    RemoteProtocolError,
    SequenceError,
    SessionError,
    error_for_code,
)
from ._identity import Identity
from ._wire import (
    BINDER_ENTRY,
    FIN_LEN,
    FLAG_PROBE,
    FLAG_SYSTEM,
    HANDSHAKE_TYPES,
    HEADER_LEN,
    MODE_MAC,
    PROTOCOL_VERSION,
    SEQ_LIMIT,
    SIG_LEN,
    Ack,
    ClientFinish,
    ClientHello,
    Close,
    Data,
    FrameType,
    Heartbeat,
    Reject,
    Rekey,
    RekeyAck,
    RekeyRequest,
    ResumeRequest,
    ServerHello,
    decode_body,
    encode_body,
    pack_header,
    parse_header,
)

__all__ = [
    "ClientConnection",
    "CloseReceived",
    "Connection",
    "ConnectionState",
    "ConnectionStats",
    "Event",
    "HandshakeComplete",
    "HeartbeatAcked",
    "HelloReceived",
    "MessagesReceived",
    "Role",
    "SessionState",
    "VenueConnection",
]

DIR_C2V: Final = 0x01
DIR_V2C: Final = 0x02
MAX_BINDERS: Final = 2
MAX_SPENT_SECRETS: Final = 8
MAX_EPOCH: Final = 2**32 - 2
#: Venue: minimum spacing between DH rekeys started on a participant's request.
REKEY_REQUEST_SPACING: Final = 1.0
TRANSCRIPT_LABEL: Final = b"tsess/v1"
TRAILER_SIG_FIN: Final = SIG_LEN + FIN_LEN
#: Delayed acknowledgement: received data is acknowledged within this many
#: seconds even when no other frame would carry the ack (TCP-style delayed ACK).
ACK_DELAY: Final = 0.02
# Fixed msgpack overhead allowance for a DATA body around its payloads.
DATA_OVERHEAD: Final = 32
PER_MSG_OVERHEAD: Final = 5


class Role(enum.Enum):
    PARTICIPANT = "participant"
    VENUE = "venue"


class ConnectionState(enum.Enum):
    HANDSHAKING = "handshaking"
    AWAITING_ACCEPT = "awaiting_accept"
    OPEN = "open"
    CLOSING = "closing"  # we sent CLOSE (or REJECT); nothing more may be sent
    CLOSED = "closed"  # the peer sent CLOSE
    ERROR = "error"


# -- events ----------------------------------------------------------------------


class Event:
    """Base class of everything :meth:`Connection.receive_data` returns."""

    __slots__ = ()


@attrs.frozen
class HelloReceived(Event):
    """Venue only: a ClientHello arrived.  Look ``key_id`` up (and the detached
    session, if ``resume_session_id`` is set), then call :meth:`VenueConnection.accept`
    or :meth:`Connection.close` with a rejection code.  No expensive crypto has
    run yet, so rate limits belong here."""

    key_id: str
    resume_session_id: bytes | None


@attrs.frozen
class HandshakeComplete(Event):
    """The connection is authenticated and OPEN.

    ``resumed`` is True when the logical session continued; ``resume_requested``
    and not ``resumed`` means the participant got a brand new session and
    ``abandoned`` of its sent messages may never have been delivered.
    """

    session_id: bytes
    resumed: bool
    resume_requested: bool
    abandoned: int
    retransmitted: int
    #: Participant only: the data seq up to which the venue is replaying;
    #: the session is caught up when ``next_rx_seq`` reaches it.
    replay_until: int = 0


@attrs.frozen
class MessagesReceived(Event):
    """Application messages, in order; ``first_seq`` is the data seq of ``payloads[0]``."""

    first_seq: int
    payloads: list[bytes]
    #: Session-layer notices (FLAG_SYSTEM), e.g. per-message rejects.
    system: bool = False


@attrs.frozen
class HeartbeatAcked(Event):
    """An answer to one of our heartbeats: ``rtt`` in seconds."""

    rtt: float


@attrs.frozen
class CloseReceived(Event):
    """The peer closed the connection (or rejected the handshake)."""

    code: CloseCode
    reason: str
    retry_after: float | None

    def to_error(self) -> SessionError:
        return error_for_code(self.code, self.reason, remote=True, retry_after=self.retry_after)


# -- persistent session state -----------------------------------------------------


@attrs.define(eq=False, repr=False)
class SessionState:
    """The logical session: survives connections so it can be resumed.

    The replay buffer holds sent-but-unacknowledged messages as batches
    ``(first_seq, payloads)``, so the hot path appends one item per frame.
    """

    session_id: bytes
    key_id: str
    role: Role
    next_tx_seq: int = 0
    next_rx_seq: int = 0
    rx_consumed: int = 0
    peer_ack: int = 0
    peer_window: int = 0
    #: Replay entries: (first seq, messages, frame flags) per sent DATA frame.
    replay: deque[tuple[int, list[bytes], int]] = attrs.field(factory=deque)
    replay_messages: int = 0
    replay_bytes: int = 0
    resume_secrets: dict[int, bytes] = attrs.field(factory=dict)
    spent_secrets: list[bytes] = attrs.field(factory=list)
    #: Set by the participant's supervisor when the venue said REAUTHENTICATE:
    #: the session must never be resumed (a fresh one is started instead).
    compromised: bool = False

    def __repr__(self) -> str:
        return (
            f"<SessionState {self.session_id.hex()} {self.role.value} key_id={self.key_id!r} "
            f"tx={self.next_tx_seq} rx={self.next_rx_seq} unacked={self.replay_messages}>"
        )

    def trim(self, ack: int) -> None:
        """Drop replay entries the peer has acknowledged (all seq < ``ack``)."""
        replay = self.replay
        while replay:
            first, msgs, flags = replay[0]
            end = first + len(msgs)
            if end <= ack:
                replay.popleft()
                self.replay_messages -= len(msgs)
                self.replay_bytes -= sum(map(len, msgs))
            elif first < ack:
                cut = ack - first
                dropped = msgs[:cut]
                replay[0] = (ack, msgs[cut:], flags)
                self.replay_messages -= cut
                self.replay_bytes -= sum(map(len, dropped))
                break
            else:
                break
        if ack > self.peer_ack:
            self.peer_ack = ack

    def unacked_from(self, seq: int) -> list[tuple[int, list[bytes], int]]:
        """Replay entries with seq >= ``seq`` (for retransmission)."""
        out = []
        for first, msgs, flags in self.replay:
            if first + len(msgs) <= seq:
                continue
            if first < seq:
                msgs = msgs[seq - first :]
                first = seq
            out.append((first, msgs, flags))
        return out

    def install_resume_secret(self, gen: int, secret: bytes, *, keep_previous: bool) -> None:
        """Install resume secret generation ``gen``.

        The venue forgets the previous ones at once (remembering them as spent to
        detect binder reuse); the participant keeps the previous one after a DH
        rekey until the venue is known to have switched, because a drop in
        between leaves it unsure which one the venue holds.
        """
        if not keep_previous:
            self.spent_secrets.extend(self.resume_secrets.values())
            del self.spent_secrets[:-MAX_SPENT_SECRETS]
            self.resume_secrets.clear()
        self.resume_secrets[gen] = secret

    @property
    def resume_gen(self) -> int:
        return max(self.resume_secrets, default=-1)

    def confirm_latest_resume_secret(self) -> None:
        if len(self.resume_secrets) > 1:
            latest = max(self.resume_secrets)
            self.resume_secrets = {latest: self.resume_secrets[latest]}


@attrs.define
class ConnectionStats:
    """Counters of one connection (the runtime aggregates them per session)."""

    frames_sent: int = 0
    frames_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    retransmitted: int = 0
    ratchets: int = 0
    rekeys: int = 0
    heartbeats_sent: int = 0
    probes_sent: int = 0
    last_rtt: float | None = None


@attrs.define(eq=False)
class _Direction:
    """Keys of one direction: current epoch, chain, MAC, and a pending tier-2 chain."""

    direction: int
    session_id: bytes
    epoch: int
    chain: c.ChainKey
    mac: c.FrameMac
    pending: c.ChainKey | None = None
    frames_in_epoch: int = 0
    epoch_started: float = 0.0

    @classmethod
    def create(cls, direction: int, session_id: bytes, chain: c.ChainKey, now: float) -> _Direction:
        return cls(
            direction,
            session_id,
            0,
            chain,
            c.FrameMac(chain.message_key(), session_id, direction),
            epoch_started=now,
        )

    def candidate(self) -> tuple[c.ChainKey, c.FrameMac]:
        """Keys of epoch + 1: the pending DH chain if one is installed, else a ratchet step."""
        chain = self.pending if self.pending is not None else self.chain.step()
        return chain, c.FrameMac(chain.message_key(), self.session_id, self.direction)

    def advance(self, chain: c.ChainKey, mac: c.FrameMac, now: float) -> bool:
        """Switch to epoch + 1; returns True when it was a tier-2 (DH) switch."""
        tier2 = self.pending is not None
        if self.epoch >= MAX_EPOCH:
            raise SessionError(
                "key epoch space exhausted; start a new session", code=CloseCode.SESSION_EXPIRED
            )
        self.epoch += 1
        self.chain, self.mac, self.pending = chain, mac, None
        self.frames_in_epoch = 0
        self.epoch_started = now
        return tier2


def _monotonic() -> float:
    return time.monotonic()


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Connection(abc.ABC):
    """One authenticated connection of a session (abstract; see the two roles).

    Args:
        identity: our long-term Ed25519 identity.
        config: timers and limits.
        clock: monotonic seconds (the runtime passes ``trio.current_time``).
        rng: randomness source (``os.urandom``); injectable for test vectors.
        wall_ms: wall-clock milliseconds, only for the audit timestamp in M2.
    """

    role: Role
    _tx_dir: int
    _rx_dir: int

    def __init__(
        self,
        identity: Identity,
        config: SessionConfig,
        *,
        clock: Callable[[], float] = _monotonic,
        rng: Callable[[int], bytes] = os.urandom,
        wall_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        self._identity = identity
        self.config = config
        self._clock = clock
        self._rng = rng
        self._wall_ms = wall_ms
        self.state = ConnectionState.HANDSHAKING
        self.error: SessionError | None = None
        self.session: SessionState | None = None
        self.stats = ConnectionStats()
        self.heartbeat_interval = config.heartbeat_interval
        self.heartbeat_timeout = config.heartbeat_timeout
        self._out: list[bytes] = []
        self._tx: _Direction | None = None
        self._rx: _Direction | None = None
        self._tx_ctrl_seq = 0
        self._rx_ctrl_seq = 0
        self._root = b""
        self._th = b""
        now = clock()
        self._last_rx = now
        self._last_tx = now
        self._last_dh = now
        self._hb_id = 0
        self._probe_outstanding = False
        self._hb_after = self._beat_interval()
        self._hb_sent: dict[int, float] = {}
        self._owe_hb_ack: int | None = None
        self._ack_sent = 0
        self._unacked_since: float | None = None
        self._adv_window = 0
        self._retransmit_pending = False
        # Venue: confirm a completed handshake at once (any authenticated frame
        # does), so the participant learns promptly that its ClientFinish passed.
        self._confirm_owed = False
        self._close_pending: Close | None = None
        self._tx_step_due = False
        self._rekey_id = 0
        self._rekey_jitter = self._jitter()
        self._ratchet_jitter = self._jitter()
        # venue: REKEY sent and not yet acknowledged / queued to send
        self._rekey_in_flight = False
        self._rekey_queued = False
        self._rekey_secret: bytes | None = None
        self._rekey_epub = b""
        # participant: REKEY received, REKEY_ACK owed
        self._owe_rekey_ack: tuple[int, bytes, c.ChainKey, c.ChainKey, bytes] | None = None
        # Participant: REJECT is still understood until the first authenticated
        # frame from the venue (the venue may refuse our ClientFinish).
        self._rx_authenticated = False
        # The handshake resumed an existing logical session (set once it is accepted).
        self._resumed = False
        # Participant after a resume: keep the previous resume secret until the
        # venue proves (by any authenticated frame) that it processed our M3.
        self._confirm_resume_on_rx = False
        self._rekey_requested_at: float | None = None
        self._rekey_request_queued = False
        self._rekey_request_deferred = False
        self._messages_since_dh = 0

    # -- public API ------------------------------------------------------------

    def __repr__(self) -> str:
        sid = self.session.session_id.hex() if self.session else "-"
        return f"<{type(self).__name__} {self.state.value} session={sid}>"

    @property
    def session_id(self) -> bytes | None:
        return self.session.session_id if self.session else None

    @property
    def authenticated(self) -> bool:
        """True once an authenticated frame from the peer arrived on this connection.

        For a participant this is the venue's confirmation that it verified
        ClientFinish; before it, a REJECT from the venue is still understood.
        """
        return self._rx_authenticated

    @property
    def resumed(self) -> bool:
        """True when this connection's handshake resumes an existing logical session
        (venue: from :meth:`VenueConnection.accept`; participant: from ServerHello)."""
        return self._resumed

    @property
    def epochs(self) -> tuple[int, int]:
        """(tx epoch, rx epoch): how many key changes each direction has seen."""
        return (self._tx.epoch if self._tx else 0, self._rx.epoch if self._rx else 0)

    def receive_data(self, frame: bytes) -> list[Event]:
        """Process one received WebSocket message (exactly one frame).

        Raises a :class:`~trio_session.SessionError` subclass for anything
        invalid; the connection is then in ERROR state and must be closed.
        """
        if self.state is ConnectionState.ERROR:
            raise LocalProtocolError("connection already failed") from self.error
        if self.state is ConnectionState.CLOSED:
            raise LocalProtocolError("connection already closed by peer")
        try:
            if not isinstance(frame, (bytes, bytearray)):
                raise FrameError("frames must be bytes", remote=True)
            if len(frame) > self.config.max_frame_size:
                raise FrameError(
                    f"frame of {len(frame)} bytes exceeds max_frame_size "
                    f"{self.config.max_frame_size}",
                    remote=True,
                )
            if self.state in (ConnectionState.OPEN, ConnectionState.CLOSING):
                events = self._receive_authenticated(bytes(frame))
            else:
                events = self._receive_handshake(bytes(frame))
        except SessionError as exc:
            self._fail(exc)
            raise
        self._last_rx = self._clock()
        self.stats.frames_received += 1
        self.stats.bytes_received += len(frame)
        return events

    def data_to_send(self) -> list[bytes]:
        """Control frames owed right now (handshake, retransmission, acks, heartbeats,
        rekeys, close), in the order they must be written.  Call from the writer."""
        out = self._out
        if (
            self.state is ConnectionState.OPEN
            or (
                self.state
                in (ConnectionState.CLOSING, ConnectionState.CLOSED, ConnectionState.ERROR)
                and self._close_pending is not None
            )
        ) and self._tx is not None:
            self._build_control(out)
        self._out = []
        if out:
            now = self._clock()
            self._last_tx = now
            self.stats.frames_sent += len(out)
            self.stats.bytes_sent += sum(map(len, out))
        return out

    def has_pending_control(self) -> bool:
        """True when :meth:`data_to_send` would return something."""
        if self._out or self._close_pending is not None:
            return True
        if self.state is not ConnectionState.OPEN:
            return False
        return bool(
            self._retransmit_pending
            or self._owe_hb_ack is not None
            or self._owe_rekey_ack is not None
            or self._rekey_queued
            or self._rekey_request_queued
            or self._confirm_owed
            or self._heartbeat_due(self._clock())
            or self._ack_due()
        )

    def send_window(self) -> int:
        """How many application messages may be sent now (credit and replay limits)."""
        s = self.session
        if self.state is not ConnectionState.OPEN or s is None or self._retransmit_pending:
            return 0
        credit = s.peer_window - s.next_tx_seq
        room = self.config.replay_max_messages - s.replay_messages
        return max(0, min(credit, room))

    def send_bytes_budget(self) -> int:
        """Payload bytes that still fit in the replay buffer."""
        s = self.session
        if s is None:
            return 0
        return max(0, self.config.replay_max_bytes - s.replay_bytes)

    def send_data(self, payloads: Sequence[bytes], *, system: bool = False) -> bytes:
        """Build one DATA frame carrying ``payloads`` (a batch) and keep them for replay.

        The caller must respect :meth:`send_window`, ``max_message_size``,
        ``max_batch_bytes`` and :meth:`send_bytes_budget`; violating them is a
        :class:`~trio_session.LocalProtocolError` (a bug in the caller).
        ``system=True`` marks session-layer notices (FLAG_SYSTEM): sequenced,
        acknowledged and replayed like application messages, but reported with
        ``MessagesReceived.system`` set so the runtime handles them itself.
        """
        s = self.session
        if self.state is not ConnectionState.OPEN or s is None:
            raise LocalProtocolError(f"cannot send data in state {self.state.value}")
        n = len(payloads)
        if n == 0:
            raise LocalProtocolError("send_data needs at least one message")
        if n > self.send_window():
            raise LocalProtocolError(f"{n} messages exceed the send window {self.send_window()}")
        msgs = list(payloads)
        size = 0
        limit = self.config.max_message_size
        for m in msgs:
            if type(m) is not bytes:
                raise LocalProtocolError("messages must be bytes")
            lm = len(m)
            if lm > limit:
                raise LocalProtocolError(f"message of {lm} bytes exceeds max_message_size {limit}")
            size += lm
        if size > self.send_bytes_budget():
            raise LocalProtocolError("batch exceeds the replay buffer byte budget")
        if s.next_tx_seq + n >= SEQ_LIMIT:
            raise LocalProtocolError("sequence space exhausted; start a new session")
        seq = s.next_tx_seq
        flags = FLAG_SYSTEM if system else 0
        frame = self._data_frame(seq, msgs, flags)
        self._confirm_owed = False
        s.next_tx_seq = seq + n
        s.replay.append((seq, msgs, flags))
        s.replay_messages += n
        s.replay_bytes += size
        self.stats.messages_sent += n
        self.stats.frames_sent += 1
        self.stats.bytes_sent += len(frame)
        self._last_tx = self._clock()
        self._count_messages(n)
        return frame

    def messages_consumed(self, n: int) -> bool:
        """The application consumed ``n`` received messages: more credit for the peer.

        Returns True when an ACK frame became due (wake the writer).
        """
        s = self.session
        if s is None:
            return False
        if n < 0 or s.rx_consumed + n > s.next_rx_seq:
            raise LocalProtocolError("consumed more messages than were received")
        s.rx_consumed += n
        return self.state is ConnectionState.OPEN and self._ack_due()

    def close(
        self,
        code: CloseCode = CloseCode.NORMAL,
        reason: str = "",
        *,
        retry_after: float | None = None,
    ) -> None:
        """Queue a CLOSE (or, before the handshake completed on the venue, a REJECT).

        Valid in any state; a no-op when a close was already sent.  The frame is
        returned by the next :meth:`data_to_send`.
        """
        if self.state is ConnectionState.CLOSING:
            return
        reason = reason[:200]
        retry_ms = None if retry_after is None else max(0, min(int(retry_after * 1000), 2**32 - 1))
        if self._tx is None:
            # No keys: only the venue may answer a ClientHello with a REJECT.
            if self.role is Role.VENUE and self.state is not ConnectionState.CLOSED:
                body = encode_body(Reject(code=int(code), reason=reason, retry_after_ms=retry_ms))
                self._out.append(pack_header(FrameType.REJECT, 0, 0, 0) + body)
        else:
            self._close_pending = Close(code=int(code), reason=reason, retry_after_ms=retry_ms)
        if self.state is not ConnectionState.ERROR:
            self.state = ConnectionState.CLOSING

    # -- timers ------------------------------------------------------------------

    def heartbeat_deadline(self) -> float:
        """When :meth:`handle_heartbeat_timer` next has something to do."""
        iv = self._hb_after
        deadline = self._last_rx + self.heartbeat_timeout
        if self.role is Role.PARTICIPANT:
            deadline = min(deadline, self._last_tx + iv)
        if not self._probe_outstanding:
            deadline = min(deadline, self._last_rx + iv)
        if self._unacked_since is not None:
            deadline = min(deadline, self._unacked_since + ACK_DELAY)
        return deadline

    def handle_heartbeat_timer(self) -> None:
        """Send a heartbeat when idle, probe a silent peer, fail a dead one.

        Raises HeartbeatTimeout when nothing was received for ``heartbeat_timeout``.
        """
        if self.state is not ConnectionState.OPEN:
            return
        now = self._clock()
        if now >= self._last_rx + self.heartbeat_timeout:
            err = HeartbeatTimeout(
                f"no frame from the peer for {now - self._last_rx:.3f}s "
                f"(heartbeat_timeout {self.heartbeat_timeout}s)"
            )
            self._fail(err)
            raise err

    def rotation_deadline(self) -> float:
        """When :meth:`handle_rotation_timer` next has something to do."""
        if self.state is not ConnectionState.OPEN or self._tx is None:
            return float("inf")
        cfg = self.config
        # A due tier-1 step is applied to the next frame; until then there is
        # nothing to wake up for (an idle link keeps its key, which is fine).
        d = (
            float("inf")
            if self._tx_step_due
            else self._tx.epoch_started + cfg.ratchet_interval + self._ratchet_jitter
        )
        if self.role is Role.VENUE:
            if self._rekey_in_flight or self._rekey_queued:
                d = min(d, self._last_dh + cfg.reject_after)
            else:
                d = min(d, self._last_dh + cfg.rekey_interval + self._rekey_jitter)
                if self._rekey_request_deferred:
                    d = min(d, self._last_dh + REKEY_REQUEST_SPACING)
        else:
            if self._rekey_requested_at is None:
                d = min(d, self._last_dh + cfg.rekey_interval + self._rekey_jitter)
            else:
                d = min(d, self._rekey_requested_at + (cfg.reject_after - cfg.rekey_interval))
        return d

    def handle_rotation_timer(self) -> None:
        """Tier-1 ratchet on time; venue: start a DH rekey or fail a stalled one;
        participant: ask for a DH rekey, fail if the venue never does one."""
        if self.state is not ConnectionState.OPEN or self._tx is None:
            return
        cfg = self.config
        now = self._clock()
        if now >= self._tx.epoch_started + cfg.ratchet_interval + self._ratchet_jitter:
            self._tx_step_due = True
        if self.role is Role.VENUE:
            if self._rekey_in_flight or self._rekey_queued:
                if now >= self._last_dh + cfg.reject_after:
                    self._rekey_failed(now)
            elif now >= self._last_dh + cfg.rekey_interval + self._rekey_jitter or (
                self._rekey_request_deferred and now >= self._last_dh + REKEY_REQUEST_SPACING
            ):
                self._rekey_request_deferred = False
                self.start_rekey()
        else:
            if self._rekey_requested_at is None:
                if now >= self._last_dh + cfg.rekey_interval + self._rekey_jitter:
                    self.request_rekey()
            elif now >= self._rekey_requested_at + (cfg.reject_after - cfg.rekey_interval):
                self._rekey_failed(now)

    def ratchet(self) -> None:
        """Step our sending key (tier 1) with the next frame."""
        self._tx_step_due = True

    def start_rekey(self) -> None:
        """Venue: queue a DH rekey (tier 2); a no-op while one is in flight."""
        if self.role is not Role.VENUE:
            raise LocalProtocolError("only the venue initiates DH rekeys; use request_rekey()")
        if self.state is ConnectionState.OPEN and not (self._rekey_in_flight or self._rekey_queued):
            self._rekey_queued = True

    def request_rekey(self) -> None:
        """Participant: ask the venue for a DH rekey."""
        if self.role is not Role.PARTICIPANT:
            raise LocalProtocolError("the venue starts rekeys with start_rekey()")
        if self.state is ConnectionState.OPEN and self._rekey_requested_at is None:
            self._rekey_requested_at = self._clock()
            self._rekey_request_queued = True

    # -- internals: failure ------------------------------------------------------

    def _fail(self, exc: SessionError) -> None:
        if self.state is not ConnectionState.ERROR:
            self.state = ConnectionState.ERROR
            self.error = exc

    def _rekey_failed(self, now: float) -> None:
        err = RekeyTimeout(f"DH rekey not completed {now - self._last_dh:.1f}s after the last one")
        self._fail(err)
        raise err

    def _jitter(self) -> float:
        j = self.config.rekey_jitter
        if j <= 0:
            return 0.0
        return int.from_bytes(self._rng(4), "big") / 2**32 * j

    # -- internals: key schedule -------------------------------------------------

    def _install_keys(
        self, kx_c2v: bytes, kx_v2c: bytes, th: bytes, resume_k: bytes | None
    ) -> bytes:
        """Derive root, per-direction chains and the next resume secret (protocol.md)."""
        mix = c.h(kx_c2v, kx_v2c) if resume_k is None else c.h(kx_c2v, kx_v2c, resume_k)
        root = c.kdf(mix, c.L_ROOT, th)
        self._root, self._th = root, th
        assert self.session is not None
        sid = self.session.session_id
        now = self._clock()
        ck_c2v = c.ChainKey(c.kdf(root, c.L_CK_C2V, th))
        ck_v2c = c.ChainKey(c.kdf(root, c.L_CK_V2C, th))
        tx, rx = (ck_c2v, ck_v2c) if self.role is Role.PARTICIPANT else (ck_v2c, ck_c2v)
        self._tx = _Direction.create(self._tx_dir, sid, tx, now)
        self._rx = _Direction.create(self._rx_dir, sid, rx, now)
        self._last_dh = now
        return c.kdf(root, c.L_RESUME, th)

    def _dh_rekey_keys(
        self, rekey_id: int, e_v: bytes, e_p: bytes, kx_c2v: bytes, kx_v2c: bytes
    ) -> tuple[c.ChainKey, c.ChainKey, bytes]:
        th_r = c.h(self._th, c.u32(rekey_id), e_v, e_p)
        root = c.kdf(self._root, c.L_DH, kx_c2v + kx_v2c + th_r)
        self._root = root
        ck_c2v = c.ChainKey(c.kdf(root, c.L_CK_C2V, th_r))
        ck_v2c = c.ChainKey(c.kdf(root, c.L_CK_V2C, th_r))
        return ck_c2v, ck_v2c, c.kdf(root, c.L_RESUME, th_r)

    # -- internals: building frames ----------------------------------------------

    def _seal(self, frame_type: FrameType, flags: int, seq: int, body: bytes) -> bytes:
        tx = self._tx
        assert tx is not None
        # Every epoch carries at least one frame, so a receiver only ever sees
        # epoch == current or current + 1; no tier-1 step while a DH rekey we
        # started is in flight (its switch must be the next epoch).
        if (
            (self._tx_step_due or tx.frames_in_epoch >= self.config.ratchet_messages)
            and tx.frames_in_epoch > 0
            and not (self.role is Role.VENUE and self._rekey_in_flight)
        ):
            self._tx_step_due = False
            if tx.epoch < MAX_EPOCH:
                chain, mac = tx.candidate()
                tx.advance(chain, mac, self._clock())
                self.stats.ratchets += 1
        frame = pack_header(frame_type, flags, tx.epoch, seq) + body
        tx.frames_in_epoch += 1
        return frame + tx.mac.tag(frame)

    def _grant(self) -> tuple[int, int]:
        """(ack, window) to advertise now; records them as sent."""
        s = self.session
        assert s is not None
        window = max(self._adv_window, s.rx_consumed + self.config.inbound_capacity)
        self._adv_window = window
        self._ack_sent = s.next_rx_seq
        self._unacked_since = None
        return s.next_rx_seq, window

    def _data_frame(self, seq: int, msgs: list[bytes], flags: int = 0) -> bytes:
        ack, window = self._grant()
        return self._seal(FrameType.DATA, flags, seq, encode_body(Data(ack, window, msgs)))

    def _control(self, frame_type: FrameType, body: bytes, flags: int = 0) -> bytes:
        seq = self._tx_ctrl_seq
        self._tx_ctrl_seq = seq + 1
        return self._seal(frame_type, flags, seq, body)

    def _ack_due(self) -> bool:
        s = self.session
        if s is None:
            return False
        cap = self.config.inbound_capacity
        if s.next_rx_seq - self._ack_sent >= max(1, cap // 4):
            return True
        if self._unacked_since is not None and self._clock() >= self._unacked_since + ACK_DELAY:
            return True
        return s.rx_consumed + cap - self._adv_window >= max(1, cap // 2)

    def _heartbeat_due(self, now: float) -> bool:
        iv = self._hb_after
        return (self.role is Role.PARTICIPANT and now >= self._last_tx + iv) or (
            not self._probe_outstanding and now >= self._last_rx + iv
        )

    def _beat_interval(self) -> float:
        """Silence after which we send a heartbeat (participant) or probe (venue).

        Only the participant keeps an idle link alive, each beat after a random
        ``(1 - heartbeat_jitter) .. 1`` of the interval so that thousands of
        sessions spread out; the venue answers, and probes only a participant
        that stayed silent half-way from the interval to the timeout.  That
        halves idle traffic and keeps timers off the venue.
        """
        iv, timeout = self.heartbeat_interval, self.heartbeat_timeout
        if self.role is Role.VENUE:
            return iv + (timeout - iv) / 2
        j = self.config.heartbeat_jitter  # validated: 0 <= j < 1
        if j <= 0:
            return iv
        # Not from self._rng: jitter needs no secrecy, and keeping it out of
        # the handshake's random stream keeps the spec's vectors reproducible.
        return iv * (1 - j * random.random())

    def _build_control(self, out: list[bytes]) -> None:
        s = self.session
        assert s is not None
        if self.state is not ConnectionState.OPEN:
            # After CLOSE (sent or received) or a failure, only our CLOSE may follow.
            if self._close_pending is not None:
                close, self._close_pending = self._close_pending, None
                out.append(self._control(FrameType.CLOSE, encode_body(close)))
            return
        if self._retransmit_pending:
            self._retransmit_pending = False
            self._build_retransmit(out)
        if self._owe_rekey_ack is not None:
            owed, self._owe_rekey_ack = self._owe_rekey_ack, None
            self._build_rekey_ack(out, owed)
        if self._owe_hb_ack is not None:
            ack, window = self._grant()
            out.append(
                self._control(
                    FrameType.HEARTBEAT_ACK,
                    encode_body(Heartbeat(self._owe_hb_ack, ack, window, s.next_tx_seq)),
                )
            )
            self._owe_hb_ack = None
        if self._rekey_queued:
            self._rekey_queued = False
            self._build_rekey(out)
        if self._rekey_request_queued:
            self._rekey_request_queued = False
            out.append(self._control(FrameType.REKEY_REQUEST, encode_body(RekeyRequest())))
        if self._close_pending is not None:
            close, self._close_pending = self._close_pending, None
            out.append(self._control(FrameType.CLOSE, encode_body(close)))
            return
        now = self._clock()
        iv = self._hb_after
        if not self._probe_outstanding and now >= self._last_rx + iv:
            self._build_heartbeat(out, now, probe=True)
        elif self.role is Role.PARTICIPANT and now >= self._last_tx + iv and not out:
            self._build_heartbeat(out, now, probe=False)
        if not out and (self._ack_due() or self._confirm_owed):
            ack, window = self._grant()
            out.append(self._control(FrameType.ACK, encode_body(Ack(ack, window))))
        self._confirm_owed = False

    def _build_heartbeat(self, out: list[bytes], now: float, *, probe: bool) -> None:
        self._hb_id = (self._hb_id + 1) & 0xFFFFFFFF
        self._hb_sent[self._hb_id] = now
        if len(self._hb_sent) > 16:
            del self._hb_sent[next(iter(self._hb_sent))]
        ack, window = self._grant()
        assert self.session is not None
        out.append(
            self._control(
                FrameType.HEARTBEAT,
                encode_body(Heartbeat(self._hb_id, ack, window, self.session.next_tx_seq)),
                FLAG_PROBE if probe else 0,
            )
        )
        if probe:
            self._probe_outstanding = True
            self.stats.probes_sent += 1
        self.stats.heartbeats_sent += 1
        self._hb_after = self._beat_interval()

    def _build_retransmit(self, out: list[bytes]) -> None:
        s = self.session
        assert s is not None
        cap = self.config.max_batch_bytes
        count = 0
        for first, msgs, flags in s.unacked_from(s.peer_ack):
            start = 0
            while start < len(msgs):
                size = 0
                end = start
                while end < len(msgs) and (end == start or size + len(msgs[end]) <= cap):
                    size += len(msgs[end])
                    end += 1
                out.append(self._data_frame(first + start, msgs[start:end], flags))
                count += end - start
                start = end
        self.stats.retransmitted += count

    def _build_rekey(self, out: list[bytes]) -> None:
        self._rekey_id = (self._rekey_id + 1) & 0xFFFFFFFF
        e_pk, e_sk = c.kx_keypair(self._rng(32))
        self._rekey_epub, self._rekey_secret = e_pk, e_sk
        out.append(self._control(FrameType.REKEY, encode_body(Rekey(self._rekey_id, e_pk))))
        self._rekey_in_flight = True

    def _build_rekey_ack(
        self, out: list[bytes], owed: tuple[int, bytes, c.ChainKey, c.ChainKey, bytes]
    ) -> None:
        assert self._tx is not None and self._rx is not None and self.session is not None
        rekey_id, e_pk, ck_c2v, ck_v2c, resume = owed
        out.append(self._control(FrameType.REKEY_ACK, encode_body(RekeyAck(rekey_id, e_pk))))
        # Switch rule 1: our next c2v frame uses epoch + 1 under the new chain.
        self._tx.pending = ck_c2v
        chain, mac = self._tx.candidate()
        self._tx.advance(chain, mac, self._clock())
        # Rule 3: keep the old v2c key until the first new-epoch v2c frame.
        self._rx.pending = ck_v2c
        self.session.install_resume_secret(self.session.resume_gen + 1, resume, keep_previous=True)
        self._last_dh = self._clock()
        self._rekey_requested_at = None
        self._rekey_jitter = self._jitter()
        self._messages_since_dh = 0

    def _receive_reject(self, frame: bytes) -> list[Event]:
        frame_type, flags, epoch, seq = parse_header(frame)
        if flags or epoch or seq:
            raise FrameError("REJECT with non-zero reserved header fields", remote=True)
        rej = decode_body(frame_type, memoryview(frame)[HEADER_LEN:], Reject)
        retry = None if rej.retry_after_ms is None else rej.retry_after_ms / 1000
        self.state = ConnectionState.CLOSED
        return [CloseReceived(CloseCode.from_wire(rej.code), rej.reason, retry)]

    # -- internals: receiving ----------------------------------------------------

    @abc.abstractmethod
    def _receive_handshake(self, frame: bytes) -> list[Event]:
        """Role-specific handshake processing (ClientConnection / VenueConnection)."""

    def _open(self, frame: bytes) -> tuple[FrameType, int, int, memoryview]:
        """Check size, header, epoch, tag and sequence, in that order, before any decoding."""
        if len(frame) < HEADER_LEN + c.TAG_LEN:
            raise FrameError(f"frame too short ({len(frame)} bytes)", remote=True)
        frame_type, flags, epoch, seq = parse_header(frame)
        if frame_type in HANDSHAKE_TYPES:
            raise FrameError(f"unexpected {frame_type.name} after the handshake", remote=True)
        if flags and not (
            (flags == FLAG_PROBE and frame_type is FrameType.HEARTBEAT)
            or (flags == FLAG_SYSTEM and frame_type is FrameType.DATA)
        ):
            raise FrameError(f"reserved flags 0x{flags:02x} set on {frame_type.name}", remote=True)
        rx = self._rx
        s = self.session
        assert rx is not None and s is not None
        if epoch == rx.epoch:
            mac = rx.mac
            new_chain = None
        elif epoch == rx.epoch + 1:
            new_chain, mac = rx.candidate()
        else:
            raise IntegrityError(
                f"frame under key epoch {epoch}, expected {rx.epoch} or {rx.epoch + 1}", remote=True
            )
        # The tag is checked before the sequence number: a frame damaged on the
        # line is an integrity failure, not blamed on the peer as a replay.
        view = memoryview(frame)
        if not mac.verify(view[: -c.TAG_LEN], view[-c.TAG_LEN :]):
            raise IntegrityError(f"bad tag on {frame_type.name} frame", remote=True)
        expected = s.next_rx_seq if frame_type is FrameType.DATA else self._rx_ctrl_seq
        if seq != expected:
            kind = "data" if frame_type is FrameType.DATA else "control"
            raise SequenceError(f"{kind} frame seq {seq}, expected {expected}", remote=True)
        if new_chain is not None and rx.advance(new_chain, mac, self._clock()):
            self._on_rx_tier2_switch()
        if frame_type is not FrameType.DATA:
            self._rx_ctrl_seq += 1
        if not self._rx_authenticated:
            self._rx_authenticated = True
            if self._confirm_resume_on_rx:
                self._confirm_resume_on_rx = False
                s.confirm_latest_resume_secret()
        return frame_type, flags, seq, view[HEADER_LEN : -c.TAG_LEN]

    def _on_rx_tier2_switch(self) -> None:
        # Participant: the venue switched v2c to the new DH chain, so it processed
        # our REKEY_ACK and holds the new resume secret.
        if self.session is not None and self.role is Role.PARTICIPANT:
            self.session.confirm_latest_resume_secret()
            self.stats.rekeys += 1

    def _check_peer_next_seq(self, next_seq: int) -> None:
        s = self.session
        assert s is not None
        if next_seq != s.next_rx_seq:
            raise SequenceError(
                f"peer's next data seq is {next_seq} but we received up to {s.next_rx_seq}: "
                "a DATA frame was lost",
                remote=True,
            )

    def _peer_grant(self, ack: int, window: int) -> None:
        s = self.session
        assert s is not None
        if ack > s.next_tx_seq:
            raise RemoteProtocolError(
                f"peer acknowledged seq {ack} beyond what we sent ({s.next_tx_seq})", remote=True
            )
        if ack > s.peer_ack:
            s.trim(ack)
        if window > s.peer_window:
            s.peer_window = window

    def _receive_authenticated(self, frame: bytes) -> list[Event]:
        if (
            not self._rx_authenticated
            and self.role is Role.PARTICIPANT
            and frame[:1] == bytes((FrameType.REJECT,))
        ):
            return self._receive_reject(frame)
        frame_type, flags, seq, body = self._open(frame)
        s = self.session
        assert s is not None
        if frame_type is FrameType.DATA:
            data = decode_body(frame_type, body, Data)
            n = len(data.msgs)
            if n == 0:
                raise FrameError("DATA frame without messages", remote=True)
            if seq + n > self._adv_window:
                raise RemoteProtocolError(
                    f"peer sent up to seq {seq + n - 1} "
                    f"beyond the granted window {self._adv_window}",
                    remote=True,
                )
            limit = self.config.max_message_size
            for m in data.msgs:
                if len(m) > limit:
                    raise FrameError(
                        f"message of {len(m)} bytes exceeds max_message_size", remote=True
                    )
            s.next_rx_seq = seq + n
            if self._unacked_since is None:
                self._unacked_since = self._clock()
            self._peer_grant(data.ack, data.window)
            self.stats.messages_received += n
            self._count_messages(n)
            return [MessagesReceived(seq, data.msgs, flags == FLAG_SYSTEM)]
        if frame_type is FrameType.ACK:
            ackb = decode_body(frame_type, body, Ack)
            self._peer_grant(ackb.ack, ackb.window)
            return []
        if frame_type is FrameType.HEARTBEAT:
            hb = decode_body(frame_type, body, Heartbeat)
            self._check_peer_next_seq(hb.next_seq)
            self._peer_grant(hb.ack, hb.window)
            self._owe_hb_ack = hb.id
            return []
        if frame_type is FrameType.HEARTBEAT_ACK:
            hb = decode_body(frame_type, body, Heartbeat)
            self._check_peer_next_seq(hb.next_seq)
            self._peer_grant(hb.ack, hb.window)
            self._probe_outstanding = False
            sent = self._hb_sent.pop(hb.id, None)
            if sent is None:
                return []
            rtt = max(0.0, self._clock() - sent)
            self.stats.last_rtt = rtt
            return [HeartbeatAcked(rtt)]
        if frame_type is FrameType.CLOSE:
            close = decode_body(frame_type, body, Close)
            if self.state is not ConnectionState.ERROR:
                self.state = ConnectionState.CLOSED
            retry = None if close.retry_after_ms is None else close.retry_after_ms / 1000
            return [CloseReceived(CloseCode.from_wire(close.code), close.reason, retry)]
        return self._receive_rekey_frame(frame_type, body)

    def _receive_rekey_frame(self, frame_type: FrameType, body: memoryview) -> list[Event]:
        raise FrameError(f"{frame_type.name} is not valid in this direction", remote=True)

    def _count_messages(self, n: int) -> None:
        self._messages_since_dh += n
        if (
            self.role is Role.VENUE
            and self._messages_since_dh >= self.config.rekey_messages
            and not (self._rekey_in_flight or self._rekey_queued)
        ):
            self._rekey_queued = True

    def _after_handshake(self, resumed: bool, peer_next_rx: int, peer_window: int) -> int:
        """Apply the peer's resume position; returns how many messages will be retransmitted."""
        s = self.session
        assert s is not None
        if peer_next_rx > s.next_tx_seq:
            raise RemoteProtocolError(
                f"peer claims to have received up to {peer_next_rx}, we sent {s.next_tx_seq}",
                remote=True,
            )
        if peer_next_rx < s.peer_ack:
            raise RemoteProtocolError(
                "peer asks for messages it had already acknowledged", remote=True
            )
        s.trim(peer_next_rx)
        s.peer_ack = max(s.peer_ack, peer_next_rx)
        s.peer_window = max(s.peer_window, peer_window)
        self._adv_window = max(self._adv_window, s.rx_consumed + self.config.inbound_capacity)
        self._ack_sent = s.next_rx_seq
        self.state = ConnectionState.OPEN
        pending = s.replay_messages
        self._retransmit_pending = pending > 0
        return pending


class ClientConnection(Connection):
    """Participant side: sends ClientHello at construction.

    Args:
        venue_public_key: the venue's pinned Ed25519 public key (32 bytes).
        resume: the :class:`SessionState` of a previous connection to resume,
            or None for a new session.
    """

    role = Role.PARTICIPANT
    _tx_dir = DIR_C2V
    _rx_dir = DIR_V2C

    def __init__(
        self,
        identity: Identity,
        venue_public_key: bytes,
        config: SessionConfig,
        *,
        resume: SessionState | None = None,
        clock: Callable[[], float] = _monotonic,
        rng: Callable[[int], bytes] = os.urandom,
        wall_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        super().__init__(identity, config, clock=clock, rng=rng, wall_ms=wall_ms)
        if len(venue_public_key) != 32:
            raise ValueError("venue_public_key must be 32 bytes")
        self._venue_pk = bytes(venue_public_key)
        if resume is not None and (resume.role is not Role.PARTICIPANT or resume.compromised):
            raise LocalProtocolError("resume state must be a healthy participant session")
        self._resume = resume if resume is not None and resume.resume_secrets else None
        self._p_nonce = rng(32)
        self._e_pk, self._e_sk = c.kx_keypair(rng(32))
        resume_req = None
        window = config.inbound_capacity
        gens: list[int] = []
        if self._resume is not None:
            resume_req = ResumeRequest(self._resume.session_id, self._resume.next_rx_seq)
            window = self._resume.rx_consumed + config.inbound_capacity
            gens = sorted(self._resume.resume_secrets)[-MAX_BINDERS:]
        hello = ClientHello(
            ver=[PROTOCOL_VERSION],
            modes=[MODE_MAC],
            key_id=identity.key_id,
            p_nonce=self._p_nonce,
            e_p=self._e_pk,
            window=window,
            resume=resume_req,
        )
        prefix = pack_header(FrameType.CLIENT_HELLO, len(gens), 0, 0) + encode_body(hello)
        trailer = b""
        if self._resume is not None:
            sid = self._resume.session_id
            for gen in gens:
                key = c.kdf(self._resume.resume_secrets[gen], c.L_BINDER, sid)
                trailer += BINDER_ENTRY.pack(gen, c.mac(key, prefix))
        self._offered_gens = gens
        self._m1 = prefix + trailer
        self._adv_window = window
        self._out.append(self._m1)

    def _receive_handshake(self, frame: bytes) -> list[Event]:
        frame_type, flags, epoch, seq = parse_header(frame)
        if frame_type is FrameType.REJECT:
            return self._receive_reject(frame)
        if flags or epoch or seq:
            raise FrameError("handshake frame with non-zero reserved header fields", remote=True)
        if frame_type is not FrameType.SERVER_HELLO:
            raise FrameError(f"expected SERVER_HELLO, got {frame_type.name}", remote=True)
        if len(frame) < HEADER_LEN + TRAILER_SIG_FIN + 1:
            raise FrameError("SERVER_HELLO too short", remote=True)
        prefix = frame[:-TRAILER_SIG_FIN]
        sig_v = frame[-TRAILER_SIG_FIN:-FIN_LEN]
        fin_v = frame[-FIN_LEN:]
        m2 = decode_body(frame_type, memoryview(prefix)[HEADER_LEN:], ServerHello)
        if m2.ver != PROTOCOL_VERSION or m2.mode != MODE_MAC:
            raise AuthenticationError(
                f"venue chose unsupported version/mode {m2.ver}/{m2.mode}",
                code=CloseCode.VERSION_MISMATCH,
                remote=True,
            )
        th2 = c.h(TRANSCRIPT_LABEL, self._venue_pk, self._m1, prefix)
        if not c.verify_signature(self._venue_pk, c.SIG_CTX_SERVER + th2, sig_v):
            raise AuthenticationError(
                "venue signature does not verify (wrong venue key or tampered handshake)",
                remote=True,
            )
        kx_c2v, kx_v2c = c.kx_client(self._e_pk, self._e_sk, m2.e_v)
        self._e_sk = b""
        th2s = c.h(th2, sig_v)
        if not hmac.compare_digest(c.mac(c.kdf(kx_v2c, c.L_FIN_V, th2), th2s), fin_v):
            raise AuthenticationError("venue finish MAC does not verify", remote=True)
        th3 = c.h(th2s, fin_v, self._identity.public_key)
        sig_p = self._identity.sign(c.SIG_CTX_CLIENT + th3)
        th3s = c.h(th3, sig_p)
        fin_p = c.mac(c.kdf(kx_c2v, c.L_FIN_P, th3), th3s)
        th = c.h(th3s, fin_p)
        m3 = (
            pack_header(FrameType.CLIENT_FINISH, 0, 0, 0)
            + encode_body(ClientFinish())
            + sig_p
            + fin_p
        )

        requested = self._resume is not None
        resume_k = None
        abandoned = 0
        new_gen = 0
        if m2.resumed:
            if self._resume is None or m2.session_id != self._resume.session_id:
                raise RemoteProtocolError("venue resumed a session we did not ask for", remote=True)
            if m2.resume_gen is None or m2.resume_gen not in self._offered_gens:
                raise RemoteProtocolError(
                    "venue resumed with a generation we did not offer", remote=True
                )
            resume_k = self._resume.resume_secrets[m2.resume_gen]
            new_gen = m2.resume_gen + 1
            self.session = self._resume
        else:
            if m2.resume_gen is not None:
                raise RemoteProtocolError("resume_gen on a fresh session", remote=True)
            if requested:
                assert self._resume is not None
                if m2.session_id == self._resume.session_id:
                    raise RemoteProtocolError("a fresh session reuses the old id", remote=True)
                abandoned = self._resume.replay_messages
            self.session = SessionState(m2.session_id, self._identity.key_id, Role.PARTICIPANT)
            # Credit for the new session starts from scratch, not from the old one.
            self._adv_window = 0
        new_resume = self._install_keys(kx_c2v, kx_v2c, th, resume_k)
        self.heartbeat_interval = m2.heartbeat_ms / 1000
        self.heartbeat_timeout = max(m2.heartbeat_timeout_ms / 1000, self.heartbeat_interval * 1.5)
        self._hb_after = self._beat_interval()
        # Validate the venue's resume position before anything is committed or sent.
        retrans = self._after_handshake(m2.resumed, m2.next_rx_seq, m2.window)
        if m2.resumed and m2.resume_gen is not None:
            # If M3 is lost the venue still holds the accepted generation: keep it
            # until the venue's first authenticated frame proves it moved on.
            accepted = self.session.resume_secrets[m2.resume_gen]
            self.session.resume_secrets = {m2.resume_gen: accepted}
            self.session.install_resume_secret(new_gen, new_resume, keep_previous=True)
            self._confirm_resume_on_rx = True
        else:
            self.session.install_resume_secret(new_gen, new_resume, keep_previous=False)
        self.session.spent_secrets.clear()
        self._out.append(m3)
        self._resumed = m2.resumed
        return [
            HandshakeComplete(
                m2.session_id, m2.resumed, requested, abandoned, retrans, m2.next_tx_seq
            )
        ]

    def _receive_rekey_frame(self, frame_type: FrameType, body: memoryview) -> list[Event]:
        if frame_type is FrameType.REKEY:
            rekey = decode_body(frame_type, body, Rekey)
            if self._owe_rekey_ack is not None or (
                self._rx is not None and self._rx.pending is not None
            ):
                raise RemoteProtocolError("REKEY while a previous rekey is unfinished", remote=True)
            # The key exchange runs here, on receipt, so a bad key is the peer's
            # error on the receive path; the writer only builds the REKEY_ACK.
            e_pk, e_sk = c.kx_keypair(self._rng(32))
            try:
                kx_c2v, kx_v2c = c.kx_client(e_pk, e_sk, rekey.e_v)
            except AuthenticationError as exc:
                raise RemoteProtocolError("invalid ephemeral key in REKEY", remote=True) from exc
            ck_c2v, ck_v2c, resume = self._dh_rekey_keys(
                rekey.rekey_id, rekey.e_v, e_pk, kx_c2v, kx_v2c
            )
            self._owe_rekey_ack = (rekey.rekey_id, e_pk, ck_c2v, ck_v2c, resume)
            return []
        raise FrameError(f"{frame_type.name} is not valid from the venue", remote=True)


class VenueConnection(Connection):
    """Venue side: waits for ClientHello, reports it, then :meth:`accept` or ``close``."""

    role = Role.VENUE
    _tx_dir = DIR_V2C
    _rx_dir = DIR_C2V

    def __init__(
        self,
        identity: Identity,
        config: SessionConfig,
        *,
        clock: Callable[[], float] = _monotonic,
        rng: Callable[[int], bytes] = os.urandom,
        wall_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        super().__init__(identity, config, clock=clock, rng=rng, wall_ms=wall_ms)
        self._m1 = b""
        self._m1_prefix = b""
        self._hello: ClientHello | None = None
        self._binders: list[tuple[int, bytes]] = []
        self._peer_pk = b""
        self._pending_session: SessionState | None = None
        self._resume_gen: int | None = None
        self._resume_k: bytes | None = None
        self._kx: tuple[bytes, bytes] = (b"", b"")
        self._th2s = b""
        self._fin_v = b""
        self._session_id = b""

    @property
    def hello(self) -> ClientHello | None:
        return self._hello

    def accept(self, peer_public_key: bytes, session: SessionState | None = None) -> None:
        """Answer the ClientHello with ServerHello.

        Args:
            peer_public_key: the participant's registered Ed25519 key for ``key_id``.
            session: the detached session named by ``resume_session_id``, if the
                venue still has it; None starts a fresh session.

        Raises AuthenticationError for an invalid or reused resume binder.
        """
        if self.state is not ConnectionState.AWAITING_ACCEPT or self._hello is None:
            raise LocalProtocolError(
                f"accept() is only valid after HelloReceived (state {self.state.value})"
            )
        try:
            self._accept(peer_public_key, session)
        except SessionError as exc:
            self._fail(exc)
            raise

    def _accept(self, peer_public_key: bytes, session: SessionState | None) -> None:
        hello = self._hello
        assert hello is not None
        if len(peer_public_key) != 32:
            raise LocalProtocolError("peer_public_key must be 32 bytes")
        self._peer_pk = bytes(peer_public_key)
        cfg = self.config
        if (
            hello.resume is not None
            and session is not None
            and (session.key_id != hello.key_id or session.session_id != hello.resume.session_id)
        ):
            session = None  # never hand one participant's session to another
        if session is not None and session.compromised:
            session = None
        if hello.resume is not None and session is not None:
            self._resume_gen, self._resume_k = self._check_binders(session, hello.resume.session_id)
            self._pending_session = session
            self._resumed = True
            self._session_id = session.session_id
            next_rx, window = session.next_rx_seq, session.rx_consumed + cfg.inbound_capacity
        else:
            self._session_id = self._rng(16)
            next_rx, window = 0, cfg.inbound_capacity
        v_nonce = self._rng(32)
        e_pk, e_sk = c.kx_keypair(self._rng(32))
        m2 = ServerHello(
            ver=PROTOCOL_VERSION,
            mode=MODE_MAC,
            session_id=self._session_id,
            v_nonce=v_nonce,
            e_v=e_pk,
            ts_ms=max(0, self._wall_ms()),
            heartbeat_ms=max(1, round(cfg.heartbeat_interval * 1000)),
            heartbeat_timeout_ms=max(1, round(cfg.heartbeat_timeout * 1000)),
            resumed=self._resumed,
            next_rx_seq=next_rx,
            window=window,
            next_tx_seq=session.next_tx_seq if self._resumed and session is not None else 0,
            resume_gen=self._resume_gen,
        )
        body = encode_body(m2)
        prefix = pack_header(FrameType.SERVER_HELLO, 0, 0, 0) + body
        th2 = c.h(TRANSCRIPT_LABEL, self._identity.public_key, self._m1, prefix)
        sig_v = self._identity.sign(c.SIG_CTX_SERVER + th2)
        kx_c2v, kx_v2c = c.kx_server(e_pk, e_sk, hello.e_p)
        th2s = c.h(th2, sig_v)
        fin_v = c.mac(c.kdf(kx_v2c, c.L_FIN_V, th2), th2s)
        self._kx, self._th2s, self._fin_v = (kx_c2v, kx_v2c), th2s, fin_v
        self._adv_window = window
        self._out.append(prefix + sig_v + fin_v)
        self.state = ConnectionState.HANDSHAKING

    def _check_binders(self, session: SessionState, sid: bytes) -> tuple[int, bytes]:
        for gen, binder in self._binders:
            secret = session.resume_secrets.get(gen)
            if secret is not None:
                expect = c.mac(c.kdf(secret, c.L_BINDER, sid), self._m1_prefix)
                if hmac.compare_digest(expect, binder):
                    return gen, secret
        for secret in session.spent_secrets:
            for _gen, binder in self._binders:
                if hmac.compare_digest(
                    c.mac(c.kdf(secret, c.L_BINDER, sid), self._m1_prefix), binder
                ):
                    # A replayed ClientHello can never complete M3, so the session
                    # itself is left alone (killing it would hand anyone holding a
                    # captured M1 a way to end it); the attempt is refused and logged.
                    raise AuthenticationError(
                        "resume binder was already used (replayed ClientHello)",
                        code=CloseCode.BINDER_REUSED,
                        remote=True,
                    )
        raise AuthenticationError(
            "resume binder does not verify", code=CloseCode.AUTH_FAILED, remote=True
        )

    def _receive_handshake(self, frame: bytes) -> list[Event]:
        frame_type, flags, _epoch, _seq = parse_header(frame)
        if self.state is ConnectionState.AWAITING_ACCEPT:
            raise LocalProtocolError("call accept() or close() before feeding more data")
        if self._hello is None:
            if frame_type is not FrameType.CLIENT_HELLO:
                raise FrameError(f"expected CLIENT_HELLO, got {frame_type.name}", remote=True)
            return self._on_hello(frame, flags)
        if frame_type is not FrameType.CLIENT_FINISH:
            raise FrameError(f"expected CLIENT_FINISH, got {frame_type.name}", remote=True)
        return self._on_finish(frame)

    def _on_hello(self, frame: bytes, flags: int) -> list[Event]:
        if frame[2:HEADER_LEN] != bytes(HEADER_LEN - 2):
            raise FrameError("handshake frame with non-zero reserved header fields", remote=True)
        if flags > MAX_BINDERS:
            raise FrameError(
                f"CLIENT_HELLO announces {flags} binders (max {MAX_BINDERS})", remote=True
            )
        trailer = flags * BINDER_ENTRY.size
        if len(frame) < HEADER_LEN + trailer + 1:
            raise FrameError("CLIENT_HELLO too short", remote=True)
        prefix = frame[: len(frame) - trailer]
        hello = decode_body(FrameType.CLIENT_HELLO, memoryview(prefix)[HEADER_LEN:], ClientHello)
        if (hello.resume is None) != (flags == 0):
            raise FrameError("CLIENT_HELLO resume request and binders disagree", remote=True)
        if PROTOCOL_VERSION not in hello.ver or MODE_MAC not in hello.modes:
            raise AuthenticationError(
                f"no common version/mode (offered {hello.ver}/{hello.modes})",
                code=CloseCode.VERSION_MISMATCH,
                remote=True,
            )
        self._binders = [
            BINDER_ENTRY.unpack_from(frame, len(prefix) + i * BINDER_ENTRY.size)
            for i in range(flags)
        ]
        self._m1, self._m1_prefix, self._hello = frame, prefix, hello
        self.state = ConnectionState.AWAITING_ACCEPT
        return [HelloReceived(hello.key_id, hello.resume.session_id if hello.resume else None)]

    def _on_finish(self, frame: bytes) -> list[Event]:
        hello = self._hello
        assert hello is not None
        if len(frame) < HEADER_LEN + TRAILER_SIG_FIN + 1:
            raise FrameError("CLIENT_FINISH too short", remote=True)
        if frame[1:HEADER_LEN] != bytes(HEADER_LEN - 1):
            raise FrameError("handshake frame with non-zero reserved header fields", remote=True)
        prefix = frame[:-TRAILER_SIG_FIN]
        decode_body(FrameType.CLIENT_FINISH, memoryview(prefix)[HEADER_LEN:], ClientFinish)
        sig_p = frame[-TRAILER_SIG_FIN:-FIN_LEN]
        fin_p = frame[-FIN_LEN:]
        th3 = c.h(self._th2s, self._fin_v, self._peer_pk)
        # M3 carries no fields besides its trailer and its prefix is not hashed,
        # so anything but the canonical empty body is rejected outright.
        if prefix != pack_header(FrameType.CLIENT_FINISH, 0, 0, 0) + encode_body(ClientFinish()):
            raise FrameError("non-canonical CLIENT_FINISH", remote=True)
        if not c.verify_signature(self._peer_pk, c.SIG_CTX_CLIENT + th3, sig_p):
            raise AuthenticationError("participant signature does not verify", remote=True)
        kx_c2v, kx_v2c = self._kx
        th3s = c.h(th3, sig_p)
        if not hmac.compare_digest(c.mac(c.kdf(kx_c2v, c.L_FIN_P, th3), th3s), fin_p):
            raise AuthenticationError("participant finish MAC does not verify", remote=True)
        th = c.h(th3s, fin_p)
        if self._resumed:
            assert self._pending_session is not None
            self.session = self._pending_session
        else:
            self.session = SessionState(self._session_id, hello.key_id, Role.VENUE)
        new_resume = self._install_keys(kx_c2v, kx_v2c, th, self._resume_k)
        self._kx = (b"", b"")
        new_gen = 0 if self._resume_gen is None else self._resume_gen + 1
        self.session.install_resume_secret(new_gen, new_resume, keep_previous=False)
        peer_next = hello.resume.next_rx_seq if (hello.resume and self._resumed) else 0
        window = hello.window
        if hello.resume is not None and not self._resumed:
            # The participant counted its window in the old session; its new
            # inbound queue holds at most what it had not consumed.
            window = max(0, hello.window - hello.resume.next_rx_seq)
        retrans = self._after_handshake(self._resumed, peer_next, window)
        self._confirm_owed = True
        return [
            HandshakeComplete(
                self.session.session_id, self._resumed, hello.resume is not None, 0, retrans
            )
        ]

    def _receive_rekey_frame(self, frame_type: FrameType, body: memoryview) -> list[Event]:
        if frame_type is FrameType.REKEY_ACK:
            ack = decode_body(frame_type, body, RekeyAck)
            if (
                not self._rekey_in_flight
                or ack.rekey_id != self._rekey_id
                or self._rekey_secret is None
            ):
                raise RemoteProtocolError("REKEY_ACK without a matching REKEY", remote=True)
            assert self._tx is not None and self._rx is not None and self.session is not None
            try:
                kx_c2v, kx_v2c = c.kx_server(self._rekey_epub, self._rekey_secret, ack.e_p)
            except AuthenticationError as exc:
                raise RemoteProtocolError(
                    "invalid ephemeral key in REKEY_ACK", remote=True
                ) from exc
            ck_c2v, ck_v2c, resume = self._dh_rekey_keys(
                ack.rekey_id, self._rekey_epub, ack.e_p, kx_c2v, kx_v2c
            )
            self._rekey_secret = None
            # Rule 2: next c2v frame is epoch + 1 under the new chain; our next
            # v2c frame switches too.
            self._rx.pending = ck_c2v
            self._tx.pending = ck_v2c
            chain, mac = self._tx.candidate()
            self._tx.advance(chain, mac, self._clock())
            self.session.install_resume_secret(
                self.session.resume_gen + 1, resume, keep_previous=False
            )
            self._rekey_in_flight = False
            self._last_dh = self._clock()
            self._rekey_jitter = self._jitter()
            self._messages_since_dh = 0
            self.stats.rekeys += 1
            return []
        if frame_type is FrameType.REKEY_REQUEST:
            decode_body(frame_type, body, RekeyRequest)
            # At most one requested DH rekey per second: a participant cannot
            # make the venue burn CPU on back-to-back key exchanges.  An early
            # request is deferred, not dropped (the participant waits for it).
            if self._clock() - self._last_dh >= REKEY_REQUEST_SPACING:
                self.start_rekey()
            else:
                self._rekey_request_deferred = True
            return []
        raise FrameError(f"{frame_type.name} is not valid from a participant", remote=True)
