"""The session's queues (``_queues.py``): the three send policies, notices, depths.

First the queue objects alone (no session, no connection); then end to end
under a mock clock against :func:`trio_session.testing.memory_venue`, whose
inbound capacity (the participant's credit) is small enough to hold messages
in the participant's outbound queue.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_session as ts
from trio_session._queues import Inbound, Outbound, notice_error, reject_notice
from trio_session.protocol import Role, SessionRecord
from trio_session.protocol._wire import decode_notice, encode_body
from trio_session.testing import memory_venue

from .runtime_helpers import (
    PARTICIPANT,
    VENUE,
    Reader,
    fill_credit,
    policy_configs,
    registry,
)

BIG = 1 << 20


def _outbound(capacity: int = 8, max_batch_bytes: int = BIG) -> Outbound:
    return Outbound(capacity, max_batch_bytes)


def test_writer_takes_lossless_then_conflated_then_lossy() -> None:
    out = _outbound()
    assert out.put_nowait(b"a", 1, 1) and out.put_nowait([b"b", b"c"], 2, 2)
    out.put_latest("k", b"k1")
    out.put_latest("j", b"j1")
    out.put_latest("k", b"k2")  # replaces k1, moves behind j
    out.put_lossy(b"l1")
    assert (out.depth, out.conflated, out.dropped) == (6, 1, 0)
    assert out.has_data()
    assert out.take(100, BIG) == [b"a", b"b", b"c", b"j1", b"k2", b"l1"]
    assert out.depth == 0 and not out.has_data()
    assert out.take(100, BIG) == []


def test_take_respects_the_window_and_the_byte_budgets() -> None:
    out = _outbound(max_batch_bytes=25)
    out.put_nowait([b"x" * 10] * 5, 5, 50)
    assert out.take(1, BIG) == [b"x" * 10]  # credit for one
    assert out.take(100, BIG) == [b"x" * 10] * 2  # 25-byte batches
    assert out.take(100, 15) == [b"x" * 10]  # replay byte budget
    out.put_lossy(b"y" * 40)
    assert out.take(100, BIG) == [b"x" * 10]
    # Alone, a message larger than the batch cap still goes, but never past the budget.
    assert out.take(100, 39) == []
    assert out.take(100, 40) == [b"y" * 40]


def test_lossy_queue_drops_its_oldest_beyond_capacity() -> None:
    out = _outbound(capacity=3)
    for i in range(5):
        out.put_lossy(b"%d" % i)
    assert (out.dropped, out.depth) == (2, 3)
    assert out.take(100, BIG) == [b"2", b"3", b"4"]


def test_notices_keep_their_place_in_the_lossless_stream() -> None:
    out = _outbound()
    out.put_nowait(b"r0", 1, 2)
    out.put_nowait(b"r1", 1, 2)  # still in the channel when the notice is queued
    out.put_notice(reject_notice(4, "no", ts.RejectCode.REJECTED, 0.5))
    out.put_notice(reject_notice(5, "x" * 300, ts.RejectCode.INVALID, None))
    out.put_nowait(b"r2", 1, 2)
    out.put_latest("k", b"k")
    assert out.take_notices(10) == []  # not at the head yet
    # Lossless messages stop at the notice; conflated ones are not ordered against them.
    assert out.take(10, BIG) == [b"r0", b"r1", b"k"]
    first, second = out.take_notices(1), out.take_notices(10)
    assert len(first) == 1 and len(second) == 1
    n1, n2 = decode_notice(first[0]), decode_notice(second[0])
    assert (n1.ref_seq, n1.code, n1.reason, n1.retry_after_ms) == (4, 3, "no", 500)
    assert (n2.ref_seq, n2.code, len(n2.reason), n2.retry_after_ms) == (5, 1, 200, None)
    assert out.take(10, BIG) == [b"r2"]


async def test_a_full_lossless_queue_blocks_and_close_releases_senders() -> None:
    out = _outbound(capacity=1)
    assert out.put_nowait(b"a", 1, 1)
    assert not out.put_nowait(b"b", 1, 1) and out.depth == 1
    failed: list[BaseException] = []

    async def sender() -> None:
        try:
            await out.put(b"c", 1, 1)
        except trio.BrokenResourceError as exc:
            failed.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            assert failed == []  # blocked, not failed
            out.close()
    assert len(failed) == 1
    with pytest.raises(trio.BrokenResourceError):
        out.put_nowait(b"d", 1, 1)


def _waits_for_credit(out: Outbound) -> bool:
    return out.waits_for_credit  # a call: type checkers do not narrow it


async def test_the_writer_parks_until_woken() -> None:
    out = _outbound()
    woke: list[bool] = []

    async def writer(wait_for_data: bool) -> None:
        await out.park(wait_for_data=wait_for_data)
        woke.append(out.wake_pending)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, False)
            await trio.testing.wait_all_tasks_blocked()
            assert _waits_for_credit(out) and woke == []
            out.put_nowait(b"a", 1, 1)  # data wakes a parked writer
        assert woke == [True] and not _waits_for_credit(out)
        # A wake-up that came while it was running: the next park returns at once.
        out.wake_pending = False
        out.wake()
        await out.park(wait_for_data=True)
        # Data for a running writer sets nothing: it looks at the queues before parking.
        out.wake_pending = False
        out.wake_for_data()
        assert not out.wake_pending


def _record(sid: bytes = b"s" * 16) -> SessionRecord:
    return SessionRecord(sid, PARTICIPANT.key_id, Role.PARTICIPANT)


def test_inbound_buffers_batches_notices_and_the_reset_marker() -> None:
    inbound = Inbound()
    old, new = _record(b"o" * 16), _record(b"n" * 16)
    inbound.consume_target = old
    notice = encode_body(reject_notice(3, "why", ts.RejectCode.REJECTED, None))
    assert inbound.put([b"m0", b"m1"], False)
    assert inbound.put([notice, b"\xc1"], True)  # a good notice and a malformed one
    inbound.put_reset(new, ())
    assert inbound.put([b"n0"], False)
    assert inbound.depth == 5
    assert inbound.take(inbound.get_nowait()) == 2
    assert inbound.take(inbound.get_nowait()) == 2
    assert list(inbound.buf)[:2] == [b"m0", b"m1"]
    good, bad = list(inbound.buf)[2:]
    assert isinstance(notice_error(good), ts.MessageRejected)
    assert notice_error(good).ref_seq == 3  # type: ignore[attr-defined]
    assert isinstance(notice_error(bad), ts.FrameError)
    inbound.rx_seq = 4
    assert inbound.take(inbound.get_nowait()) == 0  # the marker credits nothing
    assert inbound.reset_pending and inbound.rx_seq == 0 and inbound.consume_target is new
    assert inbound.take(inbound.get_nowait()) == 1 and inbound.depth == 5
    inbound.close()
    assert not inbound.put([b"late"], False)  # not delivered after the session ended


def test_queues_share_one_empty_deque_until_their_first_item() -> None:
    """Idle sessions share the empty deques; adding to a queue gives it its own."""
    from trio_session._queues import _EMPTY

    a, b = Outbound(4, 1024), Outbound(4, 1024)
    assert a.lossy is b.lossy is _EMPTY
    a.put_lossy(b"x")
    assert a.lossy is not _EMPTY and list(a.lossy) == [b"x"] and b.lossy is _EMPTY
    inbound, other = Inbound(), Inbound()
    assert inbound.buf is other.buf is _EMPTY
    inbound.put([b"m"], False)
    inbound.take(inbound.get_nowait())
    assert list(inbound.buf) == [b"m"] and other.buf is _EMPTY
    c = Outbound(4, 1024)
    assert c.pending is _EMPTY
    c.put_nowait(b"p", 1, 1)
    assert c.take(4, 1024) == [b"p"]  # staged into its own deque, taken in the same call
    assert c.pending is not _EMPTY
    a.clear()
    other.clear()
    assert not _EMPTY  # never mutated


async def test_writer_slot_wakes_its_parker_and_any_second_one() -> None:
    from trio_session._queues import _Slot

    slot = _Slot()
    woken: list[int] = []

    async def parker(i: int) -> None:
        await slot.park()
        woken.append(i)

    with trio.fail_after(5):
        with trio.move_on_after(0.01):  # a cancelled parker leaves the slot free
            await slot.park()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(parker, 1)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(parker, 2)  # two receive() calls at once; must not hang
            await trio.testing.wait_all_tasks_blocked()
            assert woken == []
            slot.unpark()
    assert sorted(woken) == [1, 2]


async def test_inbound_get_waits_for_a_batch_and_ends_after_close() -> None:
    inbound = Inbound()
    got: list[object] = []

    async def reader() -> None:
        while True:
            try:
                got.append(await inbound.get())
            except trio.EndOfChannel:
                got.append("end")
                return

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # parked, nothing queued
            inbound.put([b"a"], False, 1)
            inbound.put([b"b"], False, 1)
            inbound.close()  # what was queued is still delivered, then the end
    assert got == [[b"a"], [b"b"], "end"]
    assert inbound.bytes == 0


async def test_inbound_two_waiting_readers_each_get_a_batch() -> None:
    inbound = Inbound()
    got: list[object] = []

    async def reader() -> None:
        got.append(await inbound.get())

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            inbound.put([b"a"], False)
            await trio.testing.wait_all_tasks_blocked()
            assert got == [[b"a"]]  # one woke with it, the other waits again
            inbound.put([b"b"], False)
    assert got == [[b"a"], [b"b"]]


async def test_inbound_get_cancelled_loses_nothing() -> None:
    inbound = Inbound()
    with trio.fail_after(5):
        with trio.move_on_after(0.01):
            await inbound.get()
        inbound.put([b"kept"], False)
        assert await inbound.get() == [b"kept"]


async def test_queue_depths_count_messages_not_batches(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # SessionStats: "Messages waiting to be sent / received and not yet consumed."
    cap = 32
    cfg_p = ts.SessionConfig(inbound_capacity=cap)
    cfg_v = ts.SessionConfig(inbound_capacity=8)
    reader = Reader()

    async def handler(session: ts.Session) -> None:
        await session.send_many([b"m%03d" % i for i in range(cap)])
        await reader(session)

    with trio.fail_after(30):
        async with (
            memory_venue(handler, VENUE, registry(), config=cfg_v) as venue,
            venue.connect(PARTICIPANT, config=cfg_p) as session,
        ):
            await trio.testing.wait_all_tasks_blocked()
            assert session.stats.received == cap
            assert session.stats.inbound_depth == cap  # one batch of 32 messages
            await fill_credit(session, cfg_v.inbound_capacity)
            await session.send_many([b"x%d" % i for i in range(5)])
            await trio.testing.wait_all_tasks_blocked()
            assert session.stats.outbound_depth == 5  # one queue item of 5 messages
            assert await session.receive() == b"m000"
            assert session.stats.inbound_depth == cap - 1


async def test_send_latest_conflates_to_latest_value_per_key(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cfg_p, cfg_v = policy_configs(outbound=64)
    reader = Reader()
    with trio.fail_after(30):
        async with (
            memory_venue(reader, VENUE, registry(), config=cfg_v) as venue,
            venue.connect(PARTICIPANT, config=cfg_p) as session,
        ):
            first = await fill_credit(session, cfg_v.inbound_capacity)
            updates = 0
            for i in range(10):
                for key in ("A", "B", "C"):
                    session.send_latest(key, b"%s%d" % (key.encode(), i))
                    updates += 1
            session.send_latest("A", b"A10")  # re-queued at the end: FIFO by last update
            updates += 1
            await trio.testing.wait_all_tasks_blocked()
            stats = session.stats
            assert stats.conflated == updates - 3
            assert stats.outbound_depth == 3
            assert stats.sent == len(first) and stats.dropped == 0
            reader.go.set()
            got = await reader.wait_for(len(first) + 3)
            assert got == [*first, b"B9", b"C9", b"A10"]
            assert session.stats.sent == len(first) + 3
            # With credit available, a lone update is sent, not conflated.
            session.send_latest("A", b"A11")
            assert await reader.wait_for(len(first) + 4) == [*first, b"B9", b"C9", b"A10", b"A11"]
            assert session.stats.conflated == updates - 3


async def test_send_lossy_drops_oldest_when_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbound = 4
    cfg_p, cfg_v = policy_configs(outbound=outbound)
    reader = Reader()
    with trio.fail_after(30):
        async with (
            memory_venue(reader, VENUE, registry(), config=cfg_v) as venue,
            venue.connect(PARTICIPANT, config=cfg_p) as session,
        ):
            first = await fill_credit(session, cfg_v.inbound_capacity)
            for i in range(10):
                session.send_lossy(b"l%d" % i)
            await trio.testing.wait_all_tasks_blocked()
            stats = session.stats
            assert stats.dropped == 10 - outbound
            assert stats.outbound_depth == outbound
            assert stats.conflated == 0
            reader.go.set()
            got = await reader.wait_for(len(first) + outbound)
            assert got == [*first, b"l6", b"l7", b"l8", b"l9"]
            assert session.stats.dropped == 10 - outbound


async def test_send_blocks_while_outbound_queue_is_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbound = 4
    cfg_p, cfg_v = policy_configs(outbound=outbound)
    credit = cfg_v.inbound_capacity
    reader = Reader()
    total = 40
    done: list[int] = []
    with trio.fail_after(120):
        async with (
            memory_venue(reader, VENUE, registry(), config=cfg_v) as venue,
            venue.connect(PARTICIPANT, config=cfg_p) as session,
        ):

            async def sender() -> None:
                for i in range(total):
                    await session.send(b"%02d" % i)
                    done.append(i)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                await trio.testing.wait_all_tasks_blocked()
                # credit on the wire, outbound_capacity queued, the next send blocked
                assert len(done) == credit + outbound, len(done)
                assert session.stats.sent == credit
                assert session.stats.outbound_depth == outbound
                await trio.sleep(60)  # blocked for good, not just slow
                assert len(done) == credit + outbound
                reader.go.set()  # consuming grants credit: the sender resumes
                got = await reader.wait_for(total)
            assert done == list(range(total))
            assert got == [b"%02d" % i for i in range(total)]
            assert session.stats.dropped == 0 and session.stats.conflated == 0
