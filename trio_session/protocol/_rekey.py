"""The tier-2 DH rekey: one named state machine per connection (docs/protocol.md, "Key rotation").

Only the venue starts a rekey; the participant may ask for one.  Both roles
share :class:`RekeyState` and a core that keeps the time of the last DH (the
handshake counts as one), the timer jitter and the message count; each role
has its own transitions::

    venue        IDLE --timer, message count, start_rekey()------> REKEY_OWED
                 IDLE --REKEY_REQUEST less than 1 s after a DH---> REQUEST_DEFERRED
                 REQUEST_DEFERRED --1 s after the DH, or a trigger-> REKEY_OWED
                 REKEY_OWED --REKEY written--> IN_FLIGHT --REKEY_ACK--> IDLE

    participant  IDLE --timer, request_rekey()--> REQUEST_OWED
                 REQUEST_OWED --REKEY_REQUEST written--> REQUESTED
                 IDLE / REQUEST_OWED / REQUESTED --REKEY--> ACK_OWED
                 ACK_OWED --REKEY_ACK written--> IDLE

A REKEY_REQUEST that arrives while a rekey is owed or in flight is answered by
that rekey; a REKEY that arrives before the participant wrote its request
answers the request.  The key switch rules (which epoch uses the new chains,
when the old resume secret is forgotten) are applied here, through the channel.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable
from typing import ClassVar, Final

import attrs

from .._config import SessionConfig
from .._errors import (
    AuthenticationError,
    FrameError,
    LocalProtocolError,
    RekeyTimeout,
    RemoteProtocolError,
)
from . import _crypto as c
from ._channel import Channel
from ._events import Event
from ._keys import ChainKeys
from ._types import ConnectionStats, draw_jitter
from ._wire import FrameType, Rekey, RekeyAck, RekeyRequest, decode_body, encode_body

__all__ = ["ParticipantRekey", "RekeyMachine", "RekeyState", "VenueRekey"]

#: Venue: minimum spacing between a completed DH and one started on a participant's request.
REKEY_REQUEST_SPACING: Final = 1.0


class RekeyState(enum.Enum):
    IDLE = "idle"
    REQUEST_DEFERRED = "request_deferred"  # venue: a request waits out the spacing
    REKEY_OWED = "rekey_owed"  # venue: REKEY to be written
    IN_FLIGHT = "in_flight"  # venue: REKEY sent, REKEY_ACK awaited
    REQUEST_OWED = "request_owed"  # participant: REKEY_REQUEST to be written
    REQUESTED = "requested"  # participant: REKEY_REQUEST sent, REKEY awaited
    ACK_OWED = "ack_owed"  # participant: REKEY received and keys derived, REKEY_ACK owed


S = RekeyState


class RekeyMachine(abc.ABC):
    """Role-agnostic core: DH timing, message count, transitions, the switch bookkeeping."""

    #: Allowed transitions of this role; anything else is a bug, refused loudly.
    transitions: ClassVar[dict[RekeyState, frozenset[RekeyState]]]

    __slots__ = (
        "_channel",
        "_clock",
        "_config",
        "_rng",
        "_stats",
        "jitter",
        "last_dh",
        "messages_since_dh",
        "state",
    )

    def __init__(
        self,
        config: SessionConfig,
        clock: Callable[[], float],
        rng: Callable[[int], bytes],
        stats: ConnectionStats,
        now: float,
    ) -> None:
        self.state = S.IDLE
        self._config = config
        self._clock = clock
        self._rng = rng
        self._stats = stats
        self._channel: Channel | None = None
        self.last_dh = now
        self.jitter = draw_jitter(rng, config.rekey_jitter)
        self.messages_since_dh = 0
        self._setup()

    @abc.abstractmethod
    def _setup(self) -> None:
        """Initialise this role's own fields."""

    def attach(self, channel: Channel, now: float) -> None:
        """The handshake completed: rekeys now run over ``channel``; it counts as a DH."""
        self._channel = channel
        self.last_dh = now

    def _to(self, state: RekeyState) -> None:
        if state not in self.transitions[self.state]:
            raise LocalProtocolError(f"rekey: no transition {self.state.value} -> {state.value}")
        self.state = state

    def _attached(self) -> Channel:
        channel = self._channel
        if channel is None:
            raise LocalProtocolError("rekey before the handshake completed")
        return channel

    def _dh_done(self, now: float) -> None:
        self.last_dh = now
        self.jitter = draw_jitter(self._rng, self._config.rekey_jitter)
        self.messages_since_dh = 0

    def _periodic(self) -> float:
        return self.last_dh + self._config.rekey_interval + self.jitter

    def count_messages(self, n: int) -> None:
        """Data messages sent or received since the last DH (a venue trigger)."""
        self.messages_since_dh += n

    @abc.abstractmethod
    def start(self, *, open: bool) -> None:
        """``Connection.start_rekey()``."""

    @abc.abstractmethod
    def request(self, now: float, *, open: bool) -> None:
        """``Connection.request_rekey()``."""

    @abc.abstractmethod
    def has_output(self) -> bool:
        """Whether a rekey frame is owed."""

    @abc.abstractmethod
    def deadline(self) -> float:
        """When :meth:`on_timer` next has something to do."""

    @abc.abstractmethod
    def on_timer(self, now: float) -> None:
        """Start (or ask for) a due rekey; raise RekeyTimeout for a stalled one."""

    @abc.abstractmethod
    def receive(self, frame_type: FrameType, body: memoryview) -> list[Event]:
        """An opened rekey frame (anything else not handled elsewhere is refused)."""

    @abc.abstractmethod
    def write_answers(self, out: list[bytes]) -> None:
        """Frames answering the peer, written before anything else we owe."""

    @abc.abstractmethod
    def write_requests(self, out: list[bytes]) -> None:
        """Frames we initiate."""

    @abc.abstractmethod
    def peer_switched(self) -> None:
        """The peer's first frame under DH keys verified (see ``Channel``)."""


@attrs.frozen(repr=False)
class _Exchange:
    """Venue: the REKEY in flight."""

    rekey_id: int
    public: bytes
    secret: bytes


class VenueRekey(RekeyMachine):
    """Starts rekeys on time, on a message count, on request; fails a stalled one."""

    transitions: ClassVar[dict[RekeyState, frozenset[RekeyState]]] = {
        S.IDLE: frozenset({S.REQUEST_DEFERRED, S.REKEY_OWED}),
        S.REQUEST_DEFERRED: frozenset({S.REKEY_OWED}),
        S.REKEY_OWED: frozenset({S.IN_FLIGHT}),
        S.IN_FLIGHT: frozenset({S.IDLE}),
    }
    __slots__ = ("_exchange", "_rekey_id")

    def _setup(self) -> None:
        self._rekey_id = 0
        self._exchange: _Exchange | None = None

    def _idle(self) -> bool:
        return self.state is S.IDLE or self.state is S.REQUEST_DEFERRED

    def start(self, *, open: bool) -> None:
        if open and self._idle():
            self._to(S.REKEY_OWED)

    def request(self, now: float, *, open: bool) -> None:
        raise LocalProtocolError("the venue starts rekeys with start_rekey()")

    def count_messages(self, n: int) -> None:
        self.messages_since_dh += n
        if self.messages_since_dh >= self._config.rekey_messages and self._idle():
            self._to(S.REKEY_OWED)

    def has_output(self) -> bool:
        return self.state is S.REKEY_OWED

    def deadline(self) -> float:
        if not self._idle():
            return self.last_dh + self._config.reject_after
        deadline = self._periodic()
        if self.state is S.REQUEST_DEFERRED:
            deadline = min(deadline, self.last_dh + REKEY_REQUEST_SPACING)
        return deadline

    def on_timer(self, now: float) -> None:
        if not self._idle():
            if now >= self.last_dh + self._config.reject_after:
                raise RekeyTimeout(
                    f"DH rekey not completed {now - self.last_dh:.1f}s after the last one"
                )
        elif now >= self._periodic() or (
            self.state is S.REQUEST_DEFERRED and now >= self.last_dh + REKEY_REQUEST_SPACING
        ):
            self._to(S.REKEY_OWED)

    def write_answers(self, out: list[bytes]) -> None:
        pass  # the venue initiates; it never owes a rekey answer

    def peer_switched(self) -> None:
        pass  # the venue learns of the switch from REKEY_ACK itself

    def write_requests(self, out: list[bytes]) -> None:
        if self.state is not S.REKEY_OWED:
            return
        channel = self._attached()
        self._rekey_id = rekey_id = (self._rekey_id + 1) & 0xFFFFFFFF
        public, secret = c.kx_keypair(self._rng(32))
        out.append(channel.seal_control(FrameType.REKEY, encode_body(Rekey(rekey_id, public))))
        self._exchange = _Exchange(rekey_id, public, secret)
        # Our next v2c epoch change must be this DH switch: no tier-1 step until then.
        channel.hold_step = True
        self._to(S.IN_FLIGHT)

    def receive(self, frame_type: FrameType, body: memoryview) -> list[Event]:
        if frame_type is FrameType.REKEY_ACK:
            self._on_rekey_ack(decode_body(frame_type, body, RekeyAck))
        elif frame_type is FrameType.REKEY_REQUEST:
            decode_body(frame_type, body, RekeyRequest)
            self._on_request()
        else:
            raise FrameError(f"{frame_type.name} is not valid from a participant", remote=True)
        return []

    def _on_request(self) -> None:
        # At most one requested DH per REKEY_REQUEST_SPACING: a participant cannot
        # make the venue burn CPU on back-to-back key exchanges.  An early request
        # is deferred, not dropped (the participant waits for it).
        if not self._idle():
            return  # the rekey under way answers it
        if self._clock() - self.last_dh >= REKEY_REQUEST_SPACING:
            self._to(S.REKEY_OWED)
        elif self.state is S.IDLE:
            self._to(S.REQUEST_DEFERRED)

    def _on_rekey_ack(self, ack: RekeyAck) -> None:
        exchange = self._exchange
        if self.state is not S.IN_FLIGHT or exchange is None or ack.rekey_id != exchange.rekey_id:
            raise RemoteProtocolError("REKEY_ACK without a matching REKEY", remote=True)
        channel = self._attached()
        try:
            kx_c2v, kx_v2c = c.kx_server(exchange.public, exchange.secret, ack.e_p)
        except AuthenticationError as exc:
            raise RemoteProtocolError("invalid ephemeral key in REKEY_ACK", remote=True) from exc
        chains = channel.schedule.rekey(ack.rekey_id, exchange.public, ack.e_p, kx_c2v, kx_v2c)
        self._exchange = None
        now = self._clock()
        # Switch rule 2: the next c2v frame is epoch + 1 under the new chain, and
        # our next v2c frame switches too.
        channel.rx.install_pending(chains.for_direction(channel.rx.direction))
        channel.tx.switch_to(chains.for_direction(channel.tx.direction), now)
        channel.hold_step = False
        record = channel.record
        record.install_resume_secret(record.resume_gen + 1, chains.resume, keep_previous=False)
        self._to(S.IDLE)
        self._dh_done(now)
        self._stats.rekeys += 1


@attrs.frozen(repr=False)
class _Answer:
    """Participant: the REKEY_ACK owed, with the keys it switches to."""

    rekey_id: int
    public: bytes
    chains: ChainKeys


class ParticipantRekey(RekeyMachine):
    """Answers the venue's rekeys; asks for one when the venue is late, and gives up later."""

    transitions: ClassVar[dict[RekeyState, frozenset[RekeyState]]] = {
        S.IDLE: frozenset({S.REQUEST_OWED, S.ACK_OWED}),
        S.REQUEST_OWED: frozenset({S.REQUESTED, S.ACK_OWED}),
        S.REQUESTED: frozenset({S.ACK_OWED}),
        S.ACK_OWED: frozenset({S.IDLE}),
    }
    __slots__ = ("_answer", "requested_at")

    def _setup(self) -> None:
        #: When we asked for a rekey that has not happened yet.
        self.requested_at: float | None = None
        self._answer: _Answer | None = None

    def start(self, *, open: bool) -> None:
        raise LocalProtocolError("only the venue initiates DH rekeys; use request_rekey()")

    def request(self, now: float, *, open: bool) -> None:
        if open and self.state is S.IDLE:
            self.requested_at = now
            self._to(S.REQUEST_OWED)

    def has_output(self) -> bool:
        return self.state is S.REQUEST_OWED or self.state is S.ACK_OWED

    def _grace(self) -> float:
        # The venue tolerates reject_after without a DH; so do we, counted from the request.
        return self._config.reject_after - self._config.rekey_interval

    def deadline(self) -> float:
        if self.requested_at is not None:
            return self.requested_at + self._grace()
        if self.state is S.IDLE:
            return self._periodic()
        return float("inf")  # a REKEY_ACK is owed: the writer's job, not a timer's

    def on_timer(self, now: float) -> None:
        if self.requested_at is not None:
            if now >= self.requested_at + self._grace():
                raise RekeyTimeout(
                    f"DH rekey not completed {now - self.last_dh:.1f}s after the last one"
                )
        elif self.state is S.IDLE and now >= self._periodic():
            self.request(now, open=True)

    def receive(self, frame_type: FrameType, body: memoryview) -> list[Event]:
        if frame_type is not FrameType.REKEY:
            raise FrameError(f"{frame_type.name} is not valid from the venue", remote=True)
        rekey = decode_body(frame_type, body, Rekey)
        channel = self._attached()
        if self.state is S.ACK_OWED or channel.rx.pending is not None:
            raise RemoteProtocolError("REKEY while a previous rekey is unfinished", remote=True)
        # The key exchange runs here, on receipt, so a bad key is the peer's
        # error on the receive path; the writer only builds the REKEY_ACK.
        public, secret = c.kx_keypair(self._rng(32))
        try:
            kx_c2v, kx_v2c = c.kx_client(public, secret, rekey.e_v)
        except AuthenticationError as exc:
            raise RemoteProtocolError("invalid ephemeral key in REKEY", remote=True) from exc
        chains = channel.schedule.rekey(rekey.rekey_id, rekey.e_v, public, kx_c2v, kx_v2c)
        self._answer = _Answer(rekey.rekey_id, public, chains)
        self._to(S.ACK_OWED)
        return []

    def write_answers(self, out: list[bytes]) -> None:
        answer = self._answer
        if self.state is not S.ACK_OWED or answer is None:
            return
        channel = self._attached()
        self._answer = None
        body = encode_body(RekeyAck(answer.rekey_id, answer.public))
        out.append(channel.seal_control(FrameType.REKEY_ACK, body))
        now = self._clock()
        # Switch rule 1: our next c2v frame uses epoch + 1 under the new chain.
        chains = answer.chains
        channel.tx.switch_to(chains.for_direction(channel.tx.direction), now)
        # Rule 3: the old v2c key stays until the venue's first new-epoch frame.
        channel.rx.install_pending(chains.for_direction(channel.rx.direction))
        record = channel.record
        record.install_resume_secret(record.resume_gen + 1, chains.resume, keep_previous=True)
        self.requested_at = None
        self._to(S.IDLE)
        self._dh_done(now)

    def write_requests(self, out: list[bytes]) -> None:
        if self.state is S.REQUEST_OWED:
            channel = self._attached()
            out.append(channel.seal_control(FrameType.REKEY_REQUEST, encode_body(RekeyRequest())))
            self._to(S.REQUESTED)

    def peer_switched(self) -> None:
        # The venue switched v2c to the new DH chain, so it processed our
        # REKEY_ACK and holds the new resume secret.
        self._attached().record.confirm_latest_resume_secret()
        self._stats.rekeys += 1
