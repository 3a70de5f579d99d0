"""The handshake: M1-M3 (SIGMA-style, mutual Ed25519, X25519), resume binders, REJECT.

Each role has its own machine with its own states (:class:`HandshakeState`)::

    participant  AWAITING_SERVER_HELLO --M2 verified, M3 built--> COMPLETE
                 AWAITING_SERVER_HELLO --REJECT--> REFUSED
    venue        AWAITING_HELLO --M1--> AWAITING_ACCEPT --accept()--> AWAITING_FINISH
                 AWAITING_FINISH --M3 verified--> COMPLETE
                 any state before COMPLETE --close()--> REFUSED (a REJECT is sent)

The machines check, sign and verify (docs/protocol.md, "Handshake"); what they
produce is a :class:`HandshakeResult`: the session record to continue (or a
new one), the key exchange output and transcript hash the key schedule needs,
and the peer's resume position.  The connection turns it into a channel.
Nothing in a session record changes here, so a refused handshake leaves it as
it was.
"""

from __future__ import annotations

import abc
import enum
import hmac
from collections.abc import Callable
from typing import Final

import attrs

from .._config import SessionConfig
from .._errors import (
    AuthenticationError,
    CloseCode,
    FrameError,
    LocalProtocolError,
    RemoteProtocolError,
)
from .._identity import Identity
from . import _crypto as c
from ._channel import Channel, Flow, credit_window
from ._events import CloseReceived, Event, HandshakeComplete, HelloReceived
from ._modes import offer, venue_choice, verify_choice
from ._record import SessionRecord
from ._resume import binder, check_binders, resumable
from ._types import Role
from ._wire import (
    BINDER_ENTRY,
    FIN_LEN,
    HANDSHAKE_TYPES,
    HEADER_LEN,
    MODE_MAC,
    PROTOCOL_VERSION,
    SIG_LEN,
    ClientFinish,
    ClientHello,
    FrameType,
    Reject,
    ResumeRequest,
    ServerHello,
    decode_body,
    encode_body,
    pack_header,
    parse_header,
)

__all__ = [
    "ClientHandshake",
    "Handshake",
    "HandshakeResult",
    "HandshakeState",
    "VenueHandshake",
    "parse_reject",
]

#: Resume binders one ClientHello may carry (the two newest generations).
MAX_BINDERS: Final = 2
TRANSCRIPT_LABEL: Final = b"tsess/v1"
TRAILER_SIG_FIN: Final = SIG_LEN + FIN_LEN
#: First byte of a REJECT frame.
REJECT_BYTE: Final = bytes((FrameType.REJECT,))
#: M3's prefix is fixed (an empty map), and it is not hashed: anything else is refused.
CANONICAL_M3_PREFIX: Final = pack_header(FrameType.CLIENT_FINISH, 0, 0, 0) + encode_body(
    ClientFinish()
)


class HandshakeState(enum.Enum):
    AWAITING_HELLO = "awaiting_hello"  # venue: before M1
    AWAITING_ACCEPT = "awaiting_accept"  # venue: M1 reported; the application decides
    AWAITING_SERVER_HELLO = "awaiting_server_hello"  # participant: M1 sent
    AWAITING_FINISH = "awaiting_finish"  # venue: M2 sent, M3 awaited
    COMPLETE = "complete"  # keys can be derived; the channel takes over
    REFUSED = "refused"  # REJECT sent (venue) or received (participant)


@attrs.frozen(repr=False)
class HandshakeResult:
    """What a completed handshake hands to the connection (secrets: no repr)."""

    record: SessionRecord
    kx_c2v: bytes
    kx_v2c: bytes
    th: bytes
    #: The resume secret a binder proved (mixed into the keys), for a resume.
    resume_k: bytes | None
    resumed: bool
    resume_requested: bool
    #: Participant: messages of a refused resume that may never have arrived.
    abandoned: int
    #: The peer's resume position: its next expected data seq and its credit.
    peer_next_rx: int
    peer_window: int
    #: Generation the new resume secret gets.
    new_gen: int
    #: Participant after a resume: the accepted generation, kept until confirmed.
    accepted_gen: int | None = None
    #: Participant: the venue's next data seq (its replay ends there).
    replay_until: int = 0
    #: Participant: M3, to be written.
    reply: bytes = b""
    #: Participant: the heartbeat timing the venue dictated (ms, ms).
    heartbeat_ms: tuple[int, int] | None = None
    #: A resume: the data seq we told the peer to retransmit from (our ack position).
    rx_resume: int | None = None
    #: How the connection's frames are protected, as M2 chose.
    mode: str = MODE_MAC

    def __repr__(self) -> str:
        return f"<HandshakeResult {self.record!r} resumed={self.resumed}>"

    def event(self, retransmitted: int) -> HandshakeComplete:
        """How the completed handshake is reported to the runtime."""
        return HandshakeComplete(
            self.record.session_id,
            self.resumed,
            self.resume_requested,
            self.abandoned,
            retransmitted,
            self.replay_until,
        )


def parse_reject(frame: bytes) -> CloseReceived:
    """Decode a REJECT (unauthenticated: header all zero, a map, no trailer)."""
    frame_type, flags, epoch, seq = parse_header(frame)
    if flags or epoch or seq:
        raise FrameError("REJECT with non-zero reserved header fields", remote=True)
    rej = decode_body(frame_type, memoryview(frame)[HEADER_LEN:], Reject)
    retry = None if rej.retry_after_ms is None else rej.retry_after_ms / 1000
    return CloseReceived(CloseCode.from_wire(rej.code), rej.reason, retry)


class Handshake(abc.ABC):
    """Role-agnostic part: the state, and what the connection asks of either role."""

    #: Whether this role may receive a REJECT (only the participant, until the
    #: first authenticated frame from the venue).
    accepts_reject: bool

    __slots__ = ("_identity", "resumed", "state")

    def __init__(self, identity: Identity, state: HandshakeState) -> None:
        self._identity = identity
        self.state = state
        #: Whether the handshake continues an existing session.
        self.resumed = False

    @abc.abstractmethod
    def receive(self, frame: bytes) -> HandshakeResult | Event:
        """Process one handshake frame."""

    @abc.abstractmethod
    def commit(
        self, result: HandshakeResult, resume_secret: bytes, channel: Channel, flow: Flow
    ) -> None:
        """Apply this role's resume-secret and confirmation rules once the keys exist."""

    def reject(self, code: CloseCode, reason: str, retry_after_ms: int | None) -> list[bytes]:
        """The REJECT frame refusing the handshake, if this role may send one."""
        return []

    def is_reject(self, frame: bytes) -> bool:
        """Whether ``frame`` is a REJECT this role must still process (not yet decoded)."""
        return self.accepts_reject and frame[:1] == REJECT_BYTE

    def refused(self, event: CloseReceived) -> CloseReceived:
        self.state = HandshakeState.REFUSED
        return event

    def receive_after_close(self, frame: bytes) -> CloseReceived:
        """A frame after we closed before any keys existed: only a REJECT still counts."""
        if self.is_reject(frame):
            return self.refused(parse_reject(frame))
        if len(frame) < HEADER_LEN + c.TAG_LEN:
            raise FrameError(f"frame too short ({len(frame)} bytes)", remote=True)
        frame_type = parse_header(frame)[0]
        if frame_type in HANDSHAKE_TYPES:
            raise FrameError(f"unexpected {frame_type.name} after the handshake", remote=True)
        raise FrameError(f"{frame_type.name} on a connection closed before its keys", remote=True)


class ClientHandshake(Handshake):
    """Participant: builds M1 at once, verifies M2 and answers with M3.

    Args:
        venue_public_key: the venue's pinned Ed25519 key (32 bytes).
        resume: the session record to resume, or None for a new session.
    """

    accepts_reject = True
    __slots__ = (
        "_e_pk",
        "_e_sk",
        "_offered_gens",
        "_offered_modes",
        "_resume",
        "_rx_resume",
        "_venue_pk",
        "hello_frame",
    )

    def __init__(
        self,
        identity: Identity,
        venue_public_key: bytes,
        config: SessionConfig,
        resume: SessionRecord | None,
        rng: Callable[[int], bytes],
    ) -> None:
        super().__init__(identity, HandshakeState.AWAITING_SERVER_HELLO)
        if len(venue_public_key) != 32:
            raise ValueError("venue_public_key must be 32 bytes")
        self._venue_pk = bytes(venue_public_key)
        if resume is not None and (resume.role is not Role.PARTICIPANT or resume.compromised):
            raise LocalProtocolError("resume state must be a healthy participant session")
        self._resume = resume if resume is not None and resume.resume_secrets else None
        p_nonce = rng(32)
        self._e_pk, self._e_sk = c.kx_keypair(rng(32))
        resume_req = None
        window = credit_window(self._resume, config)
        gens: list[int] = []
        self._rx_resume = 0
        if self._resume is not None:
            # Our ack position, not what we received: with a durable store only
            # committed messages may be forgotten by the venue.
            self._rx_resume = self._resume.ack_position
            resume_req = ResumeRequest(self._resume.session_id, self._rx_resume)
            gens = sorted(self._resume.resume_secrets)[-MAX_BINDERS:]
        self._offered_modes = offer(config)
        hello = ClientHello(
            ver=[PROTOCOL_VERSION],
            modes=self._offered_modes,
            key_id=identity.key_id,
            p_nonce=p_nonce,
            e_p=self._e_pk,
            window=window,
            resume=resume_req,
        )
        prefix = pack_header(FrameType.CLIENT_HELLO, len(gens), 0, 0) + encode_body(hello)
        trailer = b""
        if self._resume is not None:
            sid, secrets = self._resume.session_id, self._resume.resume_secrets
            for gen in gens:
                trailer += BINDER_ENTRY.pack(gen, binder(secrets[gen], sid, prefix))
        self._offered_gens = gens
        #: M1 exactly as sent (the transcript starts with it).
        self.hello_frame = prefix + trailer

    def receive(self, frame: bytes) -> HandshakeResult | Event:
        frame_type, flags, epoch, seq = parse_header(frame)
        if frame_type is FrameType.REJECT:
            return self.refused(parse_reject(frame))
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
        # The signature first: a choice changed in transit (a downgrade) is then
        # reported as the tampering it is, not as the venue's mistake.
        th2 = c.h(TRANSCRIPT_LABEL, self._venue_pk, self.hello_frame, prefix)
        if not c.verify_signature(self._venue_pk, c.SIG_CTX_SERVER + th2, sig_v):
            raise AuthenticationError(
                "venue signature does not verify (wrong venue key or tampered handshake)",
                remote=True,
            )
        verify_choice(m2, self._offered_modes)
        kx_c2v, kx_v2c = c.kx_client(self._e_pk, self._e_sk, m2.e_v)
        self._e_sk = b""
        th2s = c.h(th2, sig_v)
        if not hmac.compare_digest(c.mac(c.kdf(kx_v2c, c.L_FIN_V, th2), th2s), fin_v):
            raise AuthenticationError("venue finish MAC does not verify", remote=True)
        th3 = c.h(th2s, fin_v, self._identity.public_key)
        sig_p = self._identity.sign(c.SIG_CTX_CLIENT + th3)
        th3s = c.h(th3, sig_p)
        fin_p = c.mac(c.kdf(kx_c2v, c.L_FIN_P, th3), th3s)
        m3 = CANONICAL_M3_PREFIX + sig_p + fin_p
        record, resume_k, abandoned = self._session_for(m2)
        self.resumed = m2.resumed
        self.state = HandshakeState.COMPLETE
        return HandshakeResult(
            record,
            kx_c2v,
            kx_v2c,
            c.h(th3s, fin_p),
            resume_k,
            resumed=m2.resumed,
            resume_requested=self._resume is not None,
            abandoned=abandoned,
            peer_next_rx=m2.next_rx_seq,
            peer_window=m2.window,
            new_gen=0 if m2.resume_gen is None else m2.resume_gen + 1,
            accepted_gen=m2.resume_gen,
            replay_until=m2.next_tx_seq,
            reply=m3,
            heartbeat_ms=(m2.heartbeat_ms, m2.heartbeat_timeout_ms),
            rx_resume=self._rx_resume if m2.resumed else None,
            mode=m2.mode,
        )

    def _session_for(self, m2: ServerHello) -> tuple[SessionRecord, bytes | None, int]:
        """The record M2 continues (or a new one), the proved resume secret, abandoned count."""
        old = self._resume
        if m2.resumed:
            if old is None or m2.session_id != old.session_id:
                raise RemoteProtocolError("venue resumed a session we did not ask for", remote=True)
            if m2.resume_gen is None or m2.resume_gen not in self._offered_gens:
                raise RemoteProtocolError(
                    "venue resumed with a generation we did not offer", remote=True
                )
            return old, old.resume_secrets[m2.resume_gen], 0
        if m2.resume_gen is not None:
            raise RemoteProtocolError("resume_gen on a fresh session", remote=True)
        abandoned = 0
        if old is not None:
            if m2.session_id == old.session_id:
                raise RemoteProtocolError("a fresh session reuses the old id", remote=True)
            abandoned = old.replay_messages
        return (
            SessionRecord(m2.session_id, self._identity.key_id, Role.PARTICIPANT),
            None,
            abandoned,
        )

    def commit(
        self, result: HandshakeResult, resume_secret: bytes, channel: Channel, flow: Flow
    ) -> None:
        record = result.record
        if result.accepted_gen is not None:
            # If M3 is lost the venue still holds the accepted generation: keep it
            # until the venue's first authenticated frame proves it moved on.
            record.keep_accepted_generation(result.accepted_gen, result.new_gen, resume_secret)
            channel.confirm_resume_on_rx = True
        else:
            record.install_resume_secret(result.new_gen, resume_secret, keep_previous=False)
        record.spent_secrets.clear()


class VenueHandshake(Handshake):
    """Venue: reports M1, signs M2 once the application accepted, verifies M3."""

    accepts_reject = False
    __slots__ = (
        "_binders",
        "_config",
        "_fin_v",
        "_kx",
        "_m1",
        "_m1_prefix",
        "_mode",
        "_peer_pk",
        "_pending",
        "_resume_gen",
        "_resume_k",
        "_rng",
        "_rx_resume",
        "_session_id",
        "_th2s",
        "_verified",
        "_wall_ms",
        "hello",
    )

    def __init__(
        self,
        identity: Identity,
        config: SessionConfig,
        rng: Callable[[int], bytes],
        wall_ms: Callable[[], int],
    ) -> None:
        super().__init__(identity, HandshakeState.AWAITING_HELLO)
        self._config = config
        self._rng = rng
        self._wall_ms = wall_ms
        self._m1 = b""
        self._m1_prefix = b""
        self._mode = MODE_MAC
        #: The ClientHello, once received.
        self.hello: ClientHello | None = None
        self._binders: list[tuple[int, bytes]] = []
        self._peer_pk = b""
        self._pending: SessionRecord | None = None
        #: The session whose binder verify_resume() checked.
        self._verified: SessionRecord | None = None
        self._resume_gen: int | None = None
        self._resume_k: bytes | None = None
        self._kx: tuple[bytes, bytes] = (b"", b"")
        self._th2s = b""
        self._fin_v = b""
        self._session_id = b""
        self._rx_resume = 0

    def receive(self, frame: bytes) -> HandshakeResult | Event:
        frame_type, flags, _epoch, _seq = parse_header(frame)
        if self.state is HandshakeState.AWAITING_ACCEPT:
            raise LocalProtocolError("call accept() or close() before feeding more data")
        if self.state is HandshakeState.AWAITING_HELLO:
            if frame_type is not FrameType.CLIENT_HELLO:
                raise FrameError(f"expected CLIENT_HELLO, got {frame_type.name}", remote=True)
            return self._on_hello(frame, flags)
        if frame_type is not FrameType.CLIENT_FINISH:
            raise FrameError(f"expected CLIENT_FINISH, got {frame_type.name}", remote=True)
        return self._on_finish(frame)

    def _on_hello(self, frame: bytes, flags: int) -> HelloReceived:
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
        self._mode = venue_choice(hello, self._config)
        self._binders = [
            BINDER_ENTRY.unpack_from(frame, len(prefix) + i * BINDER_ENTRY.size)
            for i in range(flags)
        ]
        self._m1, self._m1_prefix, self.hello = frame, prefix, hello
        self.state = HandshakeState.AWAITING_ACCEPT
        return HelloReceived(hello.key_id, hello.resume.session_id if hello.resume else None)

    def accept(self, peer_public_key: bytes, session: SessionRecord | None) -> bytes:
        """Sign M2 for the reported ClientHello; ``session`` is the one to resume, if any.

        Raises AuthenticationError for an invalid or reused resume binder.
        """
        hello = self.hello
        if self.state is not HandshakeState.AWAITING_ACCEPT or hello is None:
            raise LocalProtocolError(f"accept() in handshake state {self.state.value}")
        if len(peer_public_key) != 32:
            raise LocalProtocolError("peer_public_key must be 32 bytes")
        self._peer_pk = bytes(peer_public_key)
        cfg = self._config
        session = resumable(hello, session)
        if hello.resume is not None and session is not None:
            if self._verified is not session:
                self.verify_resume(session)
            self._pending = session
            self.resumed = True
            self._session_id = session.session_id
            next_rx, window = session.ack_position, credit_window(session, cfg)
            self._rx_resume = next_rx
        else:
            self._session_id = self._rng(16)
            next_rx, window = 0, credit_window(None, cfg)
        return self._server_hello(hello, session, next_rx, window)

    def verify_resume(self, session: SessionRecord) -> bool:
        """Check the resume binder for ``session`` before :meth:`accept` signs (MACs
        only); False when this ClientHello cannot resume ``session`` at all."""
        hello = self.hello
        if self.state is not HandshakeState.AWAITING_ACCEPT or hello is None:
            raise LocalProtocolError(f"verify_resume() in handshake state {self.state.value}")
        if hello.resume is None or resumable(hello, session) is None:
            return False
        self._resume_gen, self._resume_k = check_binders(self._binders, session, self._m1_prefix)
        self._verified = session
        return True

    def _server_hello(
        self, hello: ClientHello, session: SessionRecord | None, next_rx: int, window: int
    ) -> bytes:
        cfg = self._config
        v_nonce = self._rng(32)
        e_pk, e_sk = c.kx_keypair(self._rng(32))
        m2 = ServerHello(
            ver=PROTOCOL_VERSION,
            mode=self._mode,
            session_id=self._session_id,
            v_nonce=v_nonce,
            e_v=e_pk,
            ts_ms=max(0, self._wall_ms()),
            heartbeat_ms=max(1, round(cfg.heartbeat_interval * 1000)),
            heartbeat_timeout_ms=max(1, round(cfg.heartbeat_timeout * 1000)),
            resumed=self.resumed,
            next_rx_seq=next_rx,
            window=window,
            next_tx_seq=session.next_tx_seq if self.resumed and session is not None else 0,
            resume_gen=self._resume_gen,
        )
        prefix = pack_header(FrameType.SERVER_HELLO, 0, 0, 0) + encode_body(m2)
        th2 = c.h(TRANSCRIPT_LABEL, self._identity.public_key, self._m1, prefix)
        sig_v = self._identity.sign(c.SIG_CTX_SERVER + th2)
        kx_c2v, kx_v2c = c.kx_server(e_pk, e_sk, hello.e_p)
        th2s = c.h(th2, sig_v)
        fin_v = c.mac(c.kdf(kx_v2c, c.L_FIN_V, th2), th2s)
        self._kx, self._th2s, self._fin_v = (kx_c2v, kx_v2c), th2s, fin_v
        self.state = HandshakeState.AWAITING_FINISH
        return prefix + sig_v + fin_v

    def _on_finish(self, frame: bytes) -> HandshakeResult:
        hello = self.hello
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
        if prefix != CANONICAL_M3_PREFIX:
            raise FrameError("non-canonical CLIENT_FINISH", remote=True)
        if not c.verify_signature(self._peer_pk, c.SIG_CTX_CLIENT + th3, sig_p):
            raise AuthenticationError("participant signature does not verify", remote=True)
        kx_c2v, kx_v2c = self._kx
        th3s = c.h(th3, sig_p)
        if not hmac.compare_digest(c.mac(c.kdf(kx_c2v, c.L_FIN_P, th3), th3s), fin_p):
            raise AuthenticationError("participant finish MAC does not verify", remote=True)
        self._kx = (b"", b"")
        resume = hello.resume
        if self.resumed:
            assert self._pending is not None and resume is not None
            record, peer_next, window = self._pending, resume.next_rx_seq, hello.window
        else:
            record = SessionRecord(self._session_id, hello.key_id, Role.VENUE)
            peer_next, window = 0, hello.window
            if resume is not None:
                # The participant counted its window in the old session; its new
                # inbound queue holds at most what it had not consumed.
                window = max(0, hello.window - resume.next_rx_seq)
        self.state = HandshakeState.COMPLETE
        return HandshakeResult(
            record,
            kx_c2v,
            kx_v2c,
            c.h(th3s, fin_p),
            self._resume_k,
            resumed=self.resumed,
            resume_requested=resume is not None,
            abandoned=0,
            peer_next_rx=peer_next,
            peer_window=window,
            new_gen=0 if self._resume_gen is None else self._resume_gen + 1,
            rx_resume=self._rx_resume if self.resumed else None,
            mode=self._mode,
        )

    def commit(
        self, result: HandshakeResult, resume_secret: bytes, channel: Channel, flow: Flow
    ) -> None:
        result.record.install_resume_secret(result.new_gen, resume_secret, keep_previous=False)
        # Confirm at once (any authenticated frame does), so the participant
        # learns promptly that its ClientFinish passed.
        flow.confirm_owed = True

    def reject(self, code: CloseCode, reason: str, retry_after_ms: int | None) -> list[bytes]:
        self.state = HandshakeState.REFUSED
        body = encode_body(Reject(code=int(code), reason=reason, retry_after_ms=retry_after_ms))
        return [pack_header(FrameType.REJECT, 0, 0, 0) + body]
