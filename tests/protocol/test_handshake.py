"""The handshake machines on their own (M1-M3, binders, REJECT), then back to back
through connections."""

from __future__ import annotations

import os

import pytest

from trio_session import (
    AuthenticationError,
    CloseCode,
    FrameError,
    LocalProtocolError,
    SessionConfig,
)
from trio_session.protocol import (
    ClientConnection,
    CloseReceived,
    ConnectionState,
    HandshakeComplete,
    HelloReceived,
    Role,
    SessionRecord,
    VenueConnection,
)
from trio_session.protocol._handshake import (
    ClientHandshake,
    HandshakeResult,
    HandshakeState,
    VenueHandshake,
    parse_reject,
)

from .helpers import PARTICIPANT, VENUE, Link, current, handshake, pump

CONFIG = SessionConfig()


def _wall() -> int:
    return 1_790_000_000_000


def _machines(
    resume: SessionRecord | None = None,
) -> tuple[ClientHandshake, VenueHandshake]:
    client = ClientHandshake(PARTICIPANT, VENUE.public_key, CONFIG, resume, os.urandom)
    venue = VenueHandshake(VENUE, CONFIG, os.urandom, _wall)
    return client, venue


def _run(
    client: ClientHandshake, venue: VenueHandshake, session: SessionRecord | None = None
) -> tuple[HandshakeResult, HandshakeResult]:
    hello = venue.receive(client.hello_frame)
    assert isinstance(hello, HelloReceived)
    m2 = venue.accept(PARTICIPANT.public_key, session)
    client_result = client.receive(m2)
    assert isinstance(client_result, HandshakeResult)
    venue_result = venue.receive(client_result.reply)
    assert isinstance(venue_result, HandshakeResult)
    return client_result, venue_result


def test_machines_walk_their_states_and_agree_on_keys() -> None:
    client, venue = _machines()
    assert current(client.state) is HandshakeState.AWAITING_SERVER_HELLO
    assert current(venue.state) is HandshakeState.AWAITING_HELLO
    hello = venue.receive(client.hello_frame)
    assert hello == HelloReceived(PARTICIPANT.key_id, None)
    assert current(venue.state) is HandshakeState.AWAITING_ACCEPT
    with pytest.raises(LocalProtocolError, match="accept"):
        venue.receive(client.hello_frame)  # the application has not decided yet
    m2 = venue.accept(PARTICIPANT.public_key, None)
    assert current(venue.state) is HandshakeState.AWAITING_FINISH
    c = client.receive(m2)
    assert isinstance(c, HandshakeResult) and current(client.state) is HandshakeState.COMPLETE
    v = venue.receive(c.reply)
    assert isinstance(v, HandshakeResult) and current(venue.state) is HandshakeState.COMPLETE
    assert (c.kx_c2v, c.kx_v2c, c.th) == (v.kx_c2v, v.kx_v2c, v.th)
    assert c.record.session_id == v.record.session_id and len(c.th) == 32
    assert (c.record.role, v.record.role) == (Role.PARTICIPANT, Role.VENUE)
    assert not (c.resumed or v.resumed or c.resume_requested) and c.new_gen == v.new_gen == 0
    assert c.heartbeat_ms == (1000, 10000)  # the defaults, dictated by the venue
    assert c.th.hex() not in repr(c)


def test_a_resume_is_accepted_with_a_held_generation_and_mixes_in_its_secret() -> None:
    old_c, old_v = _run(*_machines())
    p_record, v_record = old_c.record, old_v.record
    p_record.install_resume_secret(0, b"R" * 32, keep_previous=False)
    v_record.install_resume_secret(0, b"R" * 32, keep_previous=False)
    client, venue = _machines(resume=p_record)
    c, v = _run(client, venue, v_record)
    assert c.resumed and v.resumed and client.resumed and venue.resumed
    assert c.record is p_record and v.record is v_record
    assert c.resume_k == v.resume_k == b"R" * 32
    assert (c.accepted_gen, c.new_gen, v.new_gen) == (0, 1, 1)


def test_binders_are_checked_and_a_spent_one_is_reported_as_reuse() -> None:
    old_c, old_v = _run(*_machines())
    old_c.record.install_resume_secret(0, b"R" * 32, keep_previous=False)
    old_v.record.install_resume_secret(0, b"X" * 32, keep_previous=False)  # does not match
    client, venue = _machines(resume=old_c.record)
    venue.receive(client.hello_frame)
    with pytest.raises(AuthenticationError) as info:
        venue.accept(PARTICIPANT.public_key, old_v.record)
    assert info.value.code is CloseCode.AUTH_FAILED
    old_v.record.install_resume_secret(1, b"Y" * 32, keep_previous=False)  # R is not spent...
    old_v.record.spent_secrets.append(b"R" * 32)  # ...until it is
    client, venue = _machines(resume=old_c.record)
    venue.receive(client.hello_frame)
    with pytest.raises(AuthenticationError) as info:
        venue.accept(PARTICIPANT.public_key, old_v.record)
    assert info.value.code is CloseCode.BINDER_REUSED


def test_the_venue_never_hands_a_session_to_another_key_or_a_compromised_one() -> None:
    old_c, old_v = _run(*_machines())
    old_c.record.install_resume_secret(0, b"R" * 32, keep_previous=False)
    old_v.record.install_resume_secret(0, b"R" * 32, keep_previous=False)
    old_v.record.compromised = True
    c, v = _run(*_machines(resume=old_c.record), old_v.record)
    assert not (c.resumed or v.resumed) and c.resume_requested
    assert c.record.session_id != old_c.record.session_id


def test_reject_is_the_venues_alone_and_parses_back() -> None:
    client, venue = _machines()
    assert client.reject(CloseCode.NORMAL, "", None) == []
    venue.receive(client.hello_frame)
    (frame,) = venue.reject(CloseCode.RATE_LIMITED, "slow down", 1500)
    assert current(venue.state) is HandshakeState.REFUSED
    assert parse_reject(frame) == CloseReceived(CloseCode.RATE_LIMITED, "slow down", 1.5)
    event = client.receive(frame)
    assert event == CloseReceived(CloseCode.RATE_LIMITED, "slow down", 1.5)
    assert current(client.state) is HandshakeState.REFUSED
    with pytest.raises(FrameError, match="non-zero"):
        parse_reject(frame[:5] + b"\x01" + frame[6:])


def test_frames_after_an_early_close_are_refused_except_a_reject() -> None:
    client, venue = _machines()
    (reject,) = venue.reject(CloseCode.UNKNOWN_KEY, "who?", None)
    assert client.receive_after_close(reject).code is CloseCode.UNKNOWN_KEY
    with pytest.raises(FrameError, match="after the handshake"):
        venue.receive_after_close(client.hello_frame + bytes(16))
    with pytest.raises(FrameError, match="too short"):
        venue.receive_after_close(b"\x10")


def test_hello_checks_come_before_any_public_key_operation() -> None:
    client, venue = _machines()
    m1 = client.hello_frame
    for bad, match in (
        (m1[:1] + b"\x03" + m1[2:], "binders"),  # 3 binders announced
        (m1[:2] + b"\x00\x00\x00\x01" + m1[6:], "non-zero"),  # epoch set
        (b"\x03" + m1[1:], "expected CLIENT_HELLO"),
    ):
        with pytest.raises(FrameError, match=match):
            VenueHandshake(VENUE, CONFIG, os.urandom, _wall).receive(bad)
    assert current(venue.state) is HandshakeState.AWAITING_HELLO


def test_handshake_completes_with_matching_sessions() -> None:
    p, v, pe, ve = handshake()
    assert current(p.state) is ConnectionState.OPEN and current(v.state) is ConnectionState.OPEN
    assert p.session_id == v.session_id and p.session_id is not None and len(p.session_id) == 16
    assert pe == [HandshakeComplete(p.session_id, False, False, 0, 0)]
    assert ve == [HandshakeComplete(p.session_id, False, False, 0, 0)]
    assert p.epochs == v.epochs == (0, 0)
    assert p.heartbeat_interval == SessionConfig().heartbeat_interval


def test_participant_adopts_venue_heartbeat_settings() -> None:
    cfg_v = SessionConfig(heartbeat_interval=1.0, heartbeat_timeout=3.0)
    p = ClientConnection(PARTICIPANT, VENUE.public_key, SessionConfig())
    v = VenueConnection(VENUE, cfg_v)
    pump(p, v)
    v.accept(PARTICIPANT.public_key)
    pump(v, p)
    assert (p.heartbeat_interval, p.heartbeat_timeout) == (1.0, 3.0)


def test_fresh_session_when_venue_lost_state_reports_abandoned_messages() -> None:
    link = Link(SessionConfig())
    link.send("p", [b"x", b"y"])  # never delivered
    state = link.p_state
    p = ClientConnection(PARTICIPANT, VENUE.public_key, SessionConfig(), resume=state)
    v = VenueConnection(VENUE, SessionConfig())
    pump(p, v)
    v.accept(PARTICIPANT.public_key, None)  # venue restarted: no such session
    (ev,) = pump(v, p)
    assert isinstance(ev, HandshakeComplete)
    assert ev.resume_requested and not ev.resumed and ev.abandoned == 2
    assert p.session is not state and p.session_id != (state.session_id if state else None)


def test_reject_before_keys_reaches_participant_as_typed_error() -> None:
    p = ClientConnection(PARTICIPANT, VENUE.public_key, SessionConfig())
    v = VenueConnection(VENUE, SessionConfig())
    pump(p, v)
    v.close(CloseCode.RATE_LIMITED, "slow down", retry_after=2.5)
    (ev,) = pump(v, p)
    assert isinstance(ev, CloseReceived)
    err = ev.to_error()
    assert err.code is CloseCode.RATE_LIMITED and getattr(err, "retry_after", None) == 2.5


def test_wrong_pinned_venue_key_fails_authentication_on_participant() -> None:
    p = ClientConnection(PARTICIPANT, PARTICIPANT.public_key, SessionConfig())
    v = VenueConnection(VENUE, SessionConfig())
    pump(p, v)
    v.accept(PARTICIPANT.public_key)
    with pytest.raises(AuthenticationError) as info:
        pump(v, p)
    assert info.value.code is CloseCode.AUTH_FAILED
    assert current(p.state) is ConnectionState.ERROR


def test_resume_survives_lost_client_finish() -> None:
    # The participant processed M2 (new resume secret) but M3 never reached the venue.
    link = Link(SessionConfig())
    link.send("p", [b"a"])
    link.flush()
    p2 = ClientConnection(PARTICIPANT, VENUE.public_key, SessionConfig(), resume=link.p_state)
    v2 = VenueConnection(VENUE, SessionConfig())
    pump(p2, v2)
    v2.accept(PARTICIPANT.public_key, link.v_state)
    pump(v2, p2)
    p2.data_to_send()  # M3 lost with the connection
    link.p_state = p2.session
    link.cut_and_resume()  # resumes again with the secret the venue still holds
    link.send("p", [b"b"])
    link.flush()
    assert link.received["v"] == [b"a", b"b"]


def test_reject_after_server_hello_is_understood_by_participant() -> None:
    p = ClientConnection(PARTICIPANT, VENUE.public_key, SessionConfig())
    v = VenueConnection(VENUE, SessionConfig())
    pump(p, v)
    v.accept(VENUE.public_key)  # wrong registered key: M3 will not verify
    pump(v, p)
    assert current(p.state) is ConnectionState.OPEN
    with pytest.raises(AuthenticationError) as info:
        pump(p, v)
    v.close(info.value.code, "bad signature")
    (ev,) = pump(v, p)
    assert isinstance(ev, CloseReceived) and ev.code is CloseCode.AUTH_FAILED
