"""The venue's resource limits, one object at a time (no sockets): byte bounds of the
queues, the venue's byte ledger and the guard that sheds sessions, the per-key
session cap.  The attacks they stop are run over sockets in tests/test_availability.py
and tests/test_budget.py."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_session as ts
from trio_session._budget import PAYLOAD_SHARE, ByteLedger, MemoryGuard
from trio_session._control import SessionControl, open_session
from trio_session._key_sessions import KeySessions
from trio_session._queues import Inbound, Outbound
from trio_session.protocol import Role, SessionRecord
from trio_session.testing import memory_venue

from .runtime_helpers import PARTICIPANT, VENUE, echo_handler, registry

BIG = 1 << 20


# -- queues in bytes ---------------------------------------------------------------------


async def test_send_waits_while_the_outbound_bytes_are_full() -> None:
    ledger = ByteLedger()
    out = Outbound(100, BIG, max_bytes=10, ledger=ledger)
    assert out.put_nowait(b"x" * 8, 1, 8)
    assert out.put_nowait(b"y" * 8, 1, 8)  # below the bound when it was queued
    assert not out.put_nowait(b"z", 1, 1)  # 16 >= 10: full, in bytes
    assert out.bytes == ledger.total == 16
    done: list[bool] = []

    async def sender() -> None:
        await out.put(b"z", 1, 1)
        done.append(True)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            assert done == []
            assert out.take(1, BIG) == [b"x" * 8]  # 8 bytes left: room again
    assert done == [True]
    assert out.bytes == ledger.total == 9


def test_lossy_messages_are_dropped_to_stay_within_the_bytes() -> None:
    out = Outbound(100, BIG, max_bytes=10)
    for i in range(5):
        out.put_lossy(b"%d" % i * 4)
    assert list(out.lossy) == [b"3333", b"4444"] and out.dropped == 3
    assert out.bytes == 8


def test_conflated_values_count_their_latest_size() -> None:
    ledger = ByteLedger()
    out = Outbound(100, BIG, ledger=ledger)
    out.put_latest("EURUSD", b"x" * 10)
    out.put_latest("EURUSD", b"x" * 4)
    assert out.bytes == ledger.total == 4
    out.clear()
    assert out.bytes == ledger.total == 0 and out.depth == 0


async def test_clear_after_close_frees_everything_queued() -> None:
    ledger = ByteLedger()
    out = Outbound(4, BIG, ledger=ledger)
    for _ in range(4):
        assert out.put_nowait(b"abc", 1, 3)
    out.close()
    out.clear()
    assert (out.bytes, ledger.total, out.depth, out.has_data()) == (0, 0, 0, False)


def test_inbound_counts_batches_until_they_are_taken() -> None:
    ledger = ByteLedger()
    inbound = Inbound(ledger)
    assert inbound.put([b"ab", b"cde"], False, 5)
    assert inbound.put([b"f"], False, 1)
    assert inbound.bytes == ledger.total == 6
    assert inbound.take(inbound.get_nowait()) == 2
    assert inbound.bytes == ledger.total == 1
    inbound.clear()
    assert (inbound.bytes, ledger.total, inbound.depth) == (0, 0, 0)
    assert not inbound.put([b"g"], False, 1)  # cleared means closed


# -- the venue's ledger and guard ------------------------------------------------------------


class FakeSession:
    def __init__(self, ledger: ByteLedger, held: int) -> None:
        self.ledger = ledger
        self.held = held
        self.finished = False
        self.error: ts.SessionError | None = None
        ledger.add(held)

    def buffered_bytes(self) -> int:
        return self.held

    def shed(self, error: ts.MemoryBudgetExceeded) -> None:
        self.finished, self.error = True, error
        self.ledger.add(-self.held)


async def test_the_guard_sheds_the_largest_sessions_until_under_the_payload_share() -> None:
    sessions: list[FakeSession] = []
    guard = MemoryGuard(800, lambda: sessions)
    assert guard.ledger.limit == int(800 * PAYLOAD_SHARE) == 700
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(guard.run)
            sessions += [FakeSession(guard.ledger, n) for n in (100, 300, 250)]
            await trio.testing.wait_all_tasks_blocked()
            assert guard.shed_count == 0  # 650 <= 700
            sessions.append(FakeSession(guard.ledger, 200))  # 850: over
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert [s.finished for s in sessions] == [False, True, False, False]
    assert guard.shed_count == 1 and guard.ledger.total == 550
    err = sessions[1].error
    assert isinstance(err, ts.MemoryBudgetExceeded) and err.code is ts.CloseCode.MEMORY_BUDGET
    assert "max_buffered_bytes (800 bytes)" in str(err)


async def test_a_finished_session_leaves_the_ledger() -> None:
    ledger = ByteLedger()
    control = open_session(Role.VENUE, ts.SessionConfig(), None, "k", ledger=ledger)
    control.bind(SessionRecord(bytes(16), "k", Role.VENUE))
    assert control.session._core.outbound.put_nowait(b"x" * 100, 1, 100)
    assert ledger.total == control.buffered_bytes() == 100
    control.finish(ts.SessionClosed("bye"))
    assert ledger.total == 0


# -- sessions per key ----------------------------------------------------------------------


def _controls(n: int) -> list[SessionControl]:
    out = []
    for i in range(n):
        control = open_session(Role.VENUE, ts.SessionConfig(), None, "alice")
        control.bind(SessionRecord(bytes([i]) * 16, "alice", Role.VENUE))
        out.append(control)
    return out


async def test_the_cap_ends_the_longest_detached_session_or_refuses() -> None:
    sessions = KeySessions(cap=3)
    a, b, c = _controls(3)
    for control in (a, b, c):
        assert control.record is not None
        sessions.add("alice", control.record.session_id, control)
    assert sessions.count("alice") == 3 and sessions.count("bob") == 0
    with pytest.raises(ts.TooManySessions) as info:  # all live: refused
        sessions.check_room("alice")
    assert info.value.code is ts.CloseCode.SESSION_LIMIT and info.value.retry_after > 0
    with pytest.raises(ts.TooManySessions):
        sessions.make_room("alice")
    sessions.detached(bytes([2]) * 16, at=5.0)
    sessions.detached(bytes([1]) * 16, at=3.0)
    sessions.check_room("alice")
    assert sessions.make_room("alice") == [b]  # detached the longest
    sessions.attached(bytes([1]) * 16)  # b resumed after all
    assert sessions.make_room("alice") == [c]
    c.finish(ts.SessionExpired("replaced"))
    assert sessions.count("alice") == 2 and sessions.make_room("alice") == []
    sessions.remove("alice", bytes([2]) * 16)
    sessions.remove("alice", bytes([0]) * 16)
    sessions.remove("alice", bytes([1]) * 16)
    assert sessions.count("alice") == 0 and sessions._by_key == {}


async def test_a_key_at_its_cap_is_refused_then_replaces_a_detached_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Through the venue: with max_sessions_per_key=2 and both sessions live, a third
    is refused (SESSION_LIMIT, before the venue signs); once one is detached, a new
    session ends it and its dead man's switch fires at once, not after resume_ttl."""
    cfg = ts.SessionConfig(max_sessions_per_key=2, session_rate_per_key=100.0)
    lost: list[tuple[str | None, float]] = []
    one = ts.RestartPolicy(enabled=False)
    with trio.fail_after(300):
        async with (
            memory_venue(
                echo_handler,
                VENUE,
                registry(),
                config=cfg,
                on_session_lost=lambda s: lost.append((s.session_id, trio.current_time())),
            ) as venue,
            venue.connect(PARTICIPANT, restart=one) as first,
            venue.connect(PARTICIPANT, restart=one),
        ):
            await trio.sleep(1.0)  # the new-session budget (a burst of 2) refills
            with pytest.raises(ts.TooManySessions) as info:
                async with venue.connect(PARTICIPANT, restart=one):
                    pass
            assert info.value.code is ts.CloseCode.SESSION_LIMIT and info.value.remote
            assert len(venue.sessions) == 2
            (gone,) = [s for s in venue.sessions if s.session_id == first.session_id]
            venue.transports[0].break_()  # the first one's connection is lost
            assert await gone.wait_state(ts.State.STALE) is ts.State.STALE
            detached = trio.current_time()
            async with venue.connect(PARTICIPANT, restart=one) as third:
                await third.send(b"hi")
                assert await third.receive() == b"hi"
                assert gone.state is ts.State.CLOSED
                assert isinstance(gone.error, ts.SessionExpired)
    assert lost == [(gone.session_id, detached)]
