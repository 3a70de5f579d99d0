"""The sans-IO protocol back to back: handshake, data, key epochs, resume, timers."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_session import (
    AuthenticationError,
    CloseCode,
    HeartbeatTimeout,
    LocalProtocolError,
    RekeyTimeout,
    SequenceError,
    SessionConfig,
)
from trio_session.protocol import (
    ClientConnection,
    CloseReceived,
    ConnectionState,
    HandshakeComplete,
    HeartbeatAcked,
    MessagesReceived,
    VenueConnection,
)
from trio_session.protocol._wire import FLAG_PROBE, FrameType, parse_header

from .protocol_helpers import PARTICIPANT, VENUE, FakeClock, Link, handshake, pump


def _payloads(prefix: bytes, start: int, n: int) -> list[bytes]:
    return [prefix + b"%08d" % i for i in range(start, start + n)]


def test_handshake_completes_with_matching_sessions() -> None:
    p, v, pe, ve = handshake()
    assert p.state is ConnectionState.OPEN and v.state is ConnectionState.OPEN
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


def test_100k_messages_each_way_across_tier1_and_tier2_epochs() -> None:
    cfg = SessionConfig(ratchet_messages=40, inbound_capacity=2048, outbound_capacity=2048)
    link = Link(cfg)
    total = 100_000
    sent = {"p": 0, "v": 0}
    step = 0
    while sent["p"] < total or sent["v"] < total:
        step += 1
        for side, prefix in (("p", b"c2v"), ("v", b"v2c")):
            batch = 1 + (step * 7 + (side == "v") * 13) % 64
            batch = min(batch, total - sent[side])
            if batch:
                sent[side] += link.send(side, _payloads(prefix, sent[side], batch))
        if step % 300 == 0:
            link.v.start_rekey()
        link.deliver(to_v=3, to_p=3)
    link.flush()
    link.clock.advance(0.02)  # the delayed-ack timer fires
    link.flush()
    assert link.received["v"] == _payloads(b"c2v", 0, total)
    assert link.received["p"] == _payloads(b"v2c", 0, total)
    for conn in (link.p, link.v):
        assert conn.stats.rekeys >= 5, conn.stats
        assert conn.stats.ratchets >= 50, conn.stats
        tx_epoch, rx_epoch = conn.epochs
        assert tx_epoch >= 55 and rx_epoch >= 55
    # acknowledgements trimmed the replay buffers completely
    assert link.p.session is not None and link.v.session is not None
    assert link.p.session.replay_messages == link.v.session.replay_messages == 0


# A schedule of operations for the property test below.
_op = st.one_of(
    st.tuples(st.just("send_p"), st.integers(1, 40)),
    st.tuples(st.just("send_v"), st.integers(1, 40)),
    st.tuples(st.just("deliver"), st.tuples(st.integers(0, 5), st.integers(0, 5))),
    st.tuples(st.just("rekey"), st.just(0)),
    st.tuples(st.just("ratchet"), st.just(0)),
    st.tuples(st.just("cut"), st.just(0)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_op, min_size=1, max_size=60))
def test_resume_after_cuts_at_arbitrary_points_loses_and_duplicates_nothing(
    ops: list[tuple[str, object]],
) -> None:
    cfg = SessionConfig(ratchet_messages=5, inbound_capacity=64, replay_max_messages=128)
    link = Link(cfg)
    counters = {"p": 0, "v": 0}
    for op, arg in ops:
        if op in ("send_p", "send_v"):
            side = op[-1]
            assert isinstance(arg, int)
            prefix = b"c2v" if side == "p" else b"v2c"
            counters[side] += link.send(side, _payloads(prefix, counters[side], arg))
        elif op == "deliver":
            assert isinstance(arg, tuple)
            link.deliver(*arg)
        elif op == "rekey":
            link.collect()
            link.v.start_rekey()
        elif op == "ratchet":
            link.p.ratchet()
            link.v.ratchet()
        elif op == "cut":
            link.cut_and_resume()
    link.flush()
    # Every message sent arrives exactly once, in order, in both directions.
    assert link.received["v"] == link.sent["p"] == _payloads(b"c2v", 0, counters["p"])
    assert link.received["p"] == link.sent["v"] == _payloads(b"v2c", 0, counters["v"])


def test_resume_retransmits_by_original_sequence_number() -> None:
    link = Link(SessionConfig())
    link.send("p", [b"a", b"b"])
    link.flush()
    link.send("p", [b"c"])
    link.send("p", [b"d"])
    link.cut_and_resume()
    link.flush()
    assert link.received["v"] == [b"a", b"b", b"c", b"d"]
    assert link.p.stats.retransmitted == 2
    assert link.v.session is not None and link.v.session.next_rx_seq == 4


def test_resume_survives_cut_between_rekey_and_rekey_ack_both_ways() -> None:
    # Cut after the participant built REKEY_ACK but before the venue saw it:
    # the participant must offer both resume generations.
    link = Link(SessionConfig())
    link.v.start_rekey()
    link.collect()
    link.deliver(to_v=0, to_p=1)  # REKEY reaches the participant
    link.collect()  # REKEY_ACK built, never delivered
    assert link.p.session is not None and len(link.p.session.resume_secrets) == 2
    link.cut_and_resume()
    link.send("p", [b"after"])
    link.flush()
    assert link.received["v"] == [b"after"]
    # Cut after the venue processed REKEY_ACK but before its new-epoch frame arrived.
    link.v.start_rekey()
    link.collect()
    link.deliver(to_v=0, to_p=1)
    link.collect()
    link.deliver(to_v=1, to_p=0)
    link.cut_and_resume()
    link.send("v", [b"again"])
    link.flush()
    assert link.received["p"] == [b"again"]


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


def test_flow_control_stops_sender_at_window_and_resumes_on_consumption() -> None:
    cfg = SessionConfig(inbound_capacity=8)
    p, v, _, _ = handshake(cfg)
    assert p.send_window() == 8
    frame = p.send_data([b"m"] * 8)
    assert p.send_window() == 0
    with pytest.raises(LocalProtocolError):
        p.send_data([b"over"])
    (ev,) = v.receive_data(frame)
    assert isinstance(ev, MessagesReceived) and len(ev.payloads) == 8
    assert v.messages_consumed(8) is True  # an ACK with more credit is due
    pump(v, p)
    assert p.send_window() == 8
    assert p.session is not None and p.session.replay_messages == 0


def test_replay_buffer_limit_is_backpressure_not_loss() -> None:
    clock = FakeClock()
    cfg = SessionConfig(inbound_capacity=100, replay_max_messages=10)
    p, v, _, _ = handshake(cfg, clock=clock)
    assert p.send_window() == 10
    frame = p.send_data([b"m"] * 10)
    assert p.send_window() == 0
    v.receive_data(frame)
    v.messages_consumed(10)
    assert not v.has_pending_control()  # below the ack threshold: delayed ack
    assert v.heartbeat_deadline() == pytest.approx(0.02)
    clock.advance(0.02)
    pump(v, p)
    assert p.send_window() == 10


def test_heartbeat_when_idle_and_rtt_measured() -> None:
    clock = FakeClock()
    cfg = SessionConfig(heartbeat_interval=1.0, heartbeat_timeout=3.0, heartbeat_jitter=0.0)
    p, v, _, _ = handshake(cfg, clock=clock)
    assert p.data_to_send() == []
    assert p.heartbeat_deadline() == pytest.approx(1.0)
    clock.advance(1.0)
    assert p.has_pending_control()
    frames = p.data_to_send()
    assert [parse_header(f)[0] for f in frames] == [FrameType.HEARTBEAT]
    for f in frames:
        v.receive_data(f)
    clock.advance(0.25)
    events = pump(v, p)
    assert events == [HeartbeatAcked(0.25)]
    assert p.stats.last_rtt == 0.25


def test_silent_peer_gets_probe_then_heartbeat_timeout() -> None:
    clock = FakeClock()
    cfg = SessionConfig(heartbeat_interval=1.0, heartbeat_timeout=3.0, heartbeat_jitter=0.0)
    p, _v, _, _ = handshake(cfg, clock=clock)
    clock.advance(1.0)
    (probe,) = p.data_to_send()
    assert parse_header(probe)[:2] == (FrameType.HEARTBEAT, FLAG_PROBE)
    p.handle_heartbeat_timer()  # not dead yet
    assert p.heartbeat_deadline() == pytest.approx(2.0)  # next idle beat
    clock.advance(1.0)
    (beat,) = p.data_to_send()
    assert parse_header(beat)[:2] == (FrameType.HEARTBEAT, 0)  # one probe outstanding only
    clock.advance(1.0)
    assert p.heartbeat_deadline() <= clock.now
    with pytest.raises(HeartbeatTimeout):
        p.handle_heartbeat_timer()
    assert p.state is ConnectionState.ERROR


def test_only_the_participant_beats_on_an_idle_link_with_jittered_intervals() -> None:
    # DESIGN "Targets": idle links cost one HEARTBEAT + one HEARTBEAT_ACK per
    # interval (not two of each), and beats of many sessions spread out.
    clock = FakeClock()
    cfg = SessionConfig(heartbeat_interval=1.0, heartbeat_timeout=3.0, heartbeat_jitter=0.2)
    p, v, _, _ = handshake(cfg, clock=clock)
    beats_at: list[float] = []
    venue_types: list[FrameType] = []
    for _ in range(2000):  # 20 s in 10 ms steps
        clock.advance(0.01)
        v.handle_heartbeat_timer()
        p.handle_heartbeat_timer()
        for f in p.data_to_send():
            if parse_header(f)[0] is FrameType.HEARTBEAT:
                beats_at.append(clock.now)
            v.receive_data(f)
        for f in v.data_to_send():
            venue_types.append(parse_header(f)[0])
            p.receive_data(f)
    gaps = [b - a for a, b in itertools.pairwise(beats_at)]
    assert venue_types and set(venue_types) == {FrameType.HEARTBEAT_ACK}
    assert len(venue_types) == len(beats_at)
    assert all(0.8 - 0.011 <= g <= 1.0 + 0.011 for g in gaps), gaps
    assert max(gaps) - min(gaps) >= 0.05  # jittered, not a fixed period
    assert p.stats.last_rtt is not None and v.stats.heartbeats_sent == 0


def test_venue_probes_a_silent_participant_half_way_to_the_timeout() -> None:
    clock = FakeClock()
    cfg = SessionConfig(heartbeat_interval=1.0, heartbeat_timeout=3.0)
    _p, v, _, _ = handshake(cfg, clock=clock)
    assert v.data_to_send() == []
    assert v.heartbeat_deadline() == pytest.approx(2.0)
    clock.advance(1.99)
    assert not v.has_pending_control()
    clock.advance(0.01)
    (probe,) = v.data_to_send()
    assert parse_header(probe)[:2] == (FrameType.HEARTBEAT, FLAG_PROBE)
    assert v.heartbeat_deadline() == pytest.approx(3.0)  # then only the timeout
    clock.advance(1.0)
    with pytest.raises(HeartbeatTimeout):
        v.handle_heartbeat_timer()


def test_venue_rekeys_on_time_and_fails_a_stalled_rekey() -> None:
    clock = FakeClock()
    cfg = SessionConfig(
        rekey_interval=120, reject_after=180, rekey_jitter=0.0, ratchet_interval=1000
    )
    _p, v, _, _ = handshake(cfg, clock=clock)
    assert v.rotation_deadline() == pytest.approx(120)
    clock.advance(120)
    v.handle_rotation_timer()
    frames = v.data_to_send()
    # REKEY, plus a probe: nothing was heard from the participant for 120 s
    assert [parse_header(f)[0] for f in frames] == [FrameType.REKEY, FrameType.HEARTBEAT]
    # The participant never answers: reject_after ends the session.
    assert v.rotation_deadline() == pytest.approx(180)
    clock.advance(60)
    with pytest.raises(RekeyTimeout):
        v.handle_rotation_timer()


def test_rekey_jitter_spreads_deadlines() -> None:
    cfg = SessionConfig(rekey_jitter=0.3)
    deadlines = {handshake(cfg, clock=FakeClock())[1].rotation_deadline() for _ in range(5)}
    assert len(deadlines) > 1
    assert all(20.0 <= d <= 20.3 for d in deadlines)  # ratchet_interval 20 s comes first, jittered


def test_participant_requests_rekey_when_venue_is_late() -> None:
    clock = FakeClock()
    cfg = SessionConfig(rekey_interval=60, reject_after=90, rekey_jitter=0.0, ratchet_interval=1000)
    cfg_v = SessionConfig(
        rekey_interval=600, reject_after=900, rekey_jitter=0.0, ratchet_interval=1000
    )
    p = ClientConnection(PARTICIPANT, VENUE.public_key, cfg, clock=clock)
    v = VenueConnection(VENUE, cfg_v, clock=clock)
    pump(p, v)
    v.accept(PARTICIPANT.public_key)
    pump(v, p)
    pump(p, v)
    clock.advance(60)
    p.handle_rotation_timer()
    pump(p, v)  # REKEY_REQUEST -> venue starts a rekey
    pump(v, p)  # REKEY
    pump(p, v)  # REKEY_ACK
    assert v.stats.rekeys == 1
    v.send_data([b"x"])  # not delivered: the participant has not seen the new epoch yet


def test_graceful_close_is_reported_with_code() -> None:
    p, v, _, _ = handshake()
    p.close(CloseCode.NORMAL, "bye")
    assert p.state is ConnectionState.CLOSING
    assert pump(p, v) == [CloseReceived(CloseCode.NORMAL, "bye", None)]
    assert v.state is ConnectionState.CLOSED
    assert p.send_window() == 0


def test_reject_before_keys_reaches_participant_as_typed_error() -> None:
    p = ClientConnection(PARTICIPANT, VENUE.public_key, SessionConfig())
    v = VenueConnection(VENUE, SessionConfig())
    pump(p, v)
    v.close(CloseCode.RATE_LIMITED, "slow down", retry_after=2.5)
    (ev,) = pump(v, p)
    assert isinstance(ev, CloseReceived)
    err = ev.to_error()
    assert err.code is CloseCode.RATE_LIMITED and getattr(err, "retry_after", None) == 2.5


def test_api_misuse_is_local_protocol_error() -> None:
    p = ClientConnection(PARTICIPANT, VENUE.public_key, SessionConfig())
    with pytest.raises(LocalProtocolError):
        p.send_data([b"too early"])
    v = VenueConnection(VENUE, SessionConfig())
    with pytest.raises(LocalProtocolError):
        v.accept(PARTICIPANT.public_key)
    with pytest.raises(LocalProtocolError):
        p.start_rekey()
    with pytest.raises(LocalProtocolError):
        v.request_rekey()
    p2, _v2, _, _ = handshake(SessionConfig(max_message_size=10, max_frame_size=2**20))
    with pytest.raises(LocalProtocolError):
        p2.send_data([b"x" * 11])
    with pytest.raises(LocalProtocolError):
        p2.messages_consumed(1)


def test_wrong_pinned_venue_key_fails_authentication_on_participant() -> None:
    p = ClientConnection(PARTICIPANT, PARTICIPANT.public_key, SessionConfig())
    v = VenueConnection(VENUE, SessionConfig())
    pump(p, v)
    v.accept(PARTICIPANT.public_key)
    with pytest.raises(AuthenticationError) as info:
        pump(v, p)
    assert info.value.code is CloseCode.AUTH_FAILED
    assert p.state is ConnectionState.ERROR


def test_failed_connection_refuses_further_input() -> None:
    p, _v, _, _ = handshake()
    with pytest.raises(Exception) as first:
        p.receive_data(b"\x10" + b"\x00" * 40)
    assert p.state is ConnectionState.ERROR
    with pytest.raises(LocalProtocolError):
        p.receive_data(b"anything")
    assert p.error is first.value


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
    assert p.state is ConnectionState.OPEN
    with pytest.raises(AuthenticationError) as info:
        pump(p, v)
    v.close(info.value.code, "bad signature")
    (ev,) = pump(v, p)
    assert isinstance(ev, CloseReceived) and ev.code is CloseCode.AUTH_FAILED


def test_refused_resume_does_not_inherit_old_credit() -> None:
    cfg = SessionConfig(inbound_capacity=8)
    link = Link(cfg)
    for i in range(20):
        link.send("v", [b"%d" % i])
        link.flush()
    p = ClientConnection(PARTICIPANT, VENUE.public_key, cfg, resume=link.p_state)
    v = VenueConnection(VENUE, cfg)
    pump(p, v)
    v.accept(PARTICIPANT.public_key, None)
    pump(v, p)
    pump(p, v)
    assert v.send_window() <= 8
    frame = v.send_data([b"x"] * v.send_window())
    assert isinstance(p.receive_data(frame)[0], MessagesReceived)


def test_early_rekey_request_is_deferred_not_dropped() -> None:
    clock = FakeClock()
    cfg = SessionConfig(
        rekey_interval=600, reject_after=900, rekey_jitter=0.0, ratchet_interval=1e4
    )
    p, v, _, _ = handshake(cfg, clock=clock)
    clock.advance(0.5)
    p.request_rekey()
    pump(p, v)  # REKEY_REQUEST within 1 s of the handshake's DH
    assert not v.has_pending_control()
    assert v.rotation_deadline() == pytest.approx(1.0)
    clock.advance(0.5)
    v.handle_rotation_timer()
    frames = v.data_to_send()
    assert FrameType.REKEY in [parse_header(f)[0] for f in frames]


def test_lost_data_frame_is_detected_by_the_next_heartbeat_on_an_idle_link() -> None:
    # A DATA frame vanishes (e.g. mangled into a WebSocket PONG the transport
    # ignores); no further data follows, so only the heartbeat can reveal it.
    clock = FakeClock()
    cfg = SessionConfig(heartbeat_interval=1.0, heartbeat_timeout=3.0)
    p, v, _, _ = handshake(cfg, clock=clock)
    p.send_data([b"last execution report"])  # lost on the line
    clock.advance(1.0)
    frames = p.data_to_send()
    assert [parse_header(f)[0] for f in frames] == [FrameType.HEARTBEAT]
    with pytest.raises(SequenceError, match="DATA frame was lost"):
        v.receive_data(frames[0])
