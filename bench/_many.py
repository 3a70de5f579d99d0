"""The ``many`` scenario: N idle sessions on one venue, both stacks in the same run.

Clients in processes of up to 2,500 sessions ramp up, then a window measures the
heartbeat (raw: ping) RTT, an explicit echo RTT on a sample, the venue's CPU share,
its RSS growth per session and the garbage collections of every process.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from _common import percentile, proc_cpu_seconds, proc_rss_bytes
from _procs import Proc, log, medians

if TYPE_CHECKING:
    from run import Bench, Sizes


def run_many(bench: Bench, n: int) -> dict[str, Any]:
    """The ``many`` scenario at ``n`` sessions: each run, raw then ours."""
    z = bench.sizes
    rows: dict[str, list[dict[str, float]]] = {"raw": [], "ours": []}
    for run in range(bench.runs):
        for stack in ("raw", "ours"):
            m = _many_once(bench, stack, n)
            rows[stack].append(m)
            log(
                f"many n={n} run {run + 1} {stack}: rtt p99 {m['rtt_p99_ms']:.1f} ms, "
                f"venue cpu {m['venue_cpu_share']:.0%}, "
                f"{m['rss_per_session_kb']:.1f} KB/session, "
                f"gen2 collections venue/client {m['venue_gc_gen2']:.0f}/"
                f"{m['client_gc_gen2']:.0f}, longest GC pause venue/client "
                f"{m['venue_gc_max_pause_ms']:.0f}/{m['client_gc_max_pause_ms']:.0f} ms"
            )
    raw_m, ours_m = medians(rows["raw"]), medians(rows["ours"])
    held_all = ours_m["sessions"] >= n and raw_m["sessions"] >= n
    ratios: dict[str, Any] = {
        "rtt_p99": ours_m["rtt_p99_ms"] / raw_m["rtt_p99_ms"],
        "venue_cpu_share": ours_m["venue_cpu_share"] / raw_m["venue_cpu_share"],
        "rss_per_session": ours_m["rss_per_session_kb"] / raw_m["rss_per_session_kb"],
        "echo_p99": ours_m["echo_p99_ms"] / raw_m["echo_p99_ms"],
    }
    return {
        "scenario": "many",
        "unit": (
            "idle sessions, 1 s heartbeats (raw: ws.ping once a second); rtt = ours "
            "heartbeat RTT (stats.rtt) vs raw ping RTT; echo = explicit ping-pong on a sample"
        ),
        "params": {
            "n": n,
            "window_s": z.many_window,
            "client_processes": _client_procs(n),
            "gc_freeze": bench.gc_freeze,
            "gc_policy": bench.gc_policy,
        },
        "raw": raw_m,
        "ours": ours_m,
        # Comparing RTTs is meaningless when one side could not even hold N sessions.
        "ratio": ratios["rtt_p99"] if held_all else None,
        "ratios": ratios
        if held_all
        else {**ratios, "note": f"not comparable: a stack held fewer than {n} sessions"},
        # Each run's figures: goals such as "p99 < 20 ms in every run" need them.
        "per_run": rows,
        "targets": {
            f"{n} sessions all up": held_all,
            f"{n} sessions heartbeat RTT p99 < 50 ms": held_all and ours_m["rtt_p99_ms"] < 50,
        },
    }


def _many_once(bench: Bench, stack: str, n: int) -> dict[str, float]:
    z = bench.sizes
    k = _client_procs(n)
    config = bench.many_config if stack == "ours" else {}
    policy = {"gc_freeze": bench.gc_policy} if stack == "ours" else None
    with bench.server(stack, config, extra=policy) as srv:
        time.sleep(0.3)
        rss0 = proc_rss_bytes(srv.pid)
        clients: list[Proc] = []
        try:
            for i in range(k):
                share = n // k + (1 if i < n % k else 0)
                params = {
                    "port": srv.port,
                    "n": share,
                    "sample": max(1, z.many_sample // k),
                    "concurrency": 16,
                    "config": config,
                    "ramp_timeout": _ramp_timeout(z, n),
                    "gc_freeze": bench.gc_freeze,
                }
                clients.append(Proc(f"{stack}-many", params))
            ready = [c.expect("READY", _ramp_timeout(z, n) + 60) for c in clients]
            held = sum(r["n"] for r in ready)
            if bench.gc_freeze:
                srv.send_line("freeze")
            time.sleep(z.many_settle)
            rss1 = proc_rss_bytes(srv.pid)
            srv.send_line("gc-reset")
            srv.expect("GC", 30)  # resets the venue's pause counters
            cpu0, t0 = proc_cpu_seconds(srv.pid), time.monotonic()
            for c in clients:
                c.send_line(str(z.many_window))
            time.sleep(z.many_window)
            cpu_share = (proc_cpu_seconds(srv.pid) - cpu0) / (time.monotonic() - t0)
            results = [c.expect("RESULT", 60) for c in clients]
            srv.send_line("gc")
            venue_gc = srv.expect("GC", 30)
        finally:
            for c in clients:
                c.kill()
    if stack == "ours":
        rtts = [x for r in results for x in r["hb_rtt_us"]]
        extra = {
            "not_live": float(sum(r["not_live"] for r in results)),
            "resumes": float(sum(r["resumes"] for r in results)),
        }
    else:
        rtts = [x for r in results for x in r["ping_rtt_us"]]
        extra = {"pings_in_flight_at_end": float(sum(r["incomplete"] for r in results))}
    echo = [x for r in results for x in r["echo_rtt_us"]]
    return {
        "sessions": float(held),
        "rtt_p50_ms": percentile(rtts, 50) / 1e3,
        "rtt_p99_ms": percentile(rtts, 99) / 1e3,
        "rtt_samples": float(len(rtts)),
        "echo_p50_ms": percentile(echo, 50) / 1e3,
        "echo_p99_ms": percentile(echo, 99) / 1e3,
        "venue_cpu_share": cpu_share,
        "rss_per_session_kb": (rss1 - rss0) / max(1, held) / 1024,
        "client_cpu_share": sum(r["client_cpu_share"] for r in results),
        "ramp_s": max(r["ramp_s"] for r in ready),
        # Full collections pause a whole process; their length sets the tail.
        "venue_gc_gen2": venue_gc["gc_gen2"],
        "venue_gc_max_pause_ms": venue_gc["gc_max_pause_ms"],
        "venue_gc_tracked_objects": venue_gc["gc_tracked_objects"],
        "client_gc_gen2": sum(r["gc"]["gc_gen2"] for r in results),
        "client_gc_max_pause_ms": max(r["gc"]["gc_max_pause_ms"] for r in results),
        **extra,
    }


def _ramp_timeout(z: Sizes, n: int) -> float:
    """Beyond 1,000 sessions the ramp may take up to 120 s, even with ``--quick``
    (the 3,000-session goal counts the sessions up after 120 s)."""
    return z.many_ramp_timeout if n <= 1_000 else max(z.many_ramp_timeout, 120.0)


def _client_procs(n: int) -> int:
    """Client processes for ``n`` sessions: up to 2,500 sessions each."""
    return max(1, math.ceil(n / 2_500))
