"""Session states (``_lifecycle.py``): the history that makes waiters edge-triggered."""

from __future__ import annotations

import trio
import trio.testing

import trio_session as ts
from trio_session._lifecycle import HISTORY, State, StateHistory
from trio_session.testing import memory_venue

from .runtime_helpers import FAST, VENUE, Echo, participant, registry, state_of


def _state(h: StateHistory) -> State:
    return h.state  # a call: type checkers do not narrow it


async def _follow(h: StateHistory, seen: list[State]) -> None:
    async for state in h.transitions():
        seen.append(state)


def test_enter_records_changes_only_and_closed_is_final() -> None:
    h = StateHistory()
    assert h.state is State.CONNECTING
    assert not h.enter(State.CONNECTING)
    assert h.enter(State.LIVE) and h.enter(State.STALE) and h.enter(State.RESUMING)
    # A failed reconnection attempt continues the same outage: one spell, not two.
    assert h.enter(State.STALE) and h.stale_spells == 1
    assert h.enter(State.RESUMING) and h.enter(State.LIVE) and h.enter(State.STALE)
    assert h.stale_spells == 2
    assert h.enter(State.CLOSED)
    assert not h.enter(State.LIVE) and _state(h) is State.CLOSED
    assert h.stale_spells == 2


async def test_transitions_see_a_one_round_spell_and_end_with_closed() -> None:
    h = StateHistory()
    seen: list[State] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_follow, h, seen)
            await trio.testing.wait_all_tasks_blocked()
            # No checkpoint in between: the follower wakes once and sees them all.
            h.enter(State.LIVE)
            h.enter(State.STALE)
            h.enter(State.RESUMING)
            h.enter(State.LIVE)
            await trio.testing.wait_all_tasks_blocked()
            assert seen == [State.LIVE, State.STALE, State.RESUMING, State.LIVE]
            h.enter(State.CLOSED)
    assert seen[-1] is State.CLOSED and len(seen) == 5
    # After CLOSED a new follower ends at once.
    assert [s async for s in h.transitions()] == []


async def test_wait_is_level_at_first_then_edge_triggered() -> None:
    h = StateHistory()
    h.enter(State.LIVE)
    with trio.fail_after(5):
        assert await h.wait(State.LIVE) is State.LIVE  # already there
        result: list[State] = []

        async def waiter() -> None:
            result.append(await h.wait(State.STALE))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            h.enter(State.STALE)  # a spell of no scheduler round at all
            h.enter(State.RESUMING)
            h.enter(State.LIVE)
        assert result == [State.STALE]
        h.enter(State.CLOSED)
        assert await h.wait(State.STALE) is State.CLOSED  # CLOSED always ends a wait


async def test_a_follower_more_than_history_behind_skips_the_oldest() -> None:
    h = StateHistory()
    seen: list[State] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_follow, h, seen)
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(HISTORY):  # 2 * HISTORY transitions while it does not run
                h.enter(State.STALE)
                h.enter(State.LIVE)
            await trio.testing.wait_all_tasks_blocked()
            # It sees the most recent HISTORY transitions, in order.
            assert seen == [State.STALE, State.LIVE] * (HISTORY // 2)
            h.enter(State.CLOSED)
    assert len(seen) == HISTORY + 1 and seen[-1] is State.CLOSED


# -- through a supervised session ----------------------------------------------------------------


async def test_wait_state_sees_every_stale_spell(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A task already blocked in wait_state(STALE) must be woken by each drop,
    however quickly the resume completes afterwards."""
    handler = Echo()
    drops = 10
    seen: list[ts.State | None] = []
    with trio.fail_after(600):
        async with (
            memory_venue(handler, VENUE, registry()) as venue,
            participant(venue, restart=FAST) as session,
        ):
            for _ in range(drops):
                await trio.sleep(11.0)
                result: list[ts.State] = []
                woken = trio.Event()

                async def waiter(out: list[ts.State] = result, done: trio.Event = woken) -> None:
                    out.append(await session.wait_state(ts.State.STALE))
                    done.set()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(waiter)
                    await trio.testing.wait_all_tasks_blocked()
                    venue.break_all()
                    with trio.move_on_after(1.0):
                        await woken.wait()
                    nursery.cancel_scope.cancel()
                await trio.sleep(1.0)  # the resume completes meanwhile (zero latency)
                assert state_of(session) is ts.State.LIVE
                seen.append(result[0] if result else None)
            assert session.stats.resumes == drops
    assert seen == [ts.State.STALE] * drops
