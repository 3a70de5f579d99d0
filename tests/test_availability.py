"""Availability under attack, over real sockets against ``ts.serve``.

Each test runs an attack from docs/security.md ("Availability") and measures what a
legitimate participant sees:

* the lockout attack: ClientHellos claiming a participant's key id flood the venue
  from other addresses while the participant's connection is reset again and again;
  every resume must succeed within a second;
* the many-sessions attack: a registered identity opens sessions at full rate and
  drops each at once; a participant's round-trip time and the venue's task count must
  stay bounded;
* a control-frame flood from an authenticated session: that session is closed with
  ``CONTROL_FLOOD``, the others are unaffected;
* a resume right after a venue CLOSE gets a new session at once.

The attackers run in a separate process (tests/avail_flood.py), so their own work
does not slow the participant down; the long versions run under ``--soak``.  The
memory budget and slow-consumer tests are in tests/test_budget.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_session as ts
from trio_session.protocol import CloseReceived
from trio_session.protocol._crypto import kx_keypair
from trio_session.protocol._wire import ClientHello, FrameType, encode_body, pack_header
from trio_session.testing import FaultyProxy

from .probes import JsonLines, RttProbe, needs_many_loopbacks, p99
from .runtime_helpers import OTHER, PARTICIPANT, VENUE, echo_handler, task_names, url, venue
from .test_attacks_live import raw_participant

HERE = Path(__file__).resolve().parent


@asynccontextmanager
async def flood(*args: str) -> AsyncIterator[JsonLines]:
    # Niced: on a 2-core test machine the attacker shares the venue's cores, and an
    # attacker on its own machine would not take CPU time from the venue.
    command = ["nice", "-n", "10", sys.executable, str(HERE / "avail_flood.py"), *args]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        yield JsonLines(process, "attacker process")
    finally:
        with trio.CancelScope(shield=True):
            process.kill()
            await process.wait()


def live_venue(
    handler: Callable[[ts.Session], Awaitable[None]] = echo_handler,
    *,
    on_session_lost: Callable[[ts.Session], None] | None = None,
    **config: Any,
) -> AbstractAsyncContextManager[ts.VenueServer]:
    """A ``ts.serve`` venue on loopback serving PARTICIPANT and OTHER."""
    reg = ts.KeyRegistry()
    for ident in (PARTICIPANT, OTHER):
        reg.add(ident.key_id, ident.public_key)
    cfg = ts.SessionConfig(**config)
    return venue(handler, reg, config=cfg, on_session_lost=on_session_lost)


def claiming_hello(identity: ts.Identity) -> bytes:
    """A new-session ClientHello that claims ``identity``'s key id (its owner never
    sent it; anyone can build it from the public key id)."""
    hello = ClientHello(
        ver=[1],
        modes=["mac"],
        key_id=identity.key_id,
        p_nonce=bytes(32),
        e_p=kx_keypair(bytes(range(32)))[0],
        window=64,
    )
    return pack_header(FrameType.CLIENT_HELLO, 0, 0, 0) + encode_body(hello)


# -- the lockout attack -------------------------------------------------------------------


async def _lockout(duration: float, reset_every: float, sources: int) -> None:
    """Claims of the victim's key id flood the venue from ``sources`` other addresses
    for ``duration`` seconds; the victim's connection is reset every ``reset_every``."""
    resumes: list[float] = []
    async with (
        live_venue() as server,
        trio.open_nursery() as nursery,
    ):
        proxy: FaultyProxy = await nursery.start(FaultyProxy.serve, "127.0.0.1", server.port)
        policy = ts.RestartPolicy(stable_after=0.5)  # every reset is a first failure
        async with (
            ts.connect(
                f"ws://127.0.0.1:{proxy.port}/", PARTICIPANT, VENUE.public_key, restart=policy
            ) as victim,
            flood(
                "claim",
                str(server.port),
                str(sources),
                "48",
                "0",
                claiming_hello(PARTICIPANT).hex(),
            ) as f,
        ):
            await trio.sleep(1.0)  # the flood ramps up
            before, since = await f.ask(), trio.current_time()
            end = since + duration - 1.0
            while trio.current_time() + reset_every <= end:
                await trio.sleep(reset_every)
                start = trio.current_time()
                proxy.reset_all()
                with trio.move_on_after(10):
                    await victim.wait_state(ts.State.STALE, ts.State.RESUMING)
                    await victim.wait_state(ts.State.LIVE)
                    await victim.send(b"order")
                    assert await victim.receive() == b"order"
                resumes.append(trio.current_time() - start)
            after, seconds = await f.ask(), trio.current_time() - since
            assert victim.stats.resumes == len(resumes)  # resumed, never a new session
        nursery.cancel_scope.cancel()
    signed = after.get("m2", 0) - before.get("m2", 0)
    limited = after.get("reject_400", 0) - before.get("reject_400", 0)
    print(
        f"\nlockout flood: {(signed + limited) / seconds:.0f} claims/s answered "
        f"({signed / seconds:.0f}/s signed M2, {limited / seconds:.0f}/s RATE_LIMITED) "
        f"from {sources} addresses; {len(resumes)} resumes: "
        f"max {max(resumes) * 1e3:.0f} ms, all {[round(r * 1e3) for r in resumes]} ms"
    )
    assert limited > 0, "the flood never reached the per-(key, address) budgets"
    assert signed > 0
    assert len(resumes) >= 2
    assert max(resumes) < 1.0, resumes


@pytest.mark.timing
@needs_many_loopbacks
async def test_claimed_key_id_flood_never_delays_a_resume() -> None:
    with trio.fail_after(30):
        # Two addresses: their per-(key, address) budgets (50/s each) are exhausted even
        # when the attacker shares a busy machine with other tests.
        await _lockout(duration=8.0, reset_every=2.0, sources=2)


@pytest.mark.soak
@pytest.mark.timing
@needs_many_loopbacks
async def test_claimed_key_id_flood_never_delays_a_resume_soak() -> None:
    with trio.fail_after(120):
        await _lockout(duration=60.0, reset_every=5.0, sources=8)


# -- the many-sessions attack ---------------------------------------------------------------


async def _many_sessions(duration: float) -> None:
    """OTHER, a registered identity, opens sessions at the venue's full per-key rate
    and drops each at once; PARTICIPANT measures its round-trip time."""
    defaults = ts.SessionConfig()
    rate, cap = defaults.handshake_rate_per_key, defaults.max_sessions_per_key
    lost: list[ts.Session] = []
    peak_sessions = peak_tasks = 0
    async with live_venue(on_session_lost=lost.append) as server:
        venue = server._venue
        async with ts.connect(url(server), PARTICIPANT, VENUE.public_key) as legit:
            probe = RttProbe(legit)
            async with trio.open_nursery() as probing:
                probing.start_soon(probe.run)
                await trio.sleep(2.0)
                tasks_before = len(task_names())
                attack_start = time.monotonic()  # the probe's clock
                seed = bytes(range(64, 96)).hex()  # OTHER's (tests/protocol/helpers.py)
                args = (
                    "churn",
                    str(server.port),
                    "4",
                    "8",
                    str(rate),
                    seed,
                    VENUE.public_key.hex(),
                )
                async with flood(*args) as f:
                    while time.monotonic() < attack_start + duration:
                        await trio.sleep(0.05)
                        peak_sessions = max(peak_sessions, venue.gate.by_key.count(OTHER.key_id))
                        peak_tasks = max(peak_tasks, len(task_names()))
                    report = await f.ask()
                attack_end = time.monotonic()
                await trio.sleep(2.0)
                probing.cancel_scope.cancel()
    before = probe.window(attack_start - 1.9, attack_start)
    after = probe.window(attack_end + 0.5, attack_end + 2.0)
    base = max(p99(before), p99(after))
    attacked = probe.window(attack_start + 0.5, attack_end)
    made = report.get("confirmed", 0)
    print(
        f"\nmany sessions: {made} sessions in {duration:.0f} s ({made / duration:.0f}/s), "
        f"{len(lost)} ended by the cap (dead man's switch); peak {peak_sessions} sessions of "
        f"the key (cap {cap}), peak {peak_tasks} tasks (before {tasks_before}); RTT p99 "
        f"{p99(before) * 1e3:.2f} ms before, {p99(attacked) * 1e3:.2f} ms during, "
        f"{p99(after) * 1e3:.2f} ms after"
    )
    assert report["started"] >= 0.8 * rate * duration  # it ran at the per-key rate
    assert made >= cap  # sessions beyond the cap were opened ...
    assert peak_sessions <= cap
    assert len(lost) >= made - cap - 8  # ... and ended the oldest: their switch fired
    # Tasks: the cap's sessions (handler, end watcher, TTL timer each) and the
    # attacker's 8 connections in flight, not thousands.
    assert peak_tasks <= tasks_before + 4 * cap + 8 * 12, peak_tasks
    assert p99(attacked) < 3 * base


@pytest.mark.timing
async def test_many_sessions_of_one_key_stay_capped() -> None:
    with trio.fail_after(30):
        await _many_sessions(duration=8.0)


@pytest.mark.soak
@pytest.mark.timing
async def test_many_sessions_of_one_key_stay_capped_soak() -> None:
    with trio.fail_after(90):
        await _many_sessions(duration=40.0)


# -- a resume right after a venue CLOSE -------------------------------------------------------


async def test_resume_right_after_a_venue_close_gets_a_new_session_at_once() -> None:
    """The venue ends a session (its handler returned: CLOSE NORMAL); the participant
    does not echo the CLOSE and resumes at once.  The venue must not take the
    resume over (it used to answer M2 ``resumed=true`` and then drop the connection
    for up to ``close_timeout``): it answers with a new session, confirmed at once."""

    async def one_message(session: ts.Session) -> None:
        await session.receive()

    with trio.fail_after(10):
        async with (
            live_venue(one_message, close_timeout=5.0) as server,
            raw_participant(server) as first,
        ):
            await first.send_data(b"last order")
            closes: list[CloseReceived] = []
            while not closes:
                closes = [e for e in await first.recv_events() if isinstance(e, CloseReceived)]
            assert [c.code for c in closes] == [ts.CloseCode.NORMAL]
            record = first.conn.session
            assert record is not None
            start = trio.current_time()
            # No echo, the WebSocket still open: resume right away.
            async with raw_participant(server, resume=record) as second:
                answered = trio.current_time() - start
                assert second.done is not None and not second.done.resumed
                assert second.session_id != record.session_id
                await second.send_data(b"new order")
    print(f"\nresume after a venue CLOSE: new session confirmed in {answered * 1e3:.1f} ms")
    assert answered < 1.0  # not close_timeout (5 s) later
