"""Byte budgets and slow consumers, over real sockets (and under the mock clock).

* Participants push 256 KiB orders into a venue whose handler never reads: what the
  venue buffers stays within ``inbound_max_bytes`` per session, and in all within
  ``max_buffered_bytes``, beyond which the sessions holding the most are shed with
  ``MEMORY_BUDGET``.  The venue runs in its own process (tests/budget_venue.py) and
  its RSS is read from ``/proc``.
* A participant that stops both reading and sending is ended with ``SLOW_CONSUMER``
  at ``slow_consumer_timeout`` after its stall began, although its heartbeat timeout
  detaches it first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trio_session as ts
from trio_session._budget import PAYLOAD_SHARE
from trio_session._driver import run_handshake
from trio_session.protocol import ClientConnection
from trio_session.testing import FaultyProxy, memory_venue

from .probes import JsonLines
from .runtime_helpers import OTHER, PARTICIPANT, STEP, VENUE, registry
from .test_availability import live_venue

HERE = Path(__file__).resolve().parent
MiB = 2**20
ORDER = bytes(256 * 1024)


@asynccontextmanager
async def venue_process(**config: Any) -> AsyncIterator[tuple[JsonLines, int]]:
    """tests/budget_venue.py in a subprocess, and the port it serves on."""
    command = [sys.executable, str(HERE / "budget_venue.py"), json.dumps(config)]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        venue = JsonLines(process, "venue process")
        with trio.fail_after(20):
            port = int((await venue.line())["port"])
        yield venue, port
    finally:
        with trio.CancelScope(shield=True):
            process.kill()
            await process.wait()


async def _push(
    url: str,
    identity: ts.Identity,
    config: ts.SessionConfig,
    connected: trio.MemorySendChannel[None],
    go: trio.Event,
) -> None:
    """Connect, then (once ``go`` is set) send 256 KiB orders as fast as the venue's
    credit allows, on and on across the new sessions that replace a shed one."""
    async with ts.connect(url, identity, VENUE.public_key, config=config) as session:
        await connected.send(None)  # the venue confirmed: its session exists
        await go.wait()
        while True:
            await session.send(ORDER)


async def _flood_memory(seconds: float, senders: int, **venue_config: Any) -> dict[str, Any]:
    """``senders`` participants push orders for ``seconds``; returns the venue's
    RSS growth (peak), buffered bytes (peak) and sessions shed."""
    # The participants' own queues stay small: only the venue's memory is measured.
    config = ts.SessionConfig(outbound_max_bytes=4 * MiB, replay_max_bytes=8 * MiB)
    async with venue_process(**venue_config) as (venue, port):
        url = f"ws://127.0.0.1:{port}/"
        go = trio.Event()
        connected_tx, connected = trio.open_memory_channel[None](senders)
        async with trio.open_nursery() as nursery:
            for i in range(senders):
                identity = (PARTICIPANT, OTHER)[i % 2]
                nursery.start_soon(_push, url, identity, config, connected_tx, go)
            for _ in range(senders):
                await connected.receive()
            # The baseline: the venue with its sessions up, before any order.
            before = await venue.ask()
            peak_rss, peak_buffered = before["rss"], 0
            go.set()
            end = trio.current_time() + seconds
            while trio.current_time() < end:
                await trio.sleep(0.05)
                report = await venue.ask()
                peak_rss = max(peak_rss, report["rss"])
                peak_buffered = max(peak_buffered, report["buffered"])
            nursery.cancel_scope.cancel()
        last = await venue.ask()
    return {
        "growth": peak_rss - before["rss"],
        "buffered": peak_buffered,
        "shed": last["shed"],
        "before": before["rss"],
    }


@pytest.mark.timing  # measures the venue's RSS: alone, not beside three other workers
async def test_three_sessions_pushing_large_orders_stay_within_the_venue_budget() -> None:
    """Three sessions push 256 KiB orders at a venue that reads nothing: each may park
    ``inbound_max_bytes`` (32 MiB here), together more than ``max_buffered_bytes``
    (64 MiB): the venue sheds the largest instead of growing."""
    budget = 64 * MiB
    with trio.fail_after(60):
        got = await _flood_memory(6.0, 3, inbound_max_bytes=32 * MiB, max_buffered_bytes=budget)
    print(
        f"\nmemory budget {budget // MiB} MiB: venue RSS {got['before'] / MiB:.0f} MiB, "
        f"growth {got['growth'] / MiB:.1f} MiB (peak), buffered peak "
        f"{got['buffered'] / MiB:.1f} MiB (limit {budget * PAYLOAD_SHARE / MiB:.0f} MiB), "
        f"{got['shed']} sessions shed"
    )
    assert got["shed"] >= 1
    # Payload is kept within 7/8 of the budget (a frame or two may be in flight); the
    # rest is headroom for what the venue cannot count (transport buffers, allocator).
    assert got["buffered"] <= budget * PAYLOAD_SHARE + 2 * MiB
    assert got["growth"] < budget


@pytest.mark.soak
async def test_three_sessions_pushing_large_orders_default_budget_soak() -> None:
    """The same with the default configuration: 256 MiB per session, 1 GiB in all."""
    defaults = ts.SessionConfig()
    with trio.fail_after(120):
        got = await _flood_memory(20.0, 3)
    print(
        f"\ndefault budget: venue RSS growth {got['growth'] / MiB:.0f} MiB, buffered peak "
        f"{got['buffered'] / MiB:.0f} MiB, {got['shed']} shed"
    )
    assert got["buffered"] <= 3 * defaults.inbound_max_bytes + 2 * MiB
    assert got["growth"] < defaults.max_buffered_bytes


# -- a participant that stops reading and sending ---------------------------------------------


class MarketData:
    """Venue handler: streams to its session until the session ends; records the end."""

    def __init__(self) -> None:
        self.sessions: list[ts.Session] = []
        self.ended: list[tuple[float, ts.SessionError]] = []

    async def handler(self, session: ts.Session) -> None:
        self.sessions.append(session)
        try:
            while True:
                await session.send(b"tick" * 25)
        except ts.SessionError as exc:
            self.ended.append((trio.current_time(), exc))


@pytest.mark.timing
async def test_silent_participant_gets_slow_consumer_at_the_configured_time() -> None:
    """The participant's link goes silent both ways (a black hole: it neither reads
    nor sends).  Its heartbeat timeout (0.6 s) detaches the session first, yet the
    venue ends it with SLOW_CONSUMER ``slow_consumer_timeout`` (1.5 s) after its queue
    stalled, not after ``resume_ttl`` (10 s), and drops what it had queued for it."""
    stall = 1.5
    cfg = dict(
        heartbeat_interval=0.2, heartbeat_timeout=0.6, slow_consumer_timeout=stall, resume_ttl=10.0
    )
    feed = MarketData()
    lost: list[ts.Session] = []
    with trio.fail_after(15):
        async with (
            live_venue(feed.handler, on_session_lost=lost.append, **cfg) as server,
            trio.open_nursery() as nursery,
        ):
            proxy: FaultyProxy = await nursery.start(FaultyProxy.serve, "127.0.0.1", server.port)
            config = ts.SessionConfig(inbound_capacity=16)
            url = f"ws://127.0.0.1:{proxy.port}/"
            async with ts.connect(url, PARTICIPANT, VENUE.public_key, config=config) as p:
                await p.receive()
                (session,) = feed.sessions
                assert session.session_id is not None
                control = server._venue.sessions[bytes.fromhex(session.session_id)]
                proxy.black_hole()  # from now on it neither reads nor sends
                assert await session.wait_state(ts.State.STALE) is ts.State.STALE
                detached = trio.current_time()
                assert await session.wait_state(ts.State.CLOSED) is ts.State.CLOSED
                ended = trio.current_time()
                proxy.restore()
                # Back, the participant finds its session gone: a new one (after the
                # messages it had received before).
                with pytest.raises(ts.SessionReset):
                    while True:
                        await p.receive()
            nursery.cancel_scope.cancel()
    stalled = control.stalled_since
    assert stalled is not None
    print(
        f"\nslow consumer: the heartbeat timeout (0.6 s) ended its connection; detached "
        f"{detached - stalled:.2f} s and ended {ended - stalled:.2f} s after its queue "
        f"stalled (slow_consumer_timeout {stall} s, resume_ttl 10 s)"
    )
    assert isinstance(session.error, ts.SlowConsumer)
    assert lost == [session]  # the dead man's switch fired
    assert detached <= ended
    assert stall <= ended - stalled < stall + 0.3
    assert feed.ended and isinstance(feed.ended[0][1], ts.SlowConsumer)
    assert session.stats.outbound_depth == 0  # its queue was dropped, not kept


async def test_silent_participant_slow_consumer_timing_under_a_mock_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The same, exact to the timer step: a participant that completes the handshake
    and then never reads nor sends (default timers: STALE at ``stale_after``, the
    connection dropped at ``heartbeat_timeout``, slow consumer at 30 s, resume TTL
    60 s)."""
    cfg = ts.SessionConfig()
    assert cfg.heartbeat_timeout < cfg.slow_consumer_timeout < cfg.resume_ttl
    feed = MarketData()
    lost: list[tuple[float, ts.Session]] = []
    with trio.fail_after(300):
        async with (
            memory_venue(
                feed.handler,
                VENUE,
                registry(),
                config=cfg,
                on_session_lost=lambda s: lost.append((trio.current_time(), s)),
            ) as venue,
            trio.open_nursery() as nursery,
        ):
            transport = await venue.connector(nursery)
            conn = ClientConnection(
                PARTICIPANT,
                VENUE.public_key,
                ts.SessionConfig(inbound_capacity=4),
                clock=trio.current_time,
            )
            await run_handshake(transport, conn)
            await trio.testing.wait_all_tasks_blocked()
            (session,) = feed.sessions
            assert session.session_id is not None
            control = venue._venue.sessions[bytes.fromhex(session.session_id)]
            stalled = control.stalled_since
            assert stalled is not None  # 4 messages of credit, long gone
            states: list[tuple[float, ts.State]] = []

            async def watch() -> None:
                async for state in session.transitions():
                    states.append((trio.current_time(), state))

            nursery.start_soon(watch)
            await session.wait_state(ts.State.CLOSED)
            nursery.cancel_scope.cancel()
    ((ended, gone),) = lost
    assert gone is session and isinstance(session.error, ts.SlowConsumer)
    # STALE once, at stale_after of silence (the handshake's last frame came just
    # before the stall), then ended at the slow-consumer deadline, never LIVE again.
    assert [state for _, state in states] == [ts.State.STALE, ts.State.CLOSED], states
    assert states[0][0] - stalled == pytest.approx(cfg.stale_after, abs=STEP)
    assert ended - stalled == pytest.approx(cfg.slow_consumer_timeout, abs=STEP)
