"""The channel (seal/open, epochs, control seqs) and the data flow over it, on their own,
then flow control back to back through connections."""

from __future__ import annotations

import struct

import pytest

from trio_session import (
    CloseCode,
    FrameError,
    IntegrityError,
    LocalProtocolError,
    RemoteProtocolError,
    SequenceError,
    SessionConfig,
)
from trio_session.protocol import (
    ClientConnection,
    CloseReceived,
    MessagesReceived,
    VenueConnection,
)
from trio_session.protocol._channel import FlowState, parse_close
from trio_session.protocol._wire import (
    FLAG_PROBE,
    FLAG_SYSTEM,
    Close,
    FrameType,
    RekeyRequest,
    encode_body,
    parse_header,
)

from .helpers import PARTICIPANT, VENUE, ChannelPair, FakeClock, Link, current, handshake, pump

PING = encode_body(RekeyRequest())


def test_seal_and_open_number_control_frames_and_authenticate_the_peer() -> None:
    pair = ChannelPair()
    assert current(pair.v.authenticated) is False
    frames = [pair.p.seal_control(FrameType.REKEY_REQUEST, PING) for _ in range(3)]
    assert [parse_header(f)[3] for f in frames] == [0, 1, 2]
    for i, frame in enumerate(frames):
        frame_type, flags, seq, body = pair.v.open(frame)
        assert (frame_type, flags, seq, bytes(body)) == (FrameType.REKEY_REQUEST, 0, i, PING)
    assert pair.v.authenticated and pair.v.rx_control_seq == 3


@pytest.mark.parametrize(
    ("damage", "error", "match"),
    [
        (lambda f: f[:20], FrameError, "too short"),
        (lambda f: b"\x02" + f[1:], FrameError, "after the handshake"),
        (lambda f: f[:1] + b"\x04" + f[2:], FrameError, "reserved flags"),
        (lambda f: f[:2] + struct.pack("!I", 5) + f[6:], IntegrityError, "epoch 5"),
        (lambda f: f[:-1] + bytes([f[-1] ^ 1]), IntegrityError, "bad tag"),
    ],
)
def test_open_checks_size_header_epoch_tag_in_order(damage, error, match) -> None:  # type: ignore[no-untyped-def]
    pair = ChannelPair()
    frame = pair.p.seal_control(FrameType.REKEY_REQUEST, PING)
    with pytest.raises(error, match=match) as info:
        pair.v.open(damage(frame))
    assert info.value.remote
    assert pair.v.rx_control_seq == 0 and not pair.v.authenticated  # nothing moved on


def test_sequence_is_checked_after_the_tag_in_both_spaces() -> None:
    pair = ChannelPair()
    control = pair.p.seal_control(FrameType.REKEY_REQUEST, PING)
    pair.v.open(control)
    with pytest.raises(SequenceError, match="control frame seq 0, expected 1"):
        pair.v.open(control)
    data = pair.p.seal(FrameType.DATA, 0, 5, b"\x93\x00\x00\x91\xa1x")
    with pytest.raises(SequenceError, match="data frame seq 5, expected 0"):
        pair.v.open(data)


def test_tier1_steps_wait_for_a_frame_in_the_epoch_and_for_a_dh_hold() -> None:
    pair = ChannelPair()
    pair.p.step_due = True
    first = pair.p.seal_control(FrameType.REKEY_REQUEST, PING)
    assert parse_header(first)[2] == 0  # epoch 0 carried no frame yet: no step
    second = pair.p.seal_control(FrameType.REKEY_REQUEST, PING)
    assert parse_header(second)[2] == 1 and pair.p.stats.ratchets == 1
    pair.p.step_due, pair.p.hold_step = True, True
    assert parse_header(pair.p.seal_control(FrameType.REKEY_REQUEST, PING))[2] == 1  # held
    for frame in (first, second):
        pair.v.open(frame)
    assert pair.v.rx.epoch == 1 and pair.switches["v"] == 0  # a tier-1 switch


def test_ratchet_messages_and_the_ratchet_timer_trigger_steps() -> None:
    clock = FakeClock()
    pair = ChannelPair(SessionConfig(ratchet_messages=2, ratchet_interval=10.0), clock)
    epochs = [parse_header(pair.p.seal_control(FrameType.ACK, PING))[2] for _ in range(5)]
    assert epochs == [0, 0, 1, 1, 2]
    assert pair.v.ratchet_deadline() == 10.0
    clock.advance(10.0)
    pair.v.on_ratchet_timer(clock.now)
    assert pair.v.step_due and pair.v.ratchet_deadline() == float("inf")


def test_a_dh_switch_is_reported_once_when_the_peers_new_epoch_verifies() -> None:
    pair = ChannelPair()
    pair.v.open(pair.p.seal_control(FrameType.REKEY_REQUEST, PING))
    new = pair.p.schedule.rekey(1, bytes(32), bytes(32), b"a" * 32, b"b" * 32)
    pair.v.schedule.rekey(1, bytes(32), bytes(32), b"a" * 32, b"b" * 32)
    pair.p.tx.switch_to(new.c2v, 0.0)
    pair.v.rx.install_pending(new.c2v)
    pair.v.open(pair.p.seal_control(FrameType.REKEY_REQUEST, PING))
    assert pair.switches == {"p": 0, "v": 1} and pair.v.rx.epoch == 1
    pair.v.open(pair.p.seal_control(FrameType.REKEY_REQUEST, PING))
    assert pair.switches["v"] == 1


def test_flow_numbers_keeps_and_acknowledges_data() -> None:
    pair = ChannelPair(SessionConfig(inbound_capacity=64))
    pair.pf.resume_from(0, 64)
    assert pair.pf.send_window() == 64
    frame = pair.pf.send_data([b"a", b"b"], FLAG_SYSTEM)
    assert pair.p.record.next_tx_seq == 2 and pair.p.record.replay_messages == 2
    _, flags, seq, body = pair.v.open(frame)
    assert pair.vf.accept_data(seq, flags, body) == MessagesReceived(0, [b"a", b"b"], True)
    assert pair.v.record.next_rx_seq == 2 and pair.vf.unacked_since == 0.0
    assert not pair.vf.ack_due(0.0)
    assert pair.vf.ack_due(0.02)  # the delayed ack
    ack = pair.vf.ack_frame()
    assert current(pair.vf.unacked_since) is None and pair.vf.ack_sent == 2
    pair.pf.accept_ack(pair.p.open(ack)[3])
    assert pair.p.record.replay_messages == 0 and pair.p.record.peer_ack == 2


def test_flow_enforces_credit_both_ways() -> None:
    pair = ChannelPair(SessionConfig(inbound_capacity=4))
    pair.pf.resume_from(0, 4)
    with pytest.raises(LocalProtocolError, match="exceed the send window 4"):
        pair.pf.send_data([b"x"] * 5)
    with pytest.raises(LocalProtocolError, match="at least one"):
        pair.pf.send_data([])
    with pytest.raises(LocalProtocolError, match="must be bytes"):
        pair.pf.send_data(["text"])  # type: ignore[list-item]
    pair.p.record.peer_window = 10  # a participant that ignores the venue's credit
    _, flags, seq, body = pair.v.open(pair.pf.send_data([b"x"] * 5))
    with pytest.raises(RemoteProtocolError, match="beyond the granted window 4"):
        pair.vf.accept_data(seq, flags, body)


def test_resume_position_is_validated_before_anything_changes() -> None:
    pair = ChannelPair()
    pair.pf.resume_from(0, 100)
    pair.pf.send_data([b"a", b"b", b"c"])
    with pytest.raises(RemoteProtocolError, match="received up to 4"):
        pair.pf.resume_from(4, 100)
    pair.p.record.trim(2)
    with pytest.raises(RemoteProtocolError, match="already acknowledged"):
        pair.pf.resume_from(1, 100)
    assert pair.p.record.replay_messages == 1 and current(pair.pf.state) is FlowState.STREAMING
    assert pair.pf.resume_from(2, 200) == 1
    assert current(pair.pf.state) is FlowState.REPLAYING and pair.pf.send_window() == 0


def test_retransmission_keeps_original_seqs_and_batches_by_bytes() -> None:
    pair = ChannelPair(SessionConfig(max_batch_bytes=10))
    pair.pf.resume_from(0, 100)
    pair.pf.send_data([b"12345", b"678", b"9"])
    pair.pf.send_data([b"abcdefghijkl"], FLAG_SYSTEM)  # larger than a batch: alone
    pair.p.record.trim(1)
    pair.pf.resume_from(1, 100)
    out: list[bytes] = []
    pair.pf.write_retransmission(out)
    assert current(pair.pf.state) is FlowState.STREAMING and pair.p.stats.retransmitted == 3
    pair.v.record.next_rx_seq = 1  # the venue had received message 0
    got = []
    for frame in out:
        _, flags, seq, body = pair.v.open(frame)
        got.append(pair.vf.accept_data(seq, flags, body))
    assert got == [
        MessagesReceived(1, [b"678", b"9"]),
        MessagesReceived(3, [b"abcdefghijkl"], True),
    ]


def test_heartbeats_carry_the_next_seq_and_reveal_a_lost_data_frame() -> None:
    pair = ChannelPair()
    pair.pf.resume_from(0, 100)
    beat = pair.pf.heartbeat(FrameType.HEARTBEAT, 7, FLAG_PROBE)
    frame_type, flags, _seq, body = pair.v.open(beat)
    assert (frame_type, flags) == (FrameType.HEARTBEAT, FLAG_PROBE)
    assert pair.vf.accept_heartbeat(frame_type, body).id == 7
    pair.pf.send_data([b"lost"])
    frame_type, _, _, body = pair.v.open(pair.pf.heartbeat(FrameType.HEARTBEAT, 8))
    with pytest.raises(SequenceError, match="DATA frame was lost"):
        pair.vf.accept_heartbeat(frame_type, body)


def test_an_ack_beyond_what_was_sent_is_a_protocol_violation() -> None:
    pair = ChannelPair()
    with pytest.raises(RemoteProtocolError, match="acknowledged seq 3"):
        pair.pf.peer_grant(3, 10)
    pair.pf.peer_grant(0, 10)
    pair.pf.peer_grant(0, 5)  # a window never shrinks
    assert pair.p.record.peer_window == 10


def test_close_bodies_parse_to_events() -> None:
    event = parse_close(memoryview(encode_body(Close(int(CloseCode.RATE_LIMITED), "bye", 2500))))
    assert event == CloseReceived(CloseCode.RATE_LIMITED, "bye", 2.5)


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
