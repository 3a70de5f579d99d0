"""The protocol's own resource limits, without Trio: the byte-bounded credit window
(docs/protocol.md, "Flow control and acknowledgement") and the control-frame meter."""

from __future__ import annotations

import pytest

from trio_session import ControlFlood, SessionConfig
from trio_session.protocol import ConnectionState, MessagesReceived
from trio_session.protocol._channel import credit_window, message_credit
from trio_session.protocol._meter import MAX_OWED, ControlMeter, earned_by
from trio_session.protocol._wire import Ack, FrameType, Heartbeat, encode_body, pack_header

from .helpers import FakeClock, handshake, pump

KiB = 1024


def test_credit_counts_each_message_it_allows_at_max_message_size() -> None:
    # 64 messages of 1 KiB fit in 64 KiB: the window is 64, not inbound_capacity.
    cfg = SessionConfig(
        inbound_capacity=4096, max_message_size=KiB, inbound_max_bytes=64 * KiB, max_batch_bytes=KiB
    )
    assert message_credit(cfg) == 64
    assert credit_window(None, cfg) == 64
    # Small enough messages keep the whole capacity.
    assert message_credit(SessionConfig()) == 1024  # 256 MiB / 256 KiB
    assert message_credit(SessionConfig(inbound_capacity=16)) == 16


def test_window_never_lets_the_peer_park_more_than_inbound_max_bytes() -> None:
    """Received and unconsumed bytes plus everything the window still allows, at
    max_message_size each, stay within inbound_max_bytes: the window only grows as the
    application consumes, whatever sizes the peer picks."""
    cfg = SessionConfig(
        inbound_capacity=1000,
        max_message_size=KiB,
        inbound_max_bytes=10 * KiB,
        max_batch_bytes=KiB,
    )
    p, v, _, _ = handshake(cfg)
    assert v.session is not None and p.session is not None
    assert p.session.peer_window == 10  # the venue granted 10 messages
    frames = [p.send_data([bytes(KiB)]) for _ in range(10)]
    assert p.send_window() == 0
    for frame in frames:
        (ev,) = v.receive_data(frame)
        assert isinstance(ev, MessagesReceived) and ev.nbytes == KiB
    record = v.session
    assert record.rx_held_bytes == 10 * KiB
    pump(v, p)
    assert p.send_window() == 0  # nothing consumed: no credit, however long it waits
    v.messages_consumed(5)  # half the credit: worth an ACK
    assert record.rx_held_bytes == 5 * KiB
    pump(v, p)
    assert p.send_window() == 5
    # Held bytes + window beyond next_rx_seq x max_message_size <= inbound_max_bytes.
    window = credit_window(record, cfg)
    held = record.rx_held_bytes
    assert held + (window - record.next_rx_seq) * cfg.max_message_size <= cfg.inbound_max_bytes


def test_bytes_of_a_frame_are_released_when_all_its_messages_are_consumed() -> None:
    cfg = SessionConfig(inbound_capacity=100)
    p, v, _, _ = handshake(cfg)
    assert v.session is not None
    v.receive_data(p.send_data([b"a" * 10, b"b" * 20, b"c" * 30]))
    v.receive_data(p.send_data([b"d" * 5]))
    record = v.session
    assert record.rx_held_bytes == 65
    v.messages_consumed(2)  # part of the first frame: still held
    assert record.rx_held_bytes == 65
    v.messages_consumed(1)
    assert record.rx_held_bytes == 5
    v.messages_consumed(1)
    assert record.rx_held_bytes == 0 and not record.rx_frames


def test_meter_allows_earned_answers_and_a_bucket_then_refuses() -> None:
    meter = ControlMeter(rate=10.0, now=0.0)
    ack = FrameType.ACK
    for _ in range(20):  # a burst of twice the rate
        meter.spend(0.0, ack)
    with pytest.raises(ControlFlood, match="ACK beyond its control-frame allowance"):
        meter.spend(0.0, ack)
    meter.earn(3)
    for _ in range(3):
        meter.spend(0.0, ack)
    with pytest.raises(ControlFlood):
        meter.spend(0.0, ack)
    meter.spend(0.1, ack)  # refilled at the rate
    meter.earn(10 * MAX_OWED)
    assert meter.owed == MAX_OWED


def test_only_frames_that_ask_for_an_answer_earn_one() -> None:
    def frame(t: FrameType) -> bytes:
        return pack_header(t, 0, 0, 0) + b"x" * 20

    sent = [frame(FrameType.DATA), frame(FrameType.HEARTBEAT), frame(FrameType.REKEY)]
    answers = [frame(FrameType.ACK), frame(FrameType.HEARTBEAT_ACK), frame(FrameType.CLOSE)]
    assert earned_by(sent) == 2 + 1 + 1
    assert earned_by(answers) == 0


def test_a_control_flood_ends_the_connection_with_control_flood() -> None:
    clock = FakeClock()
    cfg = SessionConfig(control_frame_rate=10.0, heartbeat_interval=5.0)
    p, v, _, _ = handshake(cfg, clock=clock)
    body = encode_body(Heartbeat(0, 0, 64, 0))
    channel = p.channel
    assert channel is not None
    allowed = 2 * (10 + 4 / 5.0)  # bursts of twice (rate + 4 per heartbeat interval)
    sent = 0
    with pytest.raises(ControlFlood) as info:
        while sent < 1000:
            v.receive_data(channel.seal_control(FrameType.HEARTBEAT, body))
            sent += 1
            v.data_to_send()  # the venue answers (answers earn nothing)
    assert sent == int(allowed)
    assert v.state is ConnectionState.ERROR and not info.value.remote
    # The venue can still say why: its CLOSE carries the code.
    v.close(info.value.code)
    (close,) = v.data_to_send()
    assert close[0] == FrameType.CLOSE


def test_acks_for_our_data_are_never_a_flood() -> None:
    """A participant that acknowledges every venue DATA frame twice (the most the
    reference does: on arrival and on consumption, with a tiny inbound capacity)
    stays within its allowance, however fast the venue sends."""
    cfg = SessionConfig(control_frame_rate=1.0, inbound_capacity=1)
    p, v, _, _ = handshake(cfg)
    channel = p.channel
    assert channel is not None and p.session is not None
    for _ in range(2000):
        p.receive_data(v.send_data([b"tick"]))
        p.messages_consumed(1)
        for frame in p.data_to_send():  # the ACK that grants the next message
            v.receive_data(frame)
        extra = Ack(p.session.next_rx_seq, p.session.rx_consumed + 1)
        v.receive_data(channel.seal_control(FrameType.ACK, encode_body(extra)))
    assert v.state is ConnectionState.OPEN
