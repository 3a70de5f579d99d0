"""Malformed input and the attack catalogue of docs/security.md, at the protocol layer.

Every test feeds hostile bytes to a real state machine and requires a *typed*
error (a SessionError subclass) and no delivered data; nothing else may escape.
Every test runs in both frame protection modes (``mode`` is ``"mac"`` or ``"aead"``).
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_session import (
    AuthenticationError,
    CloseCode,
    FrameError,
    IntegrityError,
    KeyRegistry,
    RemoteProtocolError,
    SequenceError,
    SessionConfig,
    SessionError,
)
from trio_session.protocol import (
    ClientConnection,
    CloseReceived,
    ConnectionState,
    HandshakeComplete,
    HelloReceived,
    MessagesReceived,
    VenueConnection,
)
from trio_session.protocol._wire import (
    HEADER,
    MODES,
    FrameType,
    Rekey,
    encode_body,
    pack_header,
)

from .. import forge
from .helpers import OTHER, PARTICIPANT, VENUE, Link, handshake, pump

pytestmark = pytest.mark.parametrize("mode", MODES)


def _cfg(mode: str, **kwargs: Any) -> SessionConfig:
    """Both ends' settings: the participant offers only ``mode``, so the venue picks it."""
    return SessionConfig(modes=(mode,), **kwargs)


def _feed_expecting_typed_error(
    conn: ClientConnection | VenueConnection, frame: bytes
) -> SessionError | None:
    """Feed ``frame``; return the typed error, or None if it was accepted.

    Any exception that is not a SessionError fails the test.
    """
    try:
        events = conn.receive_data(frame)
    except SessionError as exc:
        assert conn.state is ConnectionState.ERROR
        return exc
    assert not any(isinstance(e, MessagesReceived) for e in events)
    return None


def _open_pair(mode: str) -> tuple[ClientConnection, VenueConnection]:
    p, v, _, _ = handshake(_cfg(mode))
    assert p.mode == v.mode == mode
    return p, v


# -- fuzzing ------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_arbitrary_bytes_to_venue_before_handshake(mode: str, data: bytes) -> None:
    v = VenueConnection(VENUE, _cfg(mode))
    try:
        events = v.receive_data(data)
    except SessionError:
        return
    # Only a syntactically valid ClientHello may be accepted, and it only yields HelloReceived.
    assert [type(e).__name__ for e in events] == ["HelloReceived"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_to_participant_before_handshake(mode: str, data: bytes) -> None:
    p = ClientConnection(PARTICIPANT, VENUE.public_key, _cfg(mode))
    try:
        events = p.receive_data(data)
    except SessionError:
        return
    # A well-formed REJECT is the only unauthenticated input that yields an event.
    assert all(isinstance(e, CloseReceived) for e in events)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(["p", "v"]))
def test_arbitrary_bytes_to_open_connection(mode: str, data: bytes, side: str) -> None:
    p, v = _open_pair(mode)
    conn = p if side == "p" else v
    assert _feed_expecting_typed_error(conn, data) is not None


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 7), st.sampled_from(["data", "hello", "m2", "m3"]))
def test_flipped_bit_anywhere_is_rejected(mode: str, pos: int, bit: int, which: str) -> None:
    if which == "data":
        p, v = _open_pair(mode)
        frame = bytearray(p.send_data([b"order-1", b"order-2"]))
        frame[pos % len(frame)] ^= 1 << bit
        assert _feed_expecting_typed_error(v, bytes(frame)) is not None
        return
    p = ClientConnection(PARTICIPANT, VENUE.public_key, _cfg(mode))
    v = VenueConnection(VENUE, _cfg(mode))
    (m1,) = p.data_to_send()
    if which == "hello":
        m1 = _flip(m1, pos, bit)
    try:
        v.receive_data(m1)
        v.accept(PARTICIPANT.public_key)
        (m2,) = v.data_to_send()
        if which == "m2":
            m2 = _flip(m2, pos, bit)
        p.receive_data(m2)
        (m3,) = p.data_to_send()
        if which == "m3":
            m3 = _flip(m3, pos, bit)
        v.receive_data(m3)
    except SessionError:
        return
    pytest.fail("a tampered handshake completed on both sides")


def _flip(frame: bytes, pos: int, bit: int) -> bytes:
    b = bytearray(frame)
    b[pos % len(b)] ^= 1 << bit
    return bytes(b)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2000))
def test_truncated_frames_are_rejected(mode: str, cut: int) -> None:
    p, v = _open_pair(mode)
    frame = p.send_data([b"x" * 50, b"y" * 50])
    cut %= len(frame)
    assert isinstance(_feed_expecting_typed_error(v, frame[:cut]), (FrameError, IntegrityError))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=2, max_size=6, unique=True))
def test_reordered_frames_are_rejected(mode: str, order: list[int]) -> None:
    p, v = _open_pair(mode)
    frames = [p.send_data([b"m%d" % i]) for i in range(6)]
    if order == sorted(order) and order[0] == 0 and order == list(range(len(order))):
        order = [1, 0]
    for i, idx in enumerate(order):
        if idx != i:
            assert isinstance(_feed_expecting_typed_error(v, frames[idx]), SequenceError)
            return
        v.receive_data(frames[idx])
    pytest.fail("expected a reordering")  # pragma: no cover


# -- named attacks (docs/security.md, "What each mechanism stops") -------------------


def test_attack_replay_of_data_frame_on_same_connection(mode: str) -> None:
    p, v = _open_pair(mode)
    frame = p.send_data([b"buy 100"])
    assert v.receive_data(frame) == [MessagesReceived(0, [b"buy 100"])]
    assert isinstance(_feed_expecting_typed_error(v, frame), SequenceError)


def test_attack_replay_of_control_frame(mode: str) -> None:
    p, v = _open_pair(mode)
    p.request_rekey()
    (req,) = p.data_to_send()
    v.receive_data(req)
    assert isinstance(_feed_expecting_typed_error(v, req), SequenceError)


def test_attack_replay_into_another_session(mode: str) -> None:
    p1, _v1 = _open_pair(mode)
    _p2, v2 = _open_pair(mode)
    frame = p1.send_data([b"buy 100"])
    assert isinstance(_feed_expecting_typed_error(v2, frame), IntegrityError)


def test_attack_replay_into_resumed_connection_of_same_session(mode: str) -> None:
    link = Link(_cfg(mode))
    link.p.request_rekey()
    (captured,) = link.p.data_to_send()  # control seq 0 of the old connection
    link.cut_and_resume()
    # Same session, and control seq 0 is what the new connection expects, but
    # the resumed connection has fresh keys.
    assert isinstance(_feed_expecting_typed_error(link.v, captured), IntegrityError)


def test_attack_drop_creates_gap(mode: str) -> None:
    p, v = _open_pair(mode)
    p.send_data([b"a"])
    frame2 = p.send_data([b"b"])
    assert isinstance(_feed_expecting_typed_error(v, frame2), SequenceError)


def test_attack_injection_with_wrong_tag(mode: str) -> None:
    p, v = _open_pair(mode)
    genuine = p.send_data([b"buy 100"])
    forged = forge.change_body_tail(genuine, b"100", b"999")[:-16] + bytes(16)
    assert isinstance(_feed_expecting_typed_error(v, forged), IntegrityError)
    p2, v2 = _open_pair(mode)
    genuine2 = p2.send_data([b"buy 100"])
    modified = forge.change_body_tail(genuine2, b"100", b"999")
    assert modified != genuine2
    assert isinstance(_feed_expecting_typed_error(v2, modified), IntegrityError)


def test_attack_reflection_of_own_frames(mode: str) -> None:
    p, _v = _open_pair(mode)
    frame = p.send_data([b"buy 100"])
    assert isinstance(_feed_expecting_typed_error(p, frame), IntegrityError)
    p.request_rekey()


def test_attack_reflection_of_venue_frames(mode: str) -> None:
    _p, v = _open_pair(mode)
    frame = v.send_data([b"fill"])
    assert isinstance(_feed_expecting_typed_error(v, frame), IntegrityError)


def test_attack_mitm_substitutes_venue_ephemeral(mode: str) -> None:
    mitm = VenueConnection(OTHER, _cfg(mode))
    p = ClientConnection(PARTICIPANT, VENUE.public_key, _cfg(mode))
    pump(p, mitm)
    mitm.accept(PARTICIPANT.public_key)
    with pytest.raises(AuthenticationError):
        pump(mitm, p)


def test_attack_identity_misbinding_wrong_participant_key(mode: str) -> None:
    # OTHER claims PARTICIPANT's key_id: the venue verifies against the registered key.
    p = ClientConnection(OTHER, VENUE.public_key, _cfg(mode))
    v = VenueConnection(VENUE, _cfg(mode))
    pump(p, v)
    v.accept(PARTICIPANT.public_key)  # registry lookup by key_id gives the real key
    pump(v, p)
    with pytest.raises(AuthenticationError) as info:
        pump(p, v)
    assert info.value.code is CloseCode.AUTH_FAILED


def test_attack_version_downgrade_in_hello_is_refused(mode: str) -> None:
    p = ClientConnection(PARTICIPANT, VENUE.public_key, _cfg(mode))
    (m1,) = p.data_to_send()
    downgraded = m1.replace(b"\xa3ver\x91\x01", b"\xa3ver\x91\x00")
    assert downgraded != m1
    v = VenueConnection(VENUE, _cfg(mode))
    with pytest.raises(AuthenticationError) as info:
        v.receive_data(downgraded)
    assert info.value.code is CloseCode.VERSION_MISMATCH


def test_attack_mode_downgrade_in_server_hello_breaks_signature(mode: str) -> None:
    # Both modes offered, the venue chose ``mode``; the attacker rewrites the choice.
    other = next(m for m in MODES if m != mode)
    p = ClientConnection(PARTICIPANT, VENUE.public_key, SessionConfig(modes=(mode, other)))
    v = VenueConnection(VENUE, SessionConfig())
    pump(p, v)
    v.accept(PARTICIPANT.public_key)
    (m2,) = v.data_to_send()
    tampered = _reencode_body(m2, "mode", other, trailer=80)
    with pytest.raises(AuthenticationError) as info:
        p.receive_data(tampered)
    assert info.value.code is CloseCode.AUTH_FAILED


def test_attack_aead_stripped_from_the_offer_breaks_signature(mode: str) -> None:
    """Downgrade in transit: "aead" removed from M1; the venue signs what it saw, the
    participant verifies over what it sent (docs/protocol.md, "Mode negotiation")."""
    p = ClientConnection(PARTICIPANT, VENUE.public_key, SessionConfig(modes=("aead", "mac")))
    (m1,) = p.data_to_send()
    stripped = _reencode_body(m1, "modes", ["mac"])
    v = VenueConnection(VENUE, _cfg(mode))  # a venue that accepts only ``mode``
    if mode == "aead":
        # A venue that requires "aead" refuses what is left of the offer.
        with pytest.raises(AuthenticationError) as refused:
            v.receive_data(stripped)
        assert refused.value.code is CloseCode.VERSION_MISMATCH
        return
    v.receive_data(stripped)
    v.accept(PARTICIPANT.public_key)
    (m2,) = v.data_to_send()
    with pytest.raises(AuthenticationError) as info:
        p.receive_data(m2)
    assert info.value.code is CloseCode.AUTH_FAILED
    assert p.mode is None  # never opened, in any mode


def _reencode_body(frame: bytes, key: str, value: object, trailer: int = 0) -> bytes:
    """A handshake frame with one field of its body (a msgpack map) replaced."""
    end = len(frame) - trailer
    body = msgspec.msgpack.decode(frame[14:end])
    assert key in body and body[key] != value
    body[key] = value
    return frame[:14] + msgspec.msgpack.encode(body) + frame[end:]


def test_attack_handshake_replay_to_new_venue_connection(mode: str) -> None:
    p = ClientConnection(PARTICIPANT, VENUE.public_key, _cfg(mode))
    v = VenueConnection(VENUE, _cfg(mode))
    (m1,) = p.data_to_send()
    v.receive_data(m1)
    v.accept(PARTICIPANT.public_key)
    p.receive_data(v.data_to_send()[0])
    (m3,) = p.data_to_send()
    v.receive_data(m3)
    # The attacker replays the captured M1 and M3 against a new connection.
    v2 = VenueConnection(VENUE, _cfg(mode))
    v2.receive_data(m1)
    v2.accept(PARTICIPANT.public_key)
    v2.data_to_send()
    with pytest.raises(AuthenticationError):
        v2.receive_data(m3)


def test_attack_resume_with_captured_binder_is_single_use(mode: str) -> None:
    link = Link(_cfg(mode))
    link.send("p", [b"x"])
    link.flush()
    state = link.p_state
    # The participant resumes; an attacker captures its resume ClientHello.
    p2 = ClientConnection(PARTICIPANT, VENUE.public_key, _cfg(mode), resume=state)
    (captured_m1,) = p2.data_to_send()
    v2 = VenueConnection(VENUE, _cfg(mode))
    v2.receive_data(captured_m1)
    v2.accept(PARTICIPANT.public_key, link.v_state)
    p2.receive_data(v2.data_to_send()[0])
    for f in p2.data_to_send():
        v2.receive_data(f)
    assert v2.state is ConnectionState.OPEN
    # Replaying the captured binder later is detected as reuse and kills the session.
    v3 = VenueConnection(VENUE, _cfg(mode))
    (_ev,) = v3.receive_data(captured_m1)
    assert link.v_state is not None
    with pytest.raises(AuthenticationError) as info:
        v3.accept(PARTICIPANT.public_key, link.v_state)
    assert info.value.code is CloseCode.BINDER_REUSED
    # The replay cannot complete M3, so the session is left alone: the genuine
    # participant still resumes it.
    assert not link.v_state.compromised
    link.p_state = p2.session
    link.cut_and_resume()
    link.send("p", [b"still here"])
    link.flush()
    assert link.received["v"][-1] == b"still here"


def test_attack_resume_from_another_identity(mode: str) -> None:
    link = Link(_cfg(mode))
    assert link.p_state is not None and link.v_state is not None
    # OTHER knows the session id (it travels in clear without TLS) and forges a resume.
    forged = ClientConnection(OTHER, VENUE.public_key, _cfg(mode), resume=None)
    (m1,) = forged.data_to_send()
    v = VenueConnection(VENUE, _cfg(mode))
    (hello,) = v.receive_data(m1)
    assert (
        isinstance(hello, HelloReceived) and hello.resume_session_id is None
    )  # it cannot even form a binder
    # With a stolen participant state but its own key id, the venue refuses to resume:
    # the registry lookup for OTHER's key id fails before anything else.
    registry = KeyRegistry()
    registry.add(PARTICIPANT.key_id, PARTICIPANT.public_key)
    with pytest.raises(AuthenticationError) as info:
        registry.lookup(OTHER.key_id)
    assert info.value.code is CloseCode.UNKNOWN_KEY
    # And a session belonging to another key id is never handed over: fresh session.
    p_other = ClientConnection(OTHER, VENUE.public_key, _cfg(mode))
    v2 = VenueConnection(VENUE, _cfg(mode))
    pump(p_other, v2)
    v2.accept(OTHER.public_key, link.v_state)
    (done,) = pump(v2, p_other)
    assert isinstance(done, HandshakeComplete) and not done.resumed
    assert done.session_id != link.v_state.session_id


def test_attack_frame_under_stale_epoch_after_switch(mode: str) -> None:
    p, v = _open_pair(mode)
    old_epoch_frame = p.send_data([b"a"])
    v.receive_data(old_epoch_frame)
    v.messages_consumed(1)
    p.ratchet()
    v.receive_data(p.send_data([b"b"]))  # epoch 1 now; epoch 0 key deleted
    # Re-seal a frame under the old epoch number with a correct seq: the key is gone.
    stale = bytearray(p.send_data([b"c"]))
    struct.pack_into("!I", stale, 2, 0)
    assert isinstance(_feed_expecting_typed_error(v, bytes(stale)), IntegrityError)


def test_attack_frame_from_future_epoch(mode: str) -> None:
    p, v = _open_pair(mode)
    frame = bytearray(p.send_data([b"a"]))
    struct.pack_into("!I", frame, 2, 7)
    assert isinstance(_feed_expecting_typed_error(v, bytes(frame)), IntegrityError)


def test_attack_unknown_and_revoked_key_id_are_rejected_before_crypto(mode: str) -> None:
    registry = KeyRegistry()
    registry.add(PARTICIPANT.key_id, PARTICIPANT.public_key)
    registry.add(OTHER.key_id, OTHER.public_key)
    registry.revoke(OTHER.key_id)
    for ident, code in ((OTHER, CloseCode.KEY_REVOKED), (VENUE, CloseCode.UNKNOWN_KEY)):
        p = ClientConnection(ident, VENUE.public_key, _cfg(mode))
        v = VenueConnection(VENUE, _cfg(mode))
        (hello,) = pump(p, v)
        assert isinstance(hello, HelloReceived)
        with pytest.raises(AuthenticationError) as info:
            registry.lookup(hello.key_id)
        assert info.value.code is code
        v.close(info.value.code, "key refused")
        (ev,) = pump(v, p)
        assert isinstance(ev, CloseReceived) and ev.code is code
        err = ev.to_error()
        assert isinstance(err, AuthenticationError) and err.remote


def test_attack_oversized_frame_rejected_before_decoding(mode: str) -> None:
    cfg = _cfg(mode, max_frame_size=4096, max_message_size=1024, max_batch_bytes=2048)
    _p, v, _, _ = handshake(cfg)
    huge = pack_header(FrameType.DATA, 0, 0, 0) + b"\x93" + b"\x00" * 5000
    err = _feed_expecting_typed_error(v, huge)
    assert isinstance(err, FrameError) and "max_frame_size" in str(err)
    v2 = VenueConnection(VENUE, cfg)
    assert isinstance(_feed_expecting_typed_error(v2, b"\x01" + b"\x00" * 5000), FrameError)


def test_attack_msgpack_size_bomb_in_body(mode: str) -> None:
    # A body claiming a 2**32-element array must fail cleanly, not allocate.
    p = ClientConnection(PARTICIPANT, VENUE.public_key, _cfg(mode))
    bomb = pack_header(FrameType.CLIENT_HELLO, 0, 0, 0) + b"\xdd\xff\xff\xff\xff"
    v = VenueConnection(VENUE, _cfg(mode))
    assert isinstance(_feed_expecting_typed_error(v, bomb), FrameError)
    del p


def test_attack_peer_exceeds_credit_window_in_order(mode: str) -> None:
    cfg = _cfg(mode, inbound_capacity=4)
    p, v, _, _ = handshake(cfg)
    v.receive_data(p.send_data([b"a"] * 4))
    assert p.session is not None
    p.session.peer_window = 100
    err = _feed_expecting_typed_error(v, p.send_data([b"b"]))
    assert isinstance(err, RemoteProtocolError) and "window" in str(err)


def test_attack_ack_of_unsent_messages(mode: str) -> None:
    p, v = _open_pair(mode)
    # A lying venue acknowledges 50 messages never sent, in a validly sealed DATA frame.
    frame = forge.seal(v, FrameType.DATA, forge.data_body(50, 4096, [b"x"]), seq=0)
    err = _feed_expecting_typed_error(p, frame)
    assert isinstance(err, RemoteProtocolError) and "acknowledged" in str(err)


def test_unknown_frame_type_and_handshake_frames_after_open(mode: str) -> None:
    p, v = _open_pair(mode)
    assert isinstance(
        _feed_expecting_typed_error(v, HEADER.pack(0x7F, 0, 0, 0) + bytes(16)), FrameError
    )
    p2, v2 = _open_pair(mode)
    hello = pack_header(FrameType.CLIENT_HELLO, 0, 0, 0) + encode_body({"x": 1}) + bytes(16)  # type: ignore[arg-type]
    assert isinstance(_feed_expecting_typed_error(v2, hello), FrameError)
    del p, p2


def test_attack_reserved_flags_rejected(mode: str) -> None:
    p, v = _open_pair(mode)
    frame = bytearray(p.send_data([b"a"]))
    frame[1] = 0x80
    assert isinstance(_feed_expecting_typed_error(v, bytes(frame)), FrameError)


def test_attack_low_order_key_in_rekey_is_remote_error_on_receipt(mode: str) -> None:
    p, v = _open_pair(mode)
    # A REKEY carrying an all-zero (low-order) X25519 key, sealed with the venue's keys
    # and the venue's next control seq (the one the participant expects).
    bad = forge.seal_control(v, FrameType.REKEY, encode_body(Rekey(2, bytes(32))))
    err = _feed_expecting_typed_error(p, bad)
    assert isinstance(err, RemoteProtocolError) and "REKEY" in str(err)
    assert p.data_to_send() == []  # nothing half-built is left to explode in the writer
