"""Durable-store scenarios: what ``SqliteStore`` costs, and how fast a killed process recovers.

* ``durable_throughput`` and ``durable_rtt`` run the ``throughput`` (``send_many``)
  and ``rtt`` workloads twice per run, alternating: venue and participant both
  on the default in-memory store, then both on an ``SqliteStore`` (a fresh file
  per process).  Ratios are SQLite over memory, from the same run.
* ``restart_recovery``: a participant receives a paced flow from a venue on an
  ``SqliteStore``.  ``venue_kill``: the venue process is killed with SIGKILL and
  started again at once on the same file and port; timed from the kill to the
  participant's session LIVE again with the venue's replay done.
  ``participant_kill``: the participant process (on its own ``SqliteStore``) is
  killed and started again; timed from the kill to the new process's session
  LIVE (resumed, replay done), which includes starting Python.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import median, percentile
from _procs import Proc, log, medians

if TYPE_CHECKING:
    from run import Bench

__all__ = ["durable_rtt", "durable_throughput", "restart_recovery"]

#: Participant supervision for restart_recovery: retry fast while the venue restarts.
FAST_RESTART = {"max_delay": 0.05, "stable_after": 0.05, "max_outage": 60.0}


def _stores(tmp: Path, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"store": str(tmp / f"venue-{tag}.db")}, {"store": str(tmp / f"participant-{tag}.db")}


def _alternate(
    bench: Bench, role: str, params: dict[str, Any], summarise: Any, name: str
) -> dict[str, dict[str, float]]:
    """Run ``role`` against a memory venue and an SQLite venue, alternating."""
    rows: dict[str, list[dict[str, float]]] = {"memory": [], "sqlite": []}
    with tempfile.TemporaryDirectory(prefix="ts-bench-") as tmp:
        for run in range(bench.runs):
            for label in ("memory", "sqlite"):
                venue, participant = ({}, {}) if label == "memory" else _stores(Path(tmp), str(run))
                with bench.server("ours", tag=label, extra=venue) as srv:
                    res = bench.client(role, {"port": srv.port, **params, **participant}, tag=label)
                rows[label].append(summarise(res))
                log(f"{name} run {run + 1} {label}: {rows[label][-1]}")
    return {label: medians(r) for label, r in rows.items()}


def durable_throughput(bench: Bench) -> dict[str, Any]:
    z = bench.sizes
    params = {"n": z.throughput_n, "batch": z.batch}
    m = _alternate(
        bench,
        "ours-throughput",
        params,
        lambda res: {"msgs_per_s": res["msgs_per_s"]},
        "durable_throughput",
    )
    ratio = m["sqlite"]["msgs_per_s"] / m["memory"]["msgs_per_s"]
    return {
        "scenario": "durable_throughput",
        "unit": "msgs/s, one-way venue -> participant, send_many batches of 100, 100 B",
        "params": params,
        "raw": None,
        "ours": m,
        "ratio": ratio,
        "ratios": {"sqlite/memory": ratio},
        "targets": {"send_many with SqliteStore >= 0.5x memory": ratio >= 0.5},
    }


def durable_rtt(bench: Bench) -> dict[str, Any]:
    z = bench.sizes
    params = {"n": z.rtt_n, "warmup": z.rtt_warmup}

    def summarise(res: dict[str, Any]) -> dict[str, float]:
        s = res["rtt_us"]
        return {"p50_us": percentile(s, 50), "p99_us": percentile(s, 99)}

    m = _alternate(bench, "ours-rtt", params, summarise, "durable_rtt")
    ratios = {
        "p50": m["sqlite"]["p50_us"] / m["memory"]["p50_us"],
        "p99": m["sqlite"]["p99_us"] / m["memory"]["p99_us"],
    }
    return {
        "scenario": "durable_rtt",
        "unit": "us, participant -> venue -> participant, one message in flight",
        "params": params,
        "raw": None,
        "ours": m,
        "ratio": ratios["p50"],
        "ratios": ratios,
        "targets": {"rtt p50 with SqliteStore <= 1.3x memory": ratios["p50"] <= 1.3},
    }


def restart_recovery(bench: Bench) -> dict[str, Any]:
    kills = bench.sizes.restart_kills
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="ts-bench-") as tmp:
        venue_params = {"store": str(Path(tmp) / "venue.db")}
        participant = {"store": str(Path(tmp) / "participant.db"), "restart": FAST_RESTART}
        for label in ("venue_kill", "participant_kill"):
            samples: list[float] = []
            for run in range(bench.runs):
                venue = Proc("ours-server", {"config": {}, **venue_params})
                port = venue.port = venue.expect("PORT", 30)
                client = Proc(
                    "ours-restart-participant", {"port": port, "flow": 2000, **participant}
                )
                try:
                    client.expect("LIVE", 30)
                    for _ in range(kills):
                        time.sleep(random.uniform(0.2, 0.4))
                        if label == "venue_kill":
                            client.send_line("watch")
                            client.expect("WATCHING", 10)
                            t0 = time.monotonic()
                            venue.kill()
                            params = {"config": {}, "port": port, **venue_params}
                            venue = Proc("ours-server", params)
                            venue.port = venue.expect("PORT", 30)
                        else:
                            t0 = time.monotonic()
                            client.kill()
                            client = Proc("ours-restart-participant", {"port": port, **participant})
                        samples.append((client.expect("LIVE", 60)["t"] - t0) * 1e3)
                    log(f"restart_recovery run {run + 1} {label}: {samples[-kills:]}")
                finally:
                    client.kill()
                    venue.kill()
                for f in Path(tmp).iterdir():  # a fresh session for the next run
                    f.unlink()
            out[label] = {
                "p50_ms": percentile(samples, 50),
                "p99_ms": percentile(samples, 99),
                "max_ms": max(samples),
                "median_ms": median(samples),
                "kills": float(len(samples)),
            }
    return {
        "scenario": "restart_recovery",
        "unit": "ms from SIGKILL to the participant LIVE again with the replay done",
        "params": {"kills_per_run": kills, "flow_msgs_per_s": 2000},
        "raw": None,
        "ours": out,
        "ratio": None,
        "ratios": {"note": "n/a: no in-memory equivalent (a memory venue loses the session)"},
        "targets": {},
    }
