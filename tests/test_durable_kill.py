"""kill -9 of a venue or participant process on an ``SqliteStore`` loses nothing.

Real processes (``tests/durable_apps.py``) over loopback; each kills itself with
SIGKILL at a point chosen by a seeded random draw: inside a writer batch
(frames sealed and not stored, or stored and not sent), in the middle of a DH
rekey (a new resume secret installed and not yet stored), during a resume
handshake (ClientFinish verified, or built and not sent).  Aggressive rekey and
ratchet timers make rekeys happen every few hundred milliseconds.  ``--soak``
runs a longer variant with more kills, some of them from outside at random times.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from .cli_helpers import Cli, keys
from .durable_helpers import read_log, start_participant, start_venue, wait_killed

#: Orders (and execution reports) exchanged per test, and per soak run (more
#: kills need a longer exchange: each kill must happen before it ends).
ORDERS = 20_000
SOAK_ORDERS = 150_000
SEED = 20261129


def _plans(rng: random.Random) -> list[dict[str, Any]]:
    """One kill inside a writer batch, one mid-rekey, one during a resume handshake."""
    return [
        {"kind": "write", "nth": rng.randint(20, 120), "before": rng.random() < 0.5},
        {"kind": "rekey", "nth": rng.randint(1, 3)},
        {"kind": "resume"},
    ]


def _run_venue_kills(
    tmp: Path, plans: list[dict[str, Any] | None], seed: int, orders: int = ORDERS
) -> None:
    """One venue process per plan, each killed by it; the last (None) runs to the end."""
    k = keys(tmp)
    rng = random.Random(seed)
    venue, port = start_venue(k, tmp, crash=plans[0])
    participant = start_participant(k, tmp, port, orders, store=False)
    apps: list[Cli] = [venue, participant]
    try:
        participant.wait_for("^CONNECTED$", timeout=30)  # a first connect must succeed
        for i, plan in enumerate(plans):
            if i:
                venue, _ = start_venue(k, tmp, port=port, crash=plan)
                apps.append(venue)
            if plan is None:
                break
            if plan["kind"] == "external":
                time.sleep(rng.uniform(0.05, 0.5))
                venue.signal(signal.SIGKILL)
            wait_killed(venue)
        participant.wait_for("^DONE$", timeout=300)
        assert participant.finish() == 0, participant.dump()
    finally:
        for app in apps:
            app.stop()
    vseen, pseen = read_log(tmp / "venue.log"), read_log(tmp / "participant.log")
    expected = [p["kind"] for p in plans if p is not None and p["kind"] != "external"]
    assert [kind.split("-")[0] for kind in vseen.kills] == expected
    vseen.check_complete(orders)
    pseen.check_exactly_once_in_order(orders)  # execution reports: exactly once, in order
    assert len(set(vseen.sessions)) == 1 and len(set(pseen.sessions)) == 1  # no SessionReset


def test_venue_killed_three_times_loses_nothing(tmp_path: Path) -> None:
    _run_venue_kills(tmp_path, [*_plans(random.Random(SEED)), None], SEED)


def _run_participant_kills(
    tmp: Path, plans: list[dict[str, Any] | None], seed: int, orders: int = ORDERS
) -> None:
    k = keys(tmp)
    rng = random.Random(seed)
    venue, port = start_venue(k, tmp)
    apps: list[Cli] = [venue]
    try:
        for plan in plans:
            participant = start_participant(k, tmp, port, orders, crash=plan)
            apps.append(participant)
            if plan is None:
                participant.wait_for("^DONE$", timeout=300)
                assert participant.finish() == 0, participant.dump()
                break
            if plan["kind"] == "external":  # at a random moment once it runs
                participant.wait_for("^CONNECTED$", timeout=30)
                time.sleep(rng.uniform(0.0, 0.5))
                participant.signal(signal.SIGKILL)
            wait_killed(participant)
    finally:
        for app in apps:
            app.stop()
    vseen, pseen = read_log(tmp / "venue.log"), read_log(tmp / "participant.log")
    expected = [p["kind"] for p in plans if p is not None and p["kind"] != "external"]
    assert [kind.split("-")[0] for kind in pseen.kills] == expected
    assert len(set(pseen.sessions)) == 1, pseen.sessions  # the same session id after each restart
    assert len(set(vseen.sessions)) == 1, vseen.sessions
    vseen.check_complete(orders)  # every order reached the venue (repeats flagged)
    pseen.check_complete(orders)  # every report reached the participant (repeats flagged)


def test_participant_killed_three_times_resumes_the_same_session(tmp_path: Path) -> None:
    _run_participant_kills(tmp_path, [*_plans(random.Random(SEED)), None], SEED)


def _soak_plans(rng: random.Random, make: Any) -> list[dict[str, Any] | None]:
    plans: list[dict[str, Any] | None] = []
    for _ in range(3):
        plans += make(rng)
        plans.append({"kind": "external"})
    rng.shuffle(plans)
    while plans[0] is not None and plans[0]["kind"] == "resume":  # a resume needs a restart first
        plans.append(plans.pop(0))
    return [*plans, None]


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(5))
def test_soak_venue_killed_many_times(tmp_path: Path, seed: int) -> None:
    plans = _soak_plans(random.Random(seed), _plans)
    _run_venue_kills(tmp_path, plans, seed, SOAK_ORDERS)


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(5))
def test_soak_participant_killed_many_times(tmp_path: Path, seed: int) -> None:
    plans = _soak_plans(random.Random(seed), _plans)
    _run_participant_kills(tmp_path, plans, seed, SOAK_ORDERS)
