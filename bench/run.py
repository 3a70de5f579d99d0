"""trio_session benchmarks: the same workloads over raw trio-websocket and over trio_session.

Usage::

    python bench/run.py [--quick] [--json] [--runs N] [--scenario NAME ...]

Every server and client is a separate process (``bench/worker.py``), so each
side has its own interpreter and GIL, as in production.  Scenarios (see
bench/README.md): throughput, rtt, establish, recovery, many, rekey, modes,
durable_throughput, durable_rtt, restart_recovery.  Figures are medians over
``--runs``; ratios are ours / raw (for throughput: ours msgs/s over raw msgs/s,
for latencies: ours time over raw time), for ``modes`` aead / mac, for
``durable_*`` SqliteStore / the in-memory store.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import IO, Any

import attrs
from _common import (
    BENCH_DIR,
    median,
    percentile,
    proc_cpu_seconds,
    proc_rss_bytes,
    raise_nofile,
    ts,
)
from _modes import run_modes
from durable import durable_rtt, durable_throughput, restart_recovery

WORKER = BENCH_DIR / "worker.py"

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


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- processes ---------------------------------------------------------------------------


class WorkerError(RuntimeError):
    pass


class Proc:
    """One worker process; reads its tagged stdout lines with deadlines."""

    def __init__(
        self,
        role: str,
        params: dict[str, Any],
        profile: tuple[Path, str] | None = None,
        tag: str = "",
    ) -> None:
        if profile is not None:
            path = profile[0] / f"{_seq():02d}-{role}{'-' + tag if tag else ''}.txt"
            params = {**params, "profile": str(path), "profiler": profile[1]}
        self.role = role
        #: The port a server process reported.
        self.port = 0
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in kill)
        self.popen = subprocess.Popen(
            [sys.executable, str(WORKER), role, json.dumps(params)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        _PROCS.append(self)
        self._buf = b""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _readline(self, deadline: float) -> bytes:
        out = self.popen.stdout
        assert out is not None
        fd = out.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(f"{self.role}: timed out waiting for output{self._tail()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    self.popen.wait(timeout=5)
                    raise WorkerError(
                        f"{self.role} exited ({self.popen.returncode}) early{self._tail()}"
                    )
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def expect(self, tag: str, timeout: float) -> Any:
        """Wait for the line ``TAG [json]``; returns the decoded JSON (or None)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._readline(deadline).decode()
            head, _, rest = line.partition(" ")
            if head == tag:
                return json.loads(rest) if rest else None

    def send_line(self, text: str) -> None:
        stdin = self.popen.stdin
        assert stdin is not None
        stdin.write(text.encode() + b"\n")
        stdin.flush()

    def stop(self, grace: float = 3.0) -> None:
        """Close stdin (servers then exit cleanly), then kill after ``grace`` seconds."""
        if self.popen.poll() is None:
            try:
                if self.popen.stdin is not None:
                    self.popen.stdin.close()
                self.popen.wait(timeout=grace)
            except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
                pass
        self.kill()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        for f in (self.popen.stdin, self.popen.stdout):
            if f is not None:
                with suppress(OSError):
                    f.close()
        self._stderr.close()

    def _tail(self) -> str:
        try:
            self._stderr.seek(0)
            text = self._stderr.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""
        return f"\n--- stderr of {self.role} ---\n{text[-3000:]}" if text.strip() else ""


_PROCS: list[Proc] = []
_counter = 0


def _seq() -> int:
    global _counter
    _counter += 1
    return _counter


def kill_all() -> None:
    for p in _PROCS:
        p.kill()
    _PROCS.clear()


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
        raw_m = _medians(rows["raw"])
        many_m = _medians(rows["send_many"])
        send_m = _medians(rows["send"])
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
            "targets": {"send_many throughput >= 4x raw": ratios["send_many"] >= 4},
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
        return _medians(rows["raw"]), _medians(rows["ours"])

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
                "rtt p50 <= 1.15x": ratios["p50"] <= 1.15,
                "rtt p99 <= 1.3x": ratios["p99"] <= 1.3,
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
            "targets": {"establish p50 <= 1.5x": ratios["p50"] <= 1.5},
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
                m: dict[str, Any] = _medians(rows)
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
        z = self.sizes
        rows: dict[str, list[dict[str, float]]] = {"raw": [], "ours": []}
        for run in range(self.runs):
            for stack in ("raw", "ours"):
                m = self._many_once(stack, n)
                rows[stack].append(m)
                log(
                    f"many n={n} run {run + 1} {stack}: rtt p99 {m['rtt_p99_ms']:.1f} ms, "
                    f"venue cpu {m['venue_cpu_share']:.0%}, "
                    f"{m['rss_per_session_kb']:.1f} KB/session, "
                    f"gen2 collections venue/client {m['venue_gc_gen2']:.0f}/"
                    f"{m['client_gc_gen2']:.0f}, longest GC pause venue/client "
                    f"{m['venue_gc_max_pause_ms']:.0f}/{m['client_gc_max_pause_ms']:.0f} ms"
                )
        raw_m, ours_m = _medians(rows["raw"]), _medians(rows["ours"])
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
                "gc_freeze": self.gc_freeze,
                "gc_policy": self.gc_policy,
            },
            "raw": raw_m,
            "ours": ours_m,
            # Comparing RTTs is meaningless when one side could not even hold N sessions.
            "ratio": ratios["rtt_p99"] if held_all else None,
            "ratios": ratios
            if held_all
            else {**ratios, "note": f"not comparable: a stack held fewer than {n} sessions"},
            "targets": {
                f"{n} sessions all up": held_all,
                f"{n} sessions heartbeat RTT p99 < 50 ms": held_all and ours_m["rtt_p99_ms"] < 50,
            },
        }

    def _many_once(self, stack: str, n: int) -> dict[str, float]:
        z = self.sizes
        k = _client_procs(n)
        config = self.many_config if stack == "ours" else {}
        policy = {"gc_freeze": self.gc_policy} if stack == "ours" else None
        with self.server(stack, config, extra=policy) as srv:
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
                        "ramp_timeout": z.many_ramp_timeout,
                        "gc_freeze": self.gc_freeze,
                    }
                    clients.append(Proc(f"{stack}-many", params))
                ready = [c.expect("READY", z.many_ramp_timeout + 60) for c in clients]
                held = sum(r["n"] for r in ready)
                if self.gc_freeze:
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


def _client_procs(n: int) -> int:
    """Client processes for ``n`` sessions: up to 2,500 sessions each."""
    return max(1, math.ceil(n / 2_500))


def _medians(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    return {k: median([r[k] for r in rows]) for k in rows[0]}


# -- reporting ---------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    import trio
    import trio_websocket

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "trio": trio.__version__,
        "trio_websocket": trio_websocket.__version__,
        "trio_session": ts.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg": os.getloadavg()[0],
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def print_table(result: dict[str, Any]) -> None:
    print(f"\n== {result['scenario']}: {result['unit']}")
    raw, ours = result["raw"], result["ours"]

    def rows(prefix: str, d: Any) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                rows(f"{prefix}{k}.", v)
            else:
                print(f"   {prefix + k:<40} {_fmt(v)}")

    if raw:
        rows("raw.", raw)
    rows("ours.", ours)
    ratios = {k: v for k, v in result["ratios"].items() if k != "note"}
    if ratios:
        print("   ratios (ours/raw): " + ", ".join(f"{k} {_fmt(v)}" for k, v in ratios.items()))
    for name, ok in result["targets"].items():
        print(f"   target {name}: {'met' if ok else 'MISSED'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, 1 run (~1-2 min)")
    parser.add_argument("--json", action="store_true", help="one JSON object per scenario")
    parser.add_argument("--runs", type=int, help="repetitions (median); default 3, quick 1")
    parser.add_argument("--scenario", nargs="+", choices=SCENARIOS, help="subset to run")
    parser.add_argument("--many-n", type=int, nargs="+", help="session counts for 'many'")
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
    sizes = QUICK if args.quick else FULL
    if args.many_n:
        sizes = attrs.evolve(sizes, many_n=tuple(args.many_n))
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
    chosen = args.scenario or list(SCENARIOS)
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
    try:
        for name, step in steps:
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
                if args.json:
                    print(json.dumps(result), flush=True)
                continue
            if args.json:
                print(json.dumps(_finite(result)), flush=True)
            else:
                print_table(result)
    finally:
        kill_all()
    log(f"done in {time.monotonic() - start:.1f} s")
    return 0


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # run the finally: blocks that kill the workers


def _finite(o: Any) -> Any:
    """NaN/inf -> None, recursively (JSON has no NaN)."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


if __name__ == "__main__":
    sys.exit(main())
