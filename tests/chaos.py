"""Chaos runner: a participant and a venue exchanging sequenced messages through a
FaultyProxy that injects faults at random; checks exactly-once, in-order delivery.

Used by tests/test_chaos.py at two scales: the default run (a few seconds) and
the soak (``nox -s soak``: >= 1,000 faults, >= 1,000,000 messages each way).
"""

from __future__ import annotations

import gc
import os
import random
import resource
import struct
from functools import partial

import attrs
import trio
import trio.testing

import trio_session as ts
from trio_session._faults import Direction
from trio_session.testing import FaultyProxy

from .runtime_helpers import PARTICIPANT, VENUE, registry

#: Timers short enough that a half-open link (black hole) is noticed quickly.
CHAOS_CONFIG = ts.SessionConfig(
    heartbeat_interval=0.1,
    heartbeat_timeout=0.4,
    handshake_timeout=1.0,
    close_timeout=0.5,
    resume_ttl=60.0,
    ratchet_interval=0.5,
    rekey_interval=2.0,
    reject_after=4.0,
)
#: Reconnect at once, never give up during a chaos run.
CHAOS_POLICY = ts.RestartPolicy(
    base_delay=0.001,
    max_delay=0.05,
    max_restarts=1_000_000,
    window=1.0,
    max_outage=30.0,
    auth_retries=1_000_000,
)
FAULT_KINDS = ("reset", "corrupt", "truncate", "black_hole", "delay", "throttle")
_SEQ = struct.Struct("!Q")
_DBG: dict[str, object] = {}  # debugging hooks for stall diagnosis


@attrs.define
class Stream:
    """Checks one direction: every index 0..n-1 exactly once, in order."""

    received: int = 0
    duplicated: int = 0
    reordered: int = 0

    def check(self, payload: bytes) -> None:
        (index,) = _SEQ.unpack_from(payload)
        if index == self.received:
            self.received += 1
        elif index < self.received:
            self.duplicated += 1
        else:
            self.reordered += 1  # a gap: something before it was lost


class Pacer:
    """Splits the run into ``slots``: senders may send slot k's messages only
    after k faults were injected, so faults land on traffic throughout the run."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.allowed = 0
        self._changed = trio.Event()

    def advance(self) -> None:
        self.allowed += 1
        self._changed.set()
        self._changed = trio.Event()

    def release_all(self) -> None:
        self.allowed = self.slots
        self._changed.set()

    async def wait_for(self, slot: int) -> None:
        while self.allowed < slot:
            await self._changed.wait()


async def _paced_send(
    session: ts.Session, pacer: Pacer, messages: int, batch: int, fill: bytes
) -> None:
    for first in range(0, messages, batch):
        # Segment k of slots + 1 equal segments needs k faults; the last needs all.
        await pacer.wait_for(min(pacer.slots, first * (pacer.slots + 1) // messages))
        n = min(batch, messages - first)
        await session.send_many([_SEQ.pack(i) + fill for i in range(first, first + n)])


@attrs.define
class ChaosResult:
    messages: int
    faults: dict[str, int]
    c2v: Stream
    v2c: Stream
    stale_spells: int
    live_again: int
    resumes: int
    resets_done: int
    fds_before: int
    fds_after: int
    rss_before_kb: int
    rss_after_kb: int
    seconds: float

    @property
    def total_faults(self) -> int:
        return sum(self.faults.values())

    def summary(self) -> str:
        return (
            f"faults={self.total_faults} {self.faults} messages={self.messages} each way; "
            f"c2v received={self.c2v.received} dup={self.c2v.duplicated} "
            f"reordered/lost={self.c2v.reordered}; v2c received={self.v2c.received} "
            f"dup={self.v2c.duplicated} reordered/lost={self.v2c.reordered}; "
            f"stale->live={self.stale_spells}->{self.live_again} resumes={self.resumes}; "
            f"fds {self.fds_before}->{self.fds_after}; "
            f"rss {self.rss_before_kb}->{self.rss_after_kb} KiB; {self.seconds:.1f}s"
        )


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # pragma: no cover


async def run_chaos(
    messages: int,
    faults: int,
    *,
    kinds: tuple[str, ...] = ("reset",),
    seed: int = 1,
    batch: int = 50,
    mode: str = "aead",
) -> ChaosResult:
    """Exchange ``messages`` each way while injecting ``faults`` faults of ``kinds``, with
    frames protected in ``mode`` (both ends accept only it)."""
    config = attrs.evolve(CHAOS_CONFIG, modes=(mode,))
    rng = random.Random(seed)
    gc.collect()
    fds_before = len(os.listdir("/proc/self/fd"))
    rss_before = _rss_kb()
    start = trio.current_time()
    c2v, v2c = Stream(), Stream()
    venue_done = trio.Event()
    pacer = Pacer(faults)
    _DBG.update(c2v=c2v, v2c=v2c, pacer=pacer, venue_sessions=[])

    async def handler(session: ts.Session) -> None:
        _DBG["venue_sessions"].append(session)  # type: ignore[attr-defined]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_paced_send, session, pacer, messages, batch, b"v" * 92)
            while c2v.received + c2v.duplicated + c2v.reordered < messages:
                for payload in await session.receive_batch():
                    c2v.check(payload)
            venue_done.set()
            async for _ in session:  # until the participant logs out
                pass

    counts = dict.fromkeys(kinds, 0)
    stale_spells = live_again = 0
    async with trio.open_nursery() as nursery:
        server: ts.VenueServer = await nursery.start(
            partial(ts.serve, handler, VENUE, registry(), "127.0.0.1", 0, config=config)
        )
        proxy: FaultyProxy = await nursery.start(
            partial(FaultyProxy.serve, "127.0.0.1", server.port, seed=seed)
        )
        async with ts.connect(
            f"ws://127.0.0.1:{proxy.port}/",
            PARTICIPANT,
            VENUE.public_key,
            config=config,
            restart=CHAOS_POLICY,
        ) as session:
            _DBG.update(session=session, proxy=proxy, counts=counts)

            async def watch() -> None:
                nonlocal stale_spells, live_again
                while True:
                    await session.wait_state(ts.State.STALE, ts.State.RESUMING)
                    stale_spells += 1
                    await session.wait_state(ts.State.LIVE)
                    live_again += 1

            async def inject() -> None:
                # One fault per slot of traffic, each injected while LIVE, so
                # every fault interrupts a working connection carrying data.
                for _ in range(faults):
                    await session.wait_state(ts.State.LIVE)
                    await trio.sleep(rng.uniform(0.0, 0.01))  # mid-stream
                    kind = rng.choice(kinds)
                    counts[kind] += 1
                    await _apply(proxy, kind, rng)
                    # Let the session notice before the next fault (a reset always
                    # breaks the link; milder faults may not), so faults do not pile up.
                    with trio.move_on_after(1.0 if kind == "reset" else 0.2):
                        await session.wait_state(ts.State.STALE, ts.State.RESUMING)
                    pacer.advance()
                pacer.release_all()

            async with trio.open_nursery() as inner:
                inner.start_soon(watch)
                inner.start_soon(inject)
                inner.start_soon(_paced_send, session, pacer, messages, batch, b"c" * 92)
                while v2c.received + v2c.duplicated + v2c.reordered < messages:
                    for payload in await session.receive_batch():
                        v2c.check(payload)
                await venue_done.wait()
                inner.cancel_scope.cancel()
            resumes = session.stats.resumes
        nursery.cancel_scope.cancel()
    gc.collect()
    await trio.testing.wait_all_tasks_blocked()
    return ChaosResult(
        messages=messages,
        faults=counts,
        c2v=c2v,
        v2c=v2c,
        stale_spells=stale_spells,
        live_again=live_again,
        resumes=resumes,
        resets_done=counts.get("reset", 0),
        fds_before=fds_before,
        fds_after=len(os.listdir("/proc/self/fd")),
        rss_before_kb=rss_before,
        rss_after_kb=_rss_kb(),
        seconds=trio.current_time() - start,
    )


async def _apply(proxy: FaultyProxy, kind: str, rng: random.Random) -> None:
    direction: Direction = rng.choice(("c2s", "s2c"))
    if kind == "reset":
        proxy.reset_all()
    elif kind == "corrupt":
        proxy.corrupt(direction, flips=rng.randint(1, 3))
    elif kind == "truncate":
        proxy.truncate(direction)
    elif kind == "black_hole":
        proxy.black_hole(direction)
        await trio.sleep(CHAOS_CONFIG.heartbeat_timeout * 1.5)  # half-open: heartbeats notice
        proxy.restore()
    elif kind == "delay":
        proxy.delay(rng.choice((0.01, 0.05, 0.6)), direction)  # 0.6 s > heartbeat timeout
        await trio.sleep(0.7)
        proxy.restore()
    elif kind == "throttle":
        proxy.throttle(20_000, direction)
        await trio.sleep(0.3)
        proxy.restore()
    else:  # pragma: no cover
        raise ValueError(kind)
