"""The connection facade: bytes in, events out; the only protocol API the runtime uses.

Rule 1: everything that decides what is valid on the wire lives in this package,
so it can be tested back to back without Trio, fuzzed, and reused by another
runtime.

Rule 2: nothing is sent by itself.  Received frames update state and may *owe*
control frames (heartbeat answers, rekey frames, acks); frames are only built
when the runtime asks (:meth:`Connection.data_to_send`,
:meth:`Connection.send_data`).  In the Trio runtime one writer task makes those
calls, so sequence numbers and key epochs are assigned in exactly the order the
bytes go on the wire.

A :class:`Connection` composes small machines, each with its own states:

* the handshake (``_handshake``): M1-M3 and resume binders, per role;
* once keys exist, the channel (``_channel``: seal/open, epochs, control seqs)
  and the data flow over it (``_flow``: data seqs, replay, credit, acks);
* the rekey machine (``_rekey``), per role;
* liveness (``_liveness``), per role: heartbeats, probes, dead-peer detection;
* the outbox (``_outbox``): what is owed to the peer, in write order;
* the session record it updates (:attr:`Connection.session`), which outlives it.

Connection states (:class:`ConnectionState`)::

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
import os
import time
from collections.abc import Callable, Sequence
from typing import ClassVar, Final

from .._config import SessionConfig
from .._errors import CloseCode, FrameError, LocalProtocolError, SessionError
from .._identity import Identity
from ._channel import Channel, Flow, parse_close
from ._events import CloseReceived, Event
from ._handshake import ClientHandshake, Handshake, HandshakeResult, VenueHandshake, parse_reject
from ._liveness import Liveness, ParticipantLiveness, VenueLiveness
from ._meter import ControlMeter, earned_by
from ._opening import open_channel, resume_position
from ._outbox import Outbox
from ._record import SessionRecord
from ._rekey import ParticipantRekey, RekeyMachine, VenueRekey
from ._timers import ConnectionTimers
from ._types import DIR_C2V, DIR_V2C, ConnectionState, ConnectionStats, Role, draw_jitter
from ._wire import FLAG_SYSTEM, ClientHello, Close, FrameType

__all__ = ["ClientConnection", "Connection", "VenueConnection"]

_OPEN: Final = ConnectionState.OPEN


def _monotonic() -> float:
    return time.monotonic()


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Connection(ConnectionTimers, abc.ABC):
    """One authenticated connection of a session (abstract; see the two roles).

    Args:
        identity: our long-term Ed25519 identity.
        config: timers and limits.
        clock: monotonic seconds (the runtime passes ``trio.current_time``).
        rng: randomness source (``os.urandom``); injectable for test vectors.
        wall_ms: wall-clock milliseconds, only for the audit timestamp in M2.
    """

    role: ClassVar[Role]
    _tx_dir: ClassVar[int]
    _rekey_type: ClassVar[type[RekeyMachine]]
    _liveness_type: ClassVar[type[Liveness]]

    __slots__ = (
        "_channel",
        "_clock",
        "_flow",
        "_handshake",
        "_liveness",
        "_max_frame_size",
        "_meter",
        "_outbox",
        "_ratchet_jitter",
        "_rekey",
        "config",
        "session",
        "stats",
    )

    def __init__(
        self,
        identity: Identity,
        config: SessionConfig,
        *,
        clock: Callable[[], float] = _monotonic,
        rng: Callable[[int], bytes] = os.urandom,
        wall_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        if type(self) is Connection:
            raise TypeError("Connection is abstract: use ClientConnection or VenueConnection")
        self.config = config
        self._clock = clock
        self.state = ConnectionState.HANDSHAKING
        self.error: SessionError | None = None
        #: The logical session this connection carries (None until the handshake says which).
        self.session: SessionRecord | None = None
        self.stats = ConnectionStats()
        self._channel: Channel | None = None
        self._flow: Flow | None = None
        self._meter: ControlMeter | None = None
        self._ratchet_early = False
        self._max_frame_size = config.max_frame_size
        now = clock()
        # The draw order (rekey jitter, ratchet jitter, then the handshake's) is
        # part of what the known-answer vectors reproduce.
        self._rekey = self._rekey_type(config, clock, rng, self.stats, now)
        self._ratchet_jitter = draw_jitter(rng, config.rekey_jitter)
        self._liveness = self._liveness_type(config, self.stats, now)
        self._outbox = Outbox(self._rekey, self._liveness)
        self._handshake: Handshake

    def __repr__(self) -> str:
        sid = self.session.session_id.hex() if self.session else "-"
        return f"<{type(self).__name__} {self.state.value} session={sid}>"

    # -- facts -------------------------------------------------------------------------------

    @property
    def session_id(self) -> bytes | None:
        return self.session.session_id if self.session else None

    @property
    def epochs(self) -> tuple[int, int]:
        """How many key changes each direction has seen, as (tx epoch, rx epoch)."""
        ch = self._channel
        return (ch.tx.epoch, ch.rx.epoch) if ch is not None else (0, 0)

    @property
    def authenticated(self) -> bool:
        """True once a frame from the peer authenticated on this connection (for a
        resuming participant: the venue's proof that it processed ClientFinish)."""
        return self._channel is not None and self._channel.authenticated

    @property
    def resumed(self) -> bool:
        """True when the handshake continues an existing session (known to the venue at accept)."""
        return self._handshake.resumed

    @property
    def channel(self) -> Channel | None:
        """The authenticated channel, once the handshake completed (else None).

        Its ``seal()`` and ``open()`` serve tools and tests that build or check
        frames by hand."""
        return self._channel

    @property
    def mode(self) -> str | None:
        """How this connection protects its frames (``"mac"`` or ``"aead"``), once the
        handshake chose; None before."""
        return self._channel.mode if self._channel is not None else None

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats (the participant adopts the venue's value)."""
        return self._liveness.interval

    @property
    def heartbeat_timeout(self) -> float:
        """Seconds of silence after which the peer is declared dead."""
        return self._liveness.timeout

    @property
    def stale_after(self) -> float:
        """Seconds of silence after which the peer is reported silent (STALE)."""
        return self._liveness.stale_after

    # -- receiving -----------------------------------------------------------------------------

    def receive_data(self, frame: bytes) -> list[Event]:
        """Process one received WebSocket message (exactly one frame).

        Raises a :class:`~trio_session.SessionError` subclass for anything
        invalid; the connection is then in ERROR state and must be closed.
        """
        state = self.state
        if state is ConnectionState.ERROR:
            raise LocalProtocolError("connection already failed") from self.error
        if state is ConnectionState.CLOSED:
            raise LocalProtocolError("connection already closed by peer")
        try:
            if not isinstance(frame, (bytes, bytearray)):
                raise FrameError("frames must be bytes", remote=True)
            if len(frame) > self._max_frame_size:
                raise FrameError(
                    f"frame of {len(frame)} bytes exceeds max_frame_size {self._max_frame_size}",
                    remote=True,
                )
            flow = self._flow
            if flow is not None:
                events = self._receive_keyed(flow, bytes(frame))
            elif state is ConnectionState.CLOSING:
                events = self._closed_by_peer(self._handshake.receive_after_close(bytes(frame)))
            else:
                events = self._receive_handshake(bytes(frame))
        except SessionError as exc:
            self._fail(exc)
            raise
        liveness = self._liveness
        liveness.last_rx = self._clock()
        if liveness.silent:
            liveness.heard()
        stats = self.stats
        stats.frames_received += 1
        stats.bytes_received += len(frame)
        return events

    def _receive_keyed(self, flow: Flow, frame: bytes) -> list[Event]:
        channel = flow.channel
        if not channel.authenticated and self._handshake.is_reject(frame):
            return self._closed_by_peer(self._handshake.refused(parse_reject(frame)))
        frame_type, flags, seq, body = channel.open(frame)
        if frame_type is FrameType.DATA:
            event = flow.accept_data(seq, flags, body)
            if event is None:
                return []
            self._rekey.count_messages(len(event.payloads))
            return [event]
        if self._meter is not None:
            self._meter.spend(self._clock(), frame_type)
        if frame_type is FrameType.ACK:
            flow.accept_ack(body)
            return []
        if frame_type is FrameType.HEARTBEAT or frame_type is FrameType.HEARTBEAT_ACK:
            heartbeat = flow.accept_heartbeat(frame_type, body)
            return self._liveness.on_heartbeat(frame_type, heartbeat.id, self._clock())
        if frame_type is FrameType.CLOSE:
            return self._closed_by_peer(parse_close(body))
        return self._rekey.receive(frame_type, body)

    def _closed_by_peer(self, event: CloseReceived) -> list[Event]:
        if self.state is not ConnectionState.ERROR:
            self.state = ConnectionState.CLOSED
        return [event]

    def _receive_handshake(self, frame: bytes) -> list[Event]:
        out = self._handshake.receive(frame)
        if isinstance(out, HandshakeResult):
            return self._complete(out)
        if isinstance(out, CloseReceived):
            return self._closed_by_peer(out)
        self.state = ConnectionState.AWAITING_ACCEPT  # HelloReceived
        return [out]

    def _complete(self, result: HandshakeResult) -> list[Event]:
        """Keys from the handshake: the channel opens and the session continues on it."""
        self.session = result.record
        opened = open_channel(
            result,
            tx_direction=self._tx_dir,
            config=self.config,
            stats=self.stats,
            clock=self._clock,
            rekey=self._rekey,
            liveness=self._liveness,
            ratchet_jitter=self._ratchet_jitter,
            ratchet_early=self._ratchet_early,
        )
        self._channel, self._flow, self._meter = opened.channel, opened.flow, opened.meter
        retransmit = resume_position(opened.flow, result)
        self.state = _OPEN
        self._handshake.commit(result, opened.chains.resume, opened.channel, opened.flow)
        if result.reply:
            self._outbox.frames.append(result.reply)
        return [result.event(retransmit)]

    # -- sending -------------------------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        """Control frames owed right now (handshake, retransmission, acks, heartbeats,
        rekeys, close), in the order they must be written.  Call from the writer."""
        out = self._outbox.take(self._flow, self.state is _OPEN, self._clock)
        if out:
            if self._meter is not None:
                self._meter.earn(earned_by(out))
            self._liveness.last_tx = self._clock()
            self.stats.frames_sent += len(out)
            self.stats.bytes_sent += sum(map(len, out))
        return out

    def has_pending_control(self) -> bool:
        """True when :meth:`data_to_send` would return something."""
        return self._outbox.pending(self._flow, self.state is _OPEN, self._clock())

    def send_window(self) -> int:
        """How many application messages may be sent now (credit and replay limits)."""
        flow = self._flow
        return flow.send_window() if self.state is _OPEN and flow is not None else 0

    def send_bytes_budget(self) -> int:
        """Payload bytes that still fit in the replay buffer."""
        s = self.session
        return 0 if s is None else max(0, self.config.replay_max_bytes - s.replay_bytes)

    def send_data(self, payloads: Sequence[bytes], *, system: bool = False) -> bytes:
        """Build one DATA frame carrying ``payloads`` (a batch) and keep them for replay.

        The caller must respect :meth:`send_window`, ``max_message_size``,
        ``max_batch_bytes`` and :meth:`send_bytes_budget`; violating them is a
        :class:`~trio_session.LocalProtocolError` (a bug in the caller).
        ``system=True`` marks session-layer notices (FLAG_SYSTEM): sequenced,
        acknowledged and replayed like application messages, but reported with
        ``MessagesReceived.system`` set so the runtime handles them itself.
        """
        flow = self._flow
        if self.state is not _OPEN or flow is None:
            raise LocalProtocolError(f"cannot send data in state {self.state.value}")
        frame = flow.send_data(payloads, FLAG_SYSTEM if system else 0)
        if self._meter is not None:
            self._meter.earn(2)  # the peer may acknowledge it on arrival and on consumption
        liveness = self._liveness
        liveness.last_tx = liveness.last_data_tx = self._clock()
        self._rekey.count_messages(len(payloads))
        return frame

    def messages_consumed(self, n: int) -> bool:
        """The application consumed ``n`` received messages: more credit for the peer.

        Returns True when an ACK frame became due (wake the writer).
        """
        if self.session is None:
            return False
        self.session.consume(n)
        flow = self._flow
        return self.state is _OPEN and flow is not None and flow.ack_due(self._clock())

    def ack_soon(self) -> bool:
        """Start the delayed-ack clock if it is not running (a durable store has a
        commit to acknowledge once stored).  Returns True when it was started."""
        flow = self._flow
        if self.state is not _OPEN or flow is None or flow.unacked_since is not None:
            return False
        flow.unacked_since = self._clock()
        return True

    def messages_committed(self, stable: int) -> bool:
        """Durable store: the application's messages below ``stable`` are committed and
        recorded, so they may now be acknowledged (``SessionRecord.rx_stable``).

        Returns True when an ACK frame became due (wake the writer); otherwise the
        delayed ack sends it (see :meth:`heartbeat_deadline`).
        """
        record = self.session
        if record is None:
            return False
        if record.rx_stable is None or stable > record.rx_stable:
            record.rx_stable = stable
        flow = self._flow
        return self.state is _OPEN and flow is not None and flow.stable_advanced(self._clock())

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
        retry_ms = None if retry_after is None else max(0, min(int(retry_after * 1000), 2**32 - 1))
        if self._channel is not None:
            self._outbox.close = Close(code=int(code), reason=reason[:200], retry_after_ms=retry_ms)
        elif self.state is not ConnectionState.CLOSED:
            # No keys: only the venue may answer a ClientHello, with a REJECT.
            self._outbox.frames += self._handshake.reject(code, reason[:200], retry_ms)
        if self.state is not ConnectionState.ERROR:
            self.state = ConnectionState.CLOSING


class ClientConnection(Connection):
    """Participant side: sends ClientHello at construction.

    Args:
        venue_public_key: the venue's pinned Ed25519 public key (32 bytes).
        resume: the :class:`SessionRecord` of a previous connection to resume,
            or None for a new session.
    """

    role = Role.PARTICIPANT
    _tx_dir = DIR_C2V
    _rekey_type = ParticipantRekey
    _liveness_type = ParticipantLiveness
    __slots__ = ()

    def __init__(
        self,
        identity: Identity,
        venue_public_key: bytes,
        config: SessionConfig,
        *,
        resume: SessionRecord | None = None,
        clock: Callable[[], float] = _monotonic,
        rng: Callable[[int], bytes] = os.urandom,
        wall_ms: Callable[[], int] = _wall_ms,
    ) -> None:
        super().__init__(identity, config, clock=clock, rng=rng, wall_ms=wall_ms)
        handshake = ClientHandshake(identity, venue_public_key, config, resume, rng)
        self._handshake = handshake
        self._outbox.frames.append(handshake.hello_frame)


class VenueConnection(Connection):
    """Venue side: waits for ClientHello, reports it, then :meth:`accept` or ``close``."""

    role = Role.VENUE
    _tx_dir = DIR_V2C
    _rekey_type = VenueRekey
    _liveness_type = VenueLiveness
    __slots__ = ("_venue_handshake",)

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
        self._handshake = self._venue_handshake = VenueHandshake(identity, config, rng, wall_ms)

    @property
    def hello(self) -> ClientHello | None:
        """The ClientHello, once received."""
        return self._venue_handshake.hello

    def verify_resume(self, session: SessionRecord) -> bool:
        """Check the ClientHello's resume binder for ``session`` before :meth:`accept`
        (a MAC, no public-key operation): True when it verified, False when the
        ClientHello cannot resume ``session`` (accept() then starts a new one).

        For admission that trusts a proven resume more than a claim.  Raises
        AuthenticationError for an invalid or reused binder (``AUTH_FAILED``,
        ``BINDER_REUSED``).
        """
        try:
            return self._venue_handshake.verify_resume(session)
        except SessionError as exc:
            self._fail(exc)
            raise

    def accept(self, peer_public_key: bytes, session: SessionRecord | None = None) -> None:
        """Answer the ClientHello with ServerHello.

        Args:
            peer_public_key: the participant's registered Ed25519 key for ``key_id``.
            session: the detached session named by ``resume_session_id``, if the
                venue still has it; None starts a fresh session.

        Raises AuthenticationError for an invalid or reused resume binder.
        """
        if self.state is not ConnectionState.AWAITING_ACCEPT or self.hello is None:
            raise LocalProtocolError(
                f"accept() is only valid after HelloReceived (state {self.state.value})"
            )
        try:
            server_hello = self._venue_handshake.accept(peer_public_key, session)
        except SessionError as exc:
            self._fail(exc)
            raise
        self._outbox.frames.append(server_hello)
        self.state = ConnectionState.HANDSHAKING
