"""Flaky links over real sockets, with the defaults a user gets: nothing lost, STALE on time.

Through a :class:`~trio_session.testing.FaultyProxy` between a real ``ts.serve``
and a real ``ts.connect``, both with the default ``SessionConfig`` and
``RestartPolicy``:

* a black hole both ways (no FIN, no RST) is STALE within 3 s of opening, LIVE
  again within 1 s of closing, and loses nothing; STALE comes at detection, so a
  longer ``close_timeout`` does not delay it;
* a link reset every 50-250 ms (seeded) delivers every message each way exactly
  once, in order, and the session never gives up: each connection resumes and
  makes progress, which the restart policy does not count against it.  The
  default run moves 20,000 messages each way; ``--soak`` the full 100,000.
"""

from __future__ import annotations

import random
import struct
from functools import partial

import attrs
import pytest
import trio

import trio_session as ts
from trio_session.testing import FaultyProxy

from .runtime_helpers import PARTICIPANT, VENUE, registry

_SEQ = struct.Struct("!Q")


@attrs.define
class Stream:
    """One direction: every index exactly once, in order."""

    received: int = 0
    bad: list[int] = attrs.Factory(list)

    def check(self, payload: bytes) -> None:
        (index,) = _SEQ.unpack_from(payload)
        if index == self.received:
            self.received += 1
        else:
            self.bad.append(index)

    async def receive(self, session: ts.Session, count: int) -> None:
        """Check what ``session`` receives until ``count`` messages arrived."""
        while self.received + len(self.bad) < count:
            for payload in await session.receive_batch():
                self.check(payload)


async def _send(session: ts.Session, count: int, *, batch: int, pause: float = 0.0) -> None:
    for first in range(0, count, batch):
        n = min(batch, count - first)
        await session.send_many([_SEQ.pack(i) + b"x" * 32 for i in range(first, first + n)])
        if pause:
            await trio.sleep(pause)


async def _venue(
    run: Run, done: trio.Event, count: int, batch: int, pause: float, session: ts.Session
) -> None:
    """The venue's handler: send ``count`` messages, check the participant's, then
    wait for the logout."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(_send, session, count, batch=batch, pause=pause))
        await run.c2v.receive(session, count)
        done.set()
        async for _ in session:
            pass


@attrs.define
class Run:
    """Both directions of one run, and the participant's state changes (time, state)."""

    c2v: Stream = attrs.Factory(Stream)
    v2c: Stream = attrs.Factory(Stream)
    states: list[tuple[float, ts.State]] = attrs.Factory(list)

    def first(self, state: ts.State, after: float) -> float:
        return next(t for t, s in self.states if s is state and t >= after)


# -- the black hole ----------------------------------------------------------------------------


@pytest.mark.parametrize("close_timeout", [None, 5.0], ids=["default-config", "close_timeout-5"])
async def test_black_hole_is_stale_within_3s_and_live_within_1s_of_closing(
    close_timeout: float | None,
) -> None:
    config = ts.SessionConfig() if close_timeout is None else ts.SessionConfig(close_timeout=5.0)
    run = Run()
    venue_done = trio.Event()
    count, batch, pause = 2_000, 10, 0.04  # a steady trickle both ways for ~8 s

    handler = partial(_venue, run, venue_done, count, batch, pause)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(ts.serve, handler, VENUE, registry(), "127.0.0.1", 0, config=config)
            )
            proxy: FaultyProxy = await nursery.start(
                partial(FaultyProxy.serve, "127.0.0.1", server.port)
            )
            async with ts.connect(
                f"ws://127.0.0.1:{proxy.port}/", PARTICIPANT, VENUE.public_key, config=config
            ) as session:

                async def watch() -> None:
                    async for state in session.transitions():
                        run.states.append((trio.current_time(), state))

                nursery.start_soon(watch)
                nursery.start_soon(partial(_send, session, count, batch=batch, pause=pause))
                await trio.sleep(1.0)  # traffic flows
                opened = trio.current_time()
                proxy.black_hole("both")
                await session.wait_state(ts.State.STALE)
                await trio.sleep(opened + 5.0 - trio.current_time())  # a 5 s hole
                closed = trio.current_time()
                proxy.restore()
                await session.wait_state(ts.State.LIVE)
                await run.v2c.receive(session, count)
                await venue_done.wait()
                stats = session.stats
            nursery.cancel_scope.cancel()
    stale = run.first(ts.State.STALE, opened) - opened
    live = run.first(ts.State.LIVE, closed) - closed
    print(
        f"black hole 5 s, close_timeout {config.close_timeout}: STALE after {stale:.3f} s, "
        f"LIVE {live:.3f} s after it closed; resumes={stats.resumes}"
    )
    assert stale <= 3.0, run.states
    assert live <= 1.0, run.states
    for stream in (run.c2v, run.v2c):
        assert stream.received == count and stream.bad == []
    assert stats.stale_spells == 1


# -- a link reset every 50-250 ms ------------------------------------------------------------


async def _flapping(count: int, seed: int, pause: float) -> tuple[Run, int, ts.SessionStats, float]:
    """``count`` messages each way in batches of 100 every ``pause`` seconds (so that
    the resets land on traffic throughout), while the link is reset every
    50-250 ms."""
    run = Run()
    venue_done = trio.Event()
    rng = random.Random(seed)
    resets = 0

    handler = partial(_venue, run, venue_done, count, 100, pause)

    async def reset_forever(proxy: FaultyProxy) -> None:
        nonlocal resets
        while True:
            await trio.sleep(rng.uniform(0.05, 0.25))
            resets += proxy.reset_all()

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(partial(ts.serve, handler, VENUE, registry(), "127.0.0.1", 0))
        proxy: FaultyProxy = await nursery.start(
            partial(FaultyProxy.serve, "127.0.0.1", server.port, seed=seed)
        )
        async with ts.connect(
            f"ws://127.0.0.1:{proxy.port}/", PARTICIPANT, VENUE.public_key
        ) as session:
            nursery.start_soon(reset_forever, proxy)
            nursery.start_soon(partial(_send, session, count, batch=100, pause=pause))
            await run.v2c.receive(session, count)
            await venue_done.wait()
            stats = session.stats
        nursery.cancel_scope.cancel()
    return run, resets, stats, trio.current_time() - started


def _assert_flapping(
    run: Run, count: int, resets: int, stats: ts.SessionStats, took: float
) -> None:
    print(
        f"{count} messages each way, {resets} connections reset every 50-250 ms: "
        f"resumes={stats.resumes} stale_spells={stats.stale_spells} in {took:.1f} s"
    )
    for stream in (run.c2v, run.v2c):
        assert stream.received == count and stream.bad == [], stream
    assert stats.resumes >= resets - 1  # every reset connection resumed (the last maybe not yet)


async def test_a_link_reset_every_50_to_250_ms_loses_nothing() -> None:
    # 20,000 each way over ~8 s of traffic: the backoff grows with each drop, so
    # this shows a handful of resumes; the soak runs long enough to pass max_restarts.
    with trio.fail_after(120):
        run, resets, stats, took = await _flapping(20_000, seed=13, pause=0.04)
    _assert_flapping(run, 20_000, resets, stats, took)
    assert resets >= 3


@pytest.mark.soak
async def test_100k_each_way_through_a_link_reset_every_50_to_250_ms() -> None:
    # ~75 s of traffic: more connections resumed within 60 s than max_restarts (20),
    # each of which made progress, so the default policy never gives up.
    with trio.fail_after(1200):
        run, resets, stats, took = await _flapping(100_000, seed=13, pause=0.075)
    _assert_flapping(run, 100_000, resets, stats, took)
    assert resets > ts.RestartPolicy().max_restarts
