"""The Connection facade back to back: whole sessions across epochs and resumes, and
the facade's own rules (facts, write order, close before keys, API misuse)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_session import CloseCode, FrameError, LocalProtocolError, SessionConfig
from trio_session.protocol import (
    ClientConnection,
    CloseReceived,
    Connection,
    ConnectionState,
    Role,
    VenueConnection,
)
from trio_session.protocol._wire import FrameType, parse_header

from .helpers import PARTICIPANT, VENUE, FakeClock, Link, current, handshake, pump


def _payloads(prefix: bytes, start: int, n: int) -> list[bytes]:
    return [prefix + b"%08d" % i for i in range(start, start + n)]


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


def test_graceful_close_is_reported_with_code() -> None:
    p, v, _, _ = handshake()
    p.close(CloseCode.NORMAL, "bye")
    assert p.state is ConnectionState.CLOSING
    assert pump(p, v) == [CloseReceived(CloseCode.NORMAL, "bye", None)]
    assert v.state is ConnectionState.CLOSED
    assert p.send_window() == 0


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


def test_failed_connection_refuses_further_input() -> None:
    p, _v, _, _ = handshake()
    with pytest.raises(Exception) as first:
        p.receive_data(b"\x10" + b"\x00" * 40)
    assert p.state is ConnectionState.ERROR
    with pytest.raises(LocalProtocolError):
        p.receive_data(b"anything")
    assert p.error is first.value


# -- the facade's own facts and rules ---------------------------------------------------


def test_connection_is_abstract_and_facts_exist_before_keys() -> None:
    with pytest.raises(TypeError, match="abstract"):
        Connection(VENUE, SessionConfig())
    p = ClientConnection(PARTICIPANT, VENUE.public_key, SessionConfig())
    assert (p.channel, p.session, p.session_id, p.epochs) == (None, None, None, (0, 0))
    assert current(p.authenticated) is False and current(p.resumed) is False
    assert p.role is Role.PARTICIPANT and VenueConnection.role is Role.VENUE
    assert repr(p) == "<ClientConnection handshaking session=->"


def test_authenticated_and_resumed_follow_the_handshake() -> None:
    link = Link(SessionConfig())
    p2 = ClientConnection(PARTICIPANT, VENUE.public_key, SessionConfig(), resume=link.p_state)
    v2 = VenueConnection(VENUE, SessionConfig())
    pump(p2, v2)
    assert current(v2.resumed) is False
    v2.accept(PARTICIPANT.public_key, link.v_state)
    assert v2.resumed and current(v2.authenticated) is False  # known at accept, before M3
    pump(v2, p2)
    assert p2.resumed and p2.channel is not None and current(p2.authenticated) is False
    pump(p2, v2)  # M3 is a handshake frame: it authenticates nothing on the channel
    assert current(v2.authenticated) is False and v2.session is link.v_state
    v2.receive_data(p2.send_data([b"first"]))
    assert v2.authenticated
    pump(v2, p2)  # the venue's confirmation
    assert p2.authenticated


def test_answers_go_out_before_initiatives_and_rekey_ack_switches_what_follows() -> None:
    clock = FakeClock()
    cfg = SessionConfig(heartbeat_interval=1.0, heartbeat_timeout=3.0, heartbeat_jitter=0.0)
    p, v, _, _ = handshake(cfg, clock=clock)
    clock.advance(2.0)  # the venue probes a silent participant...
    v.start_rekey()  # ...and starts a DH rekey
    frames = v.data_to_send()
    assert [parse_header(f)[0] for f in frames] == [FrameType.REKEY, FrameType.HEARTBEAT]
    for frame in frames:
        p.receive_data(frame)
    p.request_rekey()  # answered by the REKEY already here: no REKEY_REQUEST follows
    out = p.data_to_send()
    assert [parse_header(f)[:3] for f in out] == [
        (FrameType.REKEY_ACK, 0, 0),  # answers first, the REKEY_ACK in the old epoch
        (FrameType.HEARTBEAT_ACK, 0, 1),  # then everything else under the new chain
        (FrameType.HEARTBEAT, 0, 1),  # the participant's own beat, due since t=1
    ]
    for frame in out:
        v.receive_data(frame)
    assert v.stats.rekeys == 1 and v.epochs == (1, 1)


def test_close_before_keys_sends_a_reject_only_from_the_venue() -> None:
    p = ClientConnection(PARTICIPANT, VENUE.public_key, SessionConfig())
    (m1,) = p.data_to_send()
    p.close(CloseCode.NORMAL)
    assert p.state is ConnectionState.CLOSING and p.data_to_send() == []
    v = VenueConnection(VENUE, SessionConfig())
    v.receive_data(m1)
    v.close(CloseCode.UNKNOWN_KEY, "x" * 300)
    (reject,) = v.data_to_send()
    assert parse_header(reject)[0] is FrameType.REJECT
    (event,) = p.receive_data(reject)  # still understood after our own close
    assert event == CloseReceived(CloseCode.UNKNOWN_KEY, "x" * 200, None)
    with pytest.raises(FrameError, match="after the handshake"):
        v.receive_data(m1)
    assert v.state is ConnectionState.ERROR


def test_ratchet_before_the_handshake_applies_once_keys_exist() -> None:
    p = ClientConnection(PARTICIPANT, VENUE.public_key, SessionConfig())
    v = VenueConnection(VENUE, SessionConfig())
    p.ratchet()
    pump(p, v)
    v.accept(PARTICIPANT.public_key)
    pump(v, p)
    pump(p, v)
    pump(v, p)
    v.receive_data(p.send_data([b"a"]))  # epoch 0 carries a frame first
    v.receive_data(p.send_data([b"b"]))
    assert p.epochs[0] == 1 and v.epochs[1] == 1
