"""Resume under fire, over real sockets: exactly once, in order, whatever the faults.

The default run holds the acceptance of the supervisor issue (100,000 messages
each way, >= 50 abrupt resets) and a quick chaos run (about 5 s) with every
fault kind twice, in each frame protection mode.  ``nox -s soak`` (pytest --soak)
runs the longer ones: the 60-fault short soak (about 30 s, each mode) and the full
soak, >= 1,000 faults of every kind over >= 1,000,000 messages each way.  Runs
without an explicit mode use "aead", the default over ``ws://``.
"""

from __future__ import annotations

import pytest
import trio

from .chaos import FAULT_KINDS, ChaosResult, run_chaos


def _assert_clean(result: ChaosResult) -> None:
    print(result.summary())
    for name, stream in (("c2v", result.c2v), ("v2c", result.v2c)):
        assert stream.received == result.messages, (name, result.summary())
        assert stream.duplicated == 0, (name, result.summary())
        assert stream.reordered == 0, (name, result.summary())
    # No socket or fd left behind by the sessions, the proxy or the venue.
    assert result.fds_after <= result.fds_before + 2, result.summary()


async def test_100k_messages_each_way_with_50_abrupt_resets() -> None:
    with trio.fail_after(240):
        result = await run_chaos(100_000, 55, kinds=("reset",), seed=7)
    _assert_clean(result)
    assert result.faults["reset"] == 55
    # Every reset interrupted a LIVE connection: STALE, then LIVE again.
    assert result.stale_spells >= 55 and result.live_again >= 55
    assert result.resumes >= 55


@pytest.mark.parametrize("mode", ["mac", "aead"])
async def test_every_fault_kind_twice(mode: str) -> None:
    # Seed 406 draws each of the six kinds exactly twice in 12 faults.
    with trio.fail_after(60):
        result = await run_chaos(20_000, 12, kinds=FAULT_KINDS, seed=406, mode=mode)
    _assert_clean(result)
    assert result.faults == dict.fromkeys(FAULT_KINDS, 2), result.faults
    assert result.resumes >= result.faults["reset"]


async def test_one_message_per_send_every_fault_kind_twice() -> None:
    # One message per call: senders take the fast path (their own frame) whenever the
    # peer was just heard from, and otherwise queue behind the writer, which coalesces.
    with trio.fail_after(120):
        result = await run_chaos(20_000, 12, kinds=FAULT_KINDS, seed=406, batch=1)
    _assert_clean(result)
    assert result.faults == dict.fromkeys(FAULT_KINDS, 2), result.faults
    assert result.resumes >= result.faults["reset"]


@pytest.mark.soak
@pytest.mark.parametrize("mode", ["mac", "aead"])
async def test_short_soak_every_fault_kind(mode: str) -> None:
    with trio.fail_after(120):
        result = await run_chaos(60_000, 60, kinds=FAULT_KINDS, seed=11, mode=mode)
    _assert_clean(result)
    assert all(count > 0 for count in result.faults.values()), result.faults
    assert result.resumes >= result.faults["reset"]


@pytest.mark.soak
async def test_soak_1000_faults_1m_messages(request: pytest.FixtureRequest) -> None:
    with trio.fail_after(4800):
        result = await run_chaos(1_000_000, 1_000, kinds=FAULT_KINDS, seed=2026, batch=200)
    _assert_clean(result)
    assert result.total_faults >= 1_000
    # Memory flat: RSS must not grow with the number of messages or faults.
    assert result.rss_after_kb - result.rss_before_kb < 64 * 1024, result.summary()
    request.config.stash[SOAK_SUMMARY] = result.summary()


SOAK_SUMMARY = pytest.StashKey[str]()
