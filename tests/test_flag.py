"""Flag: a trio.Event that allocates nothing until someone waits on it."""

from __future__ import annotations

import trio
import trio.testing

from trio_session._flag import Flag


async def test_flag_wakes_every_waiter_and_stays_set() -> None:
    flag = Flag()
    woken: list[int] = []

    async def waiter(i: int) -> None:
        await flag.wait()
        woken.append(i)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, 1)
            nursery.start_soon(waiter, 2)
            await trio.testing.wait_all_tasks_blocked()
            assert not flag.is_set() and woken == []
            flag.set()
            flag.set()  # idempotent
        assert sorted(woken) == [1, 2] and flag.is_set()
        with trio.testing.assert_checkpoints():
            await flag.wait()  # already set: returns at once, still a checkpoint


async def test_flag_wait_is_cancellable() -> None:
    flag = Flag()
    with trio.fail_after(5):
        with trio.move_on_after(0.01) as scope:
            await flag.wait()
        assert scope.cancelled_caught and not flag.is_set()
