"""The receiving side with a durable store (``SessionRecord.rx_stable``), without Trio.

The rule: acknowledgements, credit and the resume position never go beyond
what the application committed and the store recorded, so a peer never drops
a message a crash would lose; a resume that offers less than was received
drops the retransmitted copies it already holds.
"""

from __future__ import annotations

from trio_session import SessionConfig
from trio_session.protocol import SessionRecord

from .helpers import ChannelPair, Link, current


def test_acks_and_credit_stop_at_the_stable_position() -> None:
    pair = ChannelPair(SessionConfig(inbound_capacity=8))
    pair.v.record.rx_stable = 0
    pair.pf.resume_from(0, 8)
    _, flags, seq, body = pair.v.open(pair.pf.send_data([b"a", b"b", b"c"]))
    pair.vf.accept_data(seq, flags, body)
    assert pair.v.record.next_rx_seq == 3
    assert pair.vf.grant() == (0, 8)  # received three, committed none: ack 0, window 0 + 8
    pair.v.record.consume(3)  # the application took them: no credit without a commit
    assert pair.vf.grant() == (0, 8)
    pair.v.record.rx_stable = 2
    assert pair.vf.grant() == (2, 10)
    pair.pf.accept_ack(pair.p.open(pair.vf.ack_frame())[3])
    assert pair.p.record.peer_ack == 2 and pair.p.record.replay_messages == 1


def test_a_stored_commit_starts_the_delayed_ack() -> None:
    pair = ChannelPair(SessionConfig(inbound_capacity=64))
    pair.v.record.rx_stable = 0
    pair.pf.resume_from(0, 64)
    _, flags, seq, body = pair.v.open(pair.pf.send_data([b"a"]))
    pair.vf.accept_data(seq, flags, body)
    pair.vf.grant()  # an outgoing frame carried ack 0: nothing owed any more
    assert pair.vf.unacked_since is None
    assert not pair.vf.ack_due(1.0)
    pair.v.record.rx_stable = 1
    pair.clock.advance(1.0)
    assert not pair.vf.stable_advanced(pair.clock())  # not due yet: it starts the 20 ms clock
    assert current(pair.vf.unacked_since) == 1.0 and pair.vf.ack_due(1.02)


def test_a_resume_offers_the_stable_position_and_drops_copies_it_holds() -> None:
    link = Link(SessionConfig())
    assert link.v_state is not None
    link.v_state.rx_stable = 0
    for i in range(6):
        link.send("p", [b"%d" % i])
    link.flush()
    assert link.received["v"] == [b"%d" % i for i in range(6)]
    link.v_state.rx_stable = 4  # the venue's application committed four of the six
    link.clock.advance(0.03)  # the delayed ack
    link.flush()
    assert link.p_state is not None and link.p_state.peer_ack == 4  # never beyond the commit
    link.cut_and_resume()  # the venue offers 4: the participant retransmits 4 and 5 ...
    link.flush()
    assert link.received["v"] == [b"%d" % i for i in range(6)]  # ... dropped: already held
    assert link.p.stats.retransmitted == 2
    link.send("p", [b"6"])
    link.flush()
    assert link.received["v"][-1] == b"6" and link.v_state.next_rx_seq == 7


def test_after_a_crash_the_uncommitted_messages_come_again() -> None:
    link = Link(SessionConfig())
    assert link.v_state is not None
    link.v_state.rx_stable = 0
    for i in range(5):
        link.send("p", [b"%d" % i])
    link.v_state.rx_stable = 3
    link.flush()
    # What the venue's store held: the record with the committed position.
    snap = link.v_state.to_snapshot()
    snap["next_rx_seq"] = snap["rx_consumed"] = 3
    restored = SessionRecord.from_snapshot(snap)
    restored.rx_stable = 3
    link.v_state = restored
    link.received["v"].clear()
    link.cut_and_resume()
    link.flush()
    assert link.received["v"] == [b"3", b"4"]  # redelivered: the application may have seen them


def test_without_a_store_nothing_changes() -> None:
    link = Link(SessionConfig())
    link.send("p", [b"a", b"b"])
    link.flush()
    link.clock.advance(0.03)  # the delayed ack
    link.flush()
    assert link.p_state is not None and link.p_state.peer_ack == 2  # acknowledged on receipt
    assert link.v_state is not None and link.v_state.ack_position == 2
    assert link.v_state.credit_base == link.v_state.rx_consumed
