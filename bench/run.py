"""trio_session benchmarks: the same workloads over raw trio-websocket and over trio_session.

Usage::

    python bench/run.py [--quick] [--json] [--runs N] [--scenario NAME ...]

Every server and client is a separate process (``bench/worker.py``), so each
side has its own interpreter and GIL, as in production.  Scenarios (see
bench/README.md): throughput, per_message, rtt, establish, recovery, many, rekey, modes,
durable_throughput, durable_rtt, restart_recovery.  Figures are medians over
``--runs``; ratios are ours / raw (for throughput: ours msgs/s over raw msgs/s,
for latencies: ours time over raw time), for ``modes`` aead / mac, for
``durable_*`` SqliteStore / the in-memory store.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

import attrs
from _common import (
    median,
    percentile,
    proc_cpu_seconds,
    raise_nofile,
)
from _compare import compare_saved, print_compare
from _many import run_many
from _modes import run_modes
from _procs import Proc, WorkerError, kill_all, log, medians
from _report import finite, machine_info, print_table
from durable import durable_rtt, durable_throughput, restart_recovery

#: What ``--compare`` runs (unless ``--scenario`` / ``--many-n`` say otherwise).
COMPARE_SCENARIOS = ("throughput", "per_message", "rtt", "establish", "many")
COMPARE_MANY_N = (1_000, 3_000)
#: Timers of the many-sessions scenario: 1 s heartbeats, the target load for idle sessions.
HEARTBEAT_CONFIG = {"heartbeat_interval": 1.0, "heartbeat_timeout": 3.0}
#: Aggressive key rotation for the rekey-under-load scenario.
REKEY_CONFIG = {
    "rekey_interval": 1.0,
    "reject_after": 3.0,
    "ratchet_interval": 0.2,
    "ratchet_messages": 1000,
}
#: Recovery scenario, isolated drops: a connection up this long counts as stable,
#: so every drop is a first failure (immediate reconnect, as after a long quiet spell).
ISOLATED_RESTART = {"stable_after": 0.05}


@attrs.frozen
class Sizes:
    throughput_n: int
    batch: int
    rtt_n: int
    rtt_warmup: int
    establish_m: int
    recovery_resets: int
    recovery_rate: float
    many_n: tuple[int, ...]
    many_window: float
    many_settle: float
    many_sample: int
    #: Give up connecting after this long and measure the sessions that are up.
    many_ramp_timeout: float
    rekey_seconds: float
    rekey_rate: float
    #: restart_recovery: kills per run (of each kind).
    restart_kills: int


QUICK = Sizes(
    throughput_n=50_000,
    batch=100,
    rtt_n=2_000,
    rtt_warmup=200,
    establish_m=100,
    recovery_resets=10,
    recovery_rate=5_000,
    many_n=(1_000,),
    many_window=5.0,
    many_settle=2.0,
    many_sample=10,
    many_ramp_timeout=30.0,
    rekey_seconds=3.0,
    rekey_rate=20_000,
    restart_kills=5,
)
FULL = Sizes(
    throughput_n=200_000,
    batch=100,
    rtt_n=10_000,
    rtt_warmup=500,
    establish_m=300,
    recovery_resets=30,
    recovery_rate=5_000,
    many_n=(1_000, 10_000),
    many_window=10.0,
    many_settle=3.0,
    many_sample=20,
    many_ramp_timeout=120.0,
    rekey_seconds=5.0,
    rekey_rate=20_000,
    restart_kills=10,
)

SCENARIOS = (
    "throughput",
    "per_message",
    "rtt",
    "establish",
    "recovery",
    "rekey",
    "many",
    "modes",
    "durable_throughput",
    "durable_rtt",
    "restart_recovery",
)
#: Scenarios that are functions of ``durable.py`` rather than Bench methods.
DURABLE = {
    "durable_throughput": durable_throughput,
    "durable_rtt": durable_rtt,
    "restart_recovery": restart_recovery,
}


class Bench:
    def __init__(
        self,
        sizes: Sizes,
        runs: int,
        profile: tuple[Path, str] | None,
        *,
        gc_freeze: bool = False,
        gc_policy: bool = True,
        many_config: dict[str, Any] | None = None,
    ) -> None:
        self.gc_freeze = gc_freeze
        #: many: ours serves with ``serve(gc_freeze=True)``, the documented policy.
        self.gc_policy = gc_policy
        #: SessionConfig fields of the many-sessions scenario (ours).
        self.many_config = HEARTBEAT_CONFIG if many_config is None else many_config
        self.sizes = sizes
        self.runs = runs
        self.profile = profile

    @contextmanager
    def server(
        self,
        stack: str,
        config: dict[str, Any] | None = None,
        tag: str = "",
        extra: dict[str, Any] | None = None,
    ) -> Iterator[Proc]:
        params = {"config": config or {}, **(extra or {})}
        proc = Proc(f"{stack}-server", params, self.profile, tag)
        try:
            proc.port = proc.expect("PORT", 30)
            yield proc
        finally:
            proc.stop(grace=120.0 if self.profile else 2.0)

    def client(self, role: str, params: dict[str, Any], timeout: float = 120, tag: str = "") -> Any:
        proc = Proc(role, params, self.profile, tag)
        try:
            result = proc.expect("RESULT", timeout)
            with suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=120 if self.profile else 3)
            return result
        finally:
            proc.kill()

    # -- scenarios ---------------------------------------------------------------------

    def throughput(self) -> dict[str, Any]:
        z = self.sizes
        n = z.throughput_n
        rows: dict[str, list[dict[str, float]]] = {"raw": [], "send_many": [], "send": []}
        # One server per variant, so that a --profile report covers one workload.
        with (
            self.server("raw") as raw,
            self.server("ours", tag="send_many") as ours_many,
            self.server("ours", tag="send") as ours_send,
        ):
            for run in range(self.runs):
                for variant, srv, role, extra in (
                    ("raw", raw, "raw-throughput", {}),
                    ("send_many", ours_many, "ours-throughput", {"batch": z.batch}),
                    ("send", ours_send, "ours-throughput", {"batch": 0}),
                ):
                    cpu0 = proc_cpu_seconds(srv.pid)
                    params = {"port": srv.port, "n": n, **extra}
                    res = self.client(role, params, tag=variant)
                    srv_cpu = proc_cpu_seconds(srv.pid) - cpu0
                    rows[variant].append(
                        {
                            "msgs_per_s": res["msgs_per_s"],
                            "server_cpu_us_per_msg": srv_cpu / n * 1e6,
                            "client_cpu_us_per_msg": res["client_cpu_s"] / n * 1e6,
                        }
                    )
                    log(f"throughput run {run + 1} {variant}: {res['msgs_per_s']:,.0f} msgs/s")
        raw_m = medians(rows["raw"])
        many_m = medians(rows["send_many"])
        send_m = medians(rows["send"])
        ratios = {
            "send_many": many_m["msgs_per_s"] / raw_m["msgs_per_s"],
            "send": send_m["msgs_per_s"] / raw_m["msgs_per_s"],
        }
        return {
            "scenario": "throughput",
            "unit": "msgs/s (one-way venue -> participant, 100 B payloads)",
            "params": {"n": n, "batch": z.batch},
            "raw": raw_m,
            "ours": {"send_many": many_m, "send": send_m},
            "ratio": ratios["send_many"],
            "ratios": ratios,
            "targets": {"send_many throughput >= 20x raw": ratios["send_many"] >= 20},
        }

    def per_message(self) -> dict[str, Any]:
        """One ``send()`` per message at the venue, one ``receive()`` per message at the
        participant (raw: ``send_message`` / ``get_message``, as in ``throughput``)."""
        n = self.sizes.throughput_n
        rows: dict[str, list[dict[str, float]]] = {"raw": [], "ours": []}
        with self.server("raw") as raw, self.server("ours", tag="per_message") as ours:
            for run in range(self.runs):
                for stack, srv, extra in (
                    ("raw", raw, {}),
                    ("ours", ours, {"batch": 0, "receive": "message"}),
                ):
                    cpu0 = proc_cpu_seconds(srv.pid)
                    params = {"port": srv.port, "n": n, **extra}
                    res = self.client(f"{stack}-throughput", params, tag="per_message")
                    rows[stack].append(
                        {
                            "msgs_per_s": res["msgs_per_s"],
                            "server_cpu_us_per_msg": (proc_cpu_seconds(srv.pid) - cpu0) / n * 1e6,
                            "client_cpu_us_per_msg": res["client_cpu_s"] / n * 1e6,
                        }
                    )
                    log(f"per_message run {run + 1} {stack}: {res['msgs_per_s']:,.0f} msgs/s")
        raw_m, ours_m = medians(rows["raw"]), medians(rows["ours"])
        ratio = ours_m["msgs_per_s"] / raw_m["msgs_per_s"]
        return {
            "scenario": "per_message",
            "unit": "msgs/s (one-way venue -> participant, one send()/receive() per message)",
            "params": {"n": n},
            "raw": raw_m,
            "ours": ours_m,
            "ratio": ratio,
            "ratios": {"msgs_per_s": ratio},
            "targets": {"per-message throughput >= 3x raw": ratio >= 3},
        }

    def modes(self) -> dict[str, Any]:
        return run_modes(self, log)

    def _paired(
        self,
        scenario: str,
        params: dict[str, Any],
        summarise: Callable[[dict[str, Any]], dict[str, float]],
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Run ``scenario``'s client against a raw and an ours server, alternating,
        ``runs`` times; return the medians of ``summarise`` per stack."""
        rows: dict[str, list[dict[str, float]]] = {"raw": [], "ours": []}
        with self.server("raw") as raw, self.server("ours") as ours:
            for run in range(self.runs):
                for stack, srv in (("raw", raw), ("ours", ours)):
                    res = self.client(f"{stack}-{scenario}", {"port": srv.port, **params})
                    rows[stack].append(summarise(res))
                    p50 = rows[stack][-1]["p50_us"]
                    log(f"{scenario} run {run + 1} {stack}: p50 {p50:.0f} us")
        return medians(rows["raw"]), medians(rows["ours"])

    def rtt(self) -> dict[str, Any]:
        z = self.sizes

        def summarise(res: dict[str, Any]) -> dict[str, float]:
            s = res["rtt_us"]
            return {
                "p50_us": percentile(s, 50),
                "p99_us": percentile(s, 99),
                "mean_us": sum(s) / len(s),
            }

        raw_m, ours_m = self._paired("rtt", {"n": z.rtt_n, "warmup": z.rtt_warmup}, summarise)
        ratios = {
            "p50": ours_m["p50_us"] / raw_m["p50_us"],
            "p99": ours_m["p99_us"] / raw_m["p99_us"],
        }
        return {
            "scenario": "rtt",
            "unit": "us, participant -> venue -> participant, one message in flight",
            "params": {"n": z.rtt_n, "warmup": z.rtt_warmup},
            "raw": raw_m,
            "ours": ours_m,
            "ratio": ratios["p50"],
            "ratios": ratios,
            "targets": {
                "rtt p50 <= 1.25x": ratios["p50"] <= 1.25,
                "rtt p99 <= 1.4x": ratios["p99"] <= 1.4,
            },
        }

    def establish(self) -> dict[str, Any]:
        z = self.sizes

        def summarise(res: dict[str, Any]) -> dict[str, float]:
            return {
                "p50_us": percentile(res["establish_us"], 50),
                "p99_us": percentile(res["establish_us"], 99),
                "connect_close_p50_us": percentile(res["cycle_us"], 50),
            }

        raw_m, ours_m = self._paired("establish", {"m": z.establish_m}, summarise)
        ratios = {
            "p50": ours_m["p50_us"] / raw_m["p50_us"],
            "connect_close_p50": ours_m["connect_close_p50_us"] / raw_m["connect_close_p50_us"],
        }
        return {
            "scenario": "establish",
            "unit": "us until usable (raw: WebSocket open; ours: handshake confirmed)",
            "params": {"m": z.establish_m},
            "raw": raw_m,
            "ours": ours_m,
            "ratio": ratios["p50"],
            "ratios": ratios,
            "targets": {"establish p50 <= 2.0x": ratios["p50"] <= 2.0},
        }

    def recovery(self) -> dict[str, Any]:
        z = self.sizes
        out: dict[str, dict[str, Any]] = {}
        proxy_name = "?"
        with self.server("ours") as ours:
            for label, restart, resets in (
                ("isolated", ISOLATED_RESTART, z.recovery_resets),
                ("back_to_back", {}, max(3, z.recovery_resets // 2)),
            ):
                rows = []
                for run in range(self.runs):
                    res = self.client(
                        "ours-recovery",
                        {
                            "port": ours.port,
                            "resets": resets,
                            "rate": z.recovery_rate,
                            "restart": restart,
                        },
                    )
                    rows.append(
                        {
                            "live_p50_ms": percentile(res["live_ms"], 50),
                            "live_p99_ms": percentile(res["live_ms"], 99),
                            "first_msg_p50_ms": percentile(res["first_msg_ms"], 50),
                            "first_msg_p99_ms": percentile(res["first_msg_ms"], 99),
                            "lost": res["lost"],
                            "duplicated": res["duplicated"],
                            "resumes": res["resumes"],
                        }
                    )
                    proxy_name = res["proxy"]
                    log(
                        f"recovery run {run + 1} {label}: live p50 {rows[-1]['live_p50_ms']:.1f} ms"
                        f", lost {res['lost']}, dup {res['duplicated']}"
                    )
                m: dict[str, Any] = medians(rows)
                m["proxy"] = proxy_name
                m["lost"] = sum(r["lost"] for r in rows)
                m["duplicated"] = sum(r["duplicated"] for r in rows)
                out[label] = m
        iso = out["isolated"]
        return {
            "scenario": "recovery",
            "unit": "ms from TCP reset to LIVE with replay done / to first message delivered",
            "params": {"resets_per_run": z.recovery_resets, "flow_msgs_per_s": z.recovery_rate},
            "raw": None,
            "ours": out,
            "ratio": None,
            "ratios": {"note": "n/a: raw trio-websocket has no resume"},
            "targets": {
                "recovery p50 <= 20 ms": iso["live_p50_ms"] <= 20,
                "0 lost, 0 duplicated": out["isolated"]["lost"] + out["back_to_back"]["lost"] == 0
                and iso["duplicated"] + out["back_to_back"]["duplicated"] == 0,
            },
        }

    def rekey(self) -> dict[str, Any]:
        z = self.sizes
        out: dict[str, dict[str, float]] = {}
        for label, config in (("rekey", REKEY_CONFIG), ("baseline", {})):
            rows = []
            with self.server("ours", config) as srv:
                for run in range(self.runs):
                    res = self.client(
                        "ours-rekey",
                        {
                            "port": srv.port,
                            "rate": z.rekey_rate,
                            "seconds": z.rekey_seconds,
                            "config": config,
                        },
                        timeout=z.rekey_seconds + 60,
                    )
                    rows.append(res)
                    log(
                        f"rekey run {run + 1} {label}: lost {res['lost']}, gap "
                        f"{res['max_gap_ms']:.1f} ms, rekeys {res['rekeys']}"
                    )
            out[label] = {
                "sent": sum(r["sent"] or 0 for r in rows),
                "lost": sum(r["lost"] for r in rows),
                "duplicated": sum(r["duplicated"] for r in rows),
                "max_gap_ms": median([r["max_gap_ms"] for r in rows]),
                "rekeys": median([r["rekeys"] for r in rows]),
                "ratchets": median([r["ratchets"] for r in rows]),
                "reconnects": sum(r["connections"] - 1 for r in rows),
            }
        rk = out["rekey"]
        return {
            "scenario": "rekey",
            "unit": f"{z.rekey_seconds:g} s flow at {z.rekey_rate:,.0f} msgs/s, {REKEY_CONFIG}",
            "params": {"seconds": z.rekey_seconds, "rate": z.rekey_rate, "config": REKEY_CONFIG},
            "raw": None,
            "ours": out,
            "ratio": None,
            "ratios": {
                "note": "n/a: raw has no keys; baseline = same flow with default config",
                "max_gap_vs_baseline": rk["max_gap_ms"] / out["baseline"]["max_gap_ms"],
            },
            "targets": {
                "rekey under load loses 0": rk["lost"] == 0 and rk["duplicated"] == 0,
                "rekeys happened": rk["rekeys"] >= 1,
            },
        }

    def many(self, n: int) -> dict[str, Any]:
        return run_many(self, n)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, 1 run (~1-2 min)")
    parser.add_argument("--json", action="store_true", help="one JSON object per scenario")
    parser.add_argument("--runs", type=int, help="repetitions (median); default 3, quick 1")
    parser.add_argument("--scenario", nargs="+", choices=SCENARIOS, help="subset to run")
    parser.add_argument("--many-n", type=int, nargs="+", help="session counts for 'many'")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="run the hot-path goals' scenarios (throughput, per_message, rtt, establish, "
        "many at 1,000 and 3,000) and print today / bar / stretch / measured / met",
    )
    parser.add_argument(
        "--compare-from",
        type=Path,
        metavar="FILE",
        help="print the --compare table from saved --json output instead of running",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="write a pyinstrument (or cProfile) report per process into this directory",
    )
    parser.add_argument("--profiler", choices=("pyinstrument", "cprofile"), default="pyinstrument")
    parser.add_argument(
        "--gc-freeze",
        action="store_true",
        help="many: gc.freeze() in every process (both stacks) once the sessions are up",
    )
    parser.add_argument(
        "--no-gc-policy",
        action="store_true",
        help="many: trio_session's venue without serve(gc_freeze=True) (the library default)",
    )
    parser.add_argument(
        "--many-config",
        type=json.loads,
        metavar="JSON",
        help="many: SessionConfig fields for trio_session instead of the scenario's 1 s "
        "heartbeats, e.g. '{}' for the library defaults",
    )
    args = parser.parse_args(argv)
    if args.compare_from:
        return compare_saved(args.compare_from, args.json)
    sizes = QUICK if args.quick else FULL
    if args.many_n:
        sizes = attrs.evolve(sizes, many_n=tuple(args.many_n))
    elif args.compare:
        sizes = attrs.evolve(sizes, many_n=COMPARE_MANY_N)
    runs = args.runs or (1 if args.quick else 3)
    profile = None
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        profile = (args.profile.resolve(), args.profiler)
    raise_nofile()
    bench = Bench(
        sizes,
        runs,
        profile,
        gc_freeze=args.gc_freeze,
        gc_policy=not args.no_gc_policy,
        many_config=args.many_config,
    )
    info = machine_info()
    log(f"machine: {info}")
    chosen = args.scenario or list(COMPARE_SCENARIOS if args.compare else SCENARIOS)
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    for name in SCENARIOS:
        if name not in chosen:
            continue
        if name == "many":
            steps.extend((name, partial(bench.many, n)) for n in sizes.many_n)
        elif name in DURABLE:
            steps.append((name, partial(DURABLE[name], bench)))
        else:
            steps.append((name, getattr(bench, name)))
    start = time.monotonic()
    signal.signal(signal.SIGTERM, _terminate)
    results: list[dict[str, Any]] = []
    try:
        for name, step in steps:
            results.append(_run_step(name, step, runs, info, args.json))
    finally:
        kill_all()
    if args.compare:
        print_compare(results, runs, args.json)
    log(f"done in {time.monotonic() - start:.1f} s")
    return 0


def _run_step(
    name: str, step: Callable[[], dict[str, Any]], runs: int, info: dict[str, Any], as_json: bool
) -> dict[str, Any]:
    """Run one scenario, print its result (JSON line or table) and return it."""
    try:
        result = step()
    except WorkerError as exc:  # report and go on with the other scenarios
        log(f"{name} failed: {exc}")
        result = {"scenario": name, "error": str(exc).splitlines()[0]}
        kill_all()
    result["runs"] = runs
    result["loadavg"] = os.getloadavg()[0]
    result["machine"] = info
    if "error" in result:
        if as_json:
            print(json.dumps(result), flush=True)
        return result
    result = finite(result)
    if as_json:
        print(json.dumps(result), flush=True)
    else:
        print_table(result)
    return result


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # run the finally: blocks that kill the workers


if __name__ == "__main__":
    sys.exit(main())
