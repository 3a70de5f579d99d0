"""The venue's garbage-collector policy (``serve(gc_freeze=True)``, ``_gc.py``).

The decisions under a mock clock with a recording stand-in for the ``gc`` module;
one real venue over loopback to show the policy runs, freezes, and unfreezes when
the venue stops.
"""

from __future__ import annotations

import gc
from types import SimpleNamespace
from typing import Any

import trio
import trio.testing

import trio_session as ts
from trio_session._gc import FREEZE_INTERVAL, GcFreezer

from .runtime_helpers import PARTICIPANT, VENUE, url, venue


class RecordingGc(SimpleNamespace):
    """Records the calls the policy makes instead of touching the collector."""

    def __init__(self) -> None:
        super().__init__(calls=[])

    def freeze(self) -> None:
        self.calls.append("freeze")

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")

    def collect(self, generation: int = 2) -> int:
        self.calls.append(f"collect({generation})")
        return 0


def freezer() -> tuple[GcFreezer, RecordingGc]:
    fake = RecordingGc()
    return GcFreezer(gc_module=fake), fake  # type: ignore[arg-type]


async def test_sessions_opened_together_are_frozen_once_after_the_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy, fake = freezer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(policy.run)
        await trio.testing.wait_all_tasks_blocked()
        assert fake.calls == []  # nothing opened: nothing to do
        t0 = trio.current_time()
        for _ in range(3):
            policy.session_opened()
        with trio.fail_after(FREEZE_INTERVAL * 2):
            await policy.stepped.wait()
        assert trio.current_time() - t0 == FREEZE_INTERVAL
        assert fake.calls == ["collect(1)", "freeze"]
        await trio.sleep(10 * FREEZE_INTERVAL)
        assert policy.freezes == 1  # no new session: no new freeze
        policy.connection_resumed()  # a new connection's objects are frozen too
        with trio.fail_after(FREEZE_INTERVAL * 2):
            await policy.stepped.wait()
        assert policy.freezes == 2 and policy.live == 3
        nursery.cancel_scope.cancel()
    assert fake.calls[-1] == "unfreeze"  # leaving the venue unfreezes


async def test_churn_beyond_a_quarter_of_the_live_sessions_collects_in_full_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy, fake = freezer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(policy.run)
        for _ in range(8):
            policy.session_opened()
        with trio.fail_after(5):
            await policy.stepped.wait()
        fake.calls.clear()
        policy.session_ended()
        policy.session_ended()  # 2 ended, 6 live: more than a quarter
        with trio.fail_after(5):
            await policy.stepped.wait()
        assert fake.calls == ["unfreeze", "collect(2)", "freeze"]
        assert policy.collections == 1 and policy.ended == 0
        fake.calls.clear()
        policy.session_ended()  # 1 of 5 live: no collection owed
        await trio.sleep(10 * FREEZE_INTERVAL)
        assert fake.calls == []
        nursery.cancel_scope.cancel()


async def test_serve_with_gc_freeze_freezes_established_sessions_and_unfreezes_on_exit() -> None:
    assert gc.get_freeze_count() == 0
    with trio.fail_after(15):
        async with venue(gc_freeze=True) as server:
            policy: Any = server._venue.freezer
            assert isinstance(policy, GcFreezer)
            stepped = policy.stepped
            async with ts.connect(url(server), PARTICIPANT, VENUE.public_key) as session:
                await session.send(b"ping")
                assert await session.receive() == b"ping"
                await stepped.wait()
                assert policy.freezes == 1
                assert gc.get_freeze_count() > 0
        assert gc.get_freeze_count() == 0
