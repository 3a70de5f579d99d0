"""Shared pieces of the benchmark suite: identities, payloads, /proc readers, stats.

Imported by ``run.py`` (the orchestrator) and ``worker.py`` (every server and
client process).  Both are run as scripts, so ``bench/`` is on ``sys.path``.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import logging
import math
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

try:  # an installed trio_session (nox) wins; else use this checkout
    import trio_session as ts
except ImportError:  # pragma: no cover - depends on how the bench is run
    sys.path.insert(1, str(ROOT))
    import trio_session as ts

__all__ = [
    "BENCH_DIR",
    "GC_WATCH",
    "PAYLOAD",
    "PAYLOAD_SIZE",
    "ROOT",
    "echo_rtts",
    "emit",
    "freeze_gc",
    "identities",
    "median",
    "payload",
    "percentile",
    "proc_cpu_seconds",
    "proc_rss_bytes",
    "quiet_logging",
    "raise_nofile",
    "read_line",
    "seq_of",
    "session_config",
    "stdin_eof",
    "ts",
]

#: Size of every application message (100 bytes, the size the anchor figures use).
PAYLOAD_SIZE = 100
_FILL = b"x" * (PAYLOAD_SIZE - 8)
#: A fixed 100-byte payload for the throughput and RTT scenarios.
PAYLOAD = b"\x00" * 8 + _FILL

# Fixed seeds: server and client processes derive the same identities.
_VENUE_SEED = hashlib.sha256(b"trio_session bench venue").digest()
_PARTICIPANT_SEED = hashlib.sha256(b"trio_session bench participant").digest()


def payload(seq: int) -> bytes:
    """A 100-byte payload carrying ``seq`` in its first 8 bytes (big-endian)."""
    return seq.to_bytes(8, "big") + _FILL


def seq_of(message: bytes) -> int:
    return int.from_bytes(message[:8], "big")


@functools.cache
def identities() -> tuple[ts.Identity, ts.Identity, ts.KeyRegistry]:
    """(venue, participant, registry trusting the participant), the same in every process.

    Cached: deriving an Ed25519 key pair costs ~40 us, which must not land inside a
    timed connect.
    """
    venue = ts.Identity.from_seed(_VENUE_SEED)
    participant = ts.Identity.from_seed(_PARTICIPANT_SEED)
    registry = ts.KeyRegistry()
    registry.add(participant.key_id, participant.public_key)
    return venue, participant, registry


def session_config(overrides: dict[str, Any] | None = None) -> ts.SessionConfig:
    """The bench's SessionConfig: defaults, per-key and per-address limits lifted, mode
    "mac", plus ``overrides``.

    The venue's per-key/per-address handshake buckets (50/s and 200/s by default),
    its new-session rate per key (2/s) and its cap of sessions per key (8) would
    otherwise throttle or refuse the establishment and many-sessions scenarios,
    which connect one key from one address many times.  Mode "mac" (authenticated, not
    encrypted) is what compares with raw trio-websocket, and what the earlier
    figures measured; over ``ws://`` the default would be "aead", whose cost the
    ``modes`` scenario reports.
    """
    kw: dict[str, Any] = {
        "handshake_rate_per_key": 1e9,
        "handshake_rate_per_address": 1e9,
        "max_sessions_per_key": 1_000_000,
        "session_rate_per_key": 1e9,
        "modes": ("mac",),
    }
    kw.update(overrides or {})
    return ts.SessionConfig(**kw)


def quiet_logging() -> None:
    """Workers log errors only (resume warnings etc. are expected in some scenarios)."""
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` in seconds, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (VmRSS in /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest-rank; NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def median(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan
    s = sorted(vals)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def emit(tag: str, data: Any = None) -> None:
    """Worker -> orchestrator: one line on stdout (``TAG`` or ``TAG {json}``)."""
    line = tag if data is None else f"{tag} {json.dumps(data, separators=(',', ':'))}"
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def read_line() -> str:
    """The next line from stdin ("" at EOF), without blocking the Trio loop."""
    return await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)


class GcWatch:
    """Counts the garbage collector's pauses (gc.callbacks).

    In the ``many`` scenario the tail latency is set by full (generation 2)
    collections, whose pause grows with the number of live objects.
    """

    def __init__(self) -> None:
        self._t0 = 0.0
        self.reset()
        gc.callbacks.append(self._callback)

    def reset(self) -> None:
        self.gen2 = 0
        self.max_ms = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        self.max_ms = max(self.max_ms, (time.perf_counter() - self._t0) * 1e3)
        if info["generation"] == 2:
            self.gen2 += 1

    def snapshot(self, *, count_objects: bool = True) -> dict[str, float]:
        """The pauses so far; ``count_objects`` walks every tracked object (slow:
        only outside a measurement window)."""
        return {
            "gc_gen2": float(self.gen2),
            "gc_max_pause_ms": round(self.max_ms, 2),
            "gc_tracked_objects": float(len(gc.get_objects())) if count_objects else -1.0,
        }


#: One sampled connection of the ``many`` scenario: its send and receive.
Echo = tuple[Callable[[bytes], Awaitable[Any]], Callable[[], Awaitable[Any]]]


async def echo_rtts(sampled: Sequence[Echo], end: float, out: list[float]) -> None:
    """``many``: one explicit ping-pong every 50 ms, round robin over ``sampled``,
    until ``end``; the round trips (µs) go to ``out``."""
    i = 0
    while trio.current_time() < end and sampled:
        send, receive = sampled[i % len(sampled)]
        i += 1
        t0 = time.perf_counter()
        with trio.move_on_at(end):
            await send(PAYLOAD)
            await receive()
            out.append((time.perf_counter() - t0) * 1e6)
        await trio.sleep(0.05)


def freeze_gc() -> None:
    """Collect, then move every object alive now out of the collector's reach."""
    gc.collect()
    gc.freeze()


#: Every worker process watches its collector (a few hundred ns per collection).
GC_WATCH = GcWatch()


async def stdin_eof() -> None:
    """Return when stdin reaches EOF: the orchestrator closed it (or died).

    Servers also obey commands on the way: ``gc`` (print ``GC {...}``, the
    collector's pauses since the last ``gc``, and reset; ``gc-reset`` skips the
    slow count of tracked objects, for use right before a window) and ``freeze``
    (``gc.freeze()``: move every object alive now out of the collector's reach).
    """
    while line := await read_line():
        command = line.strip()
        if command in ("gc", "gc-reset"):
            emit("GC", GC_WATCH.snapshot(count_objects=command == "gc"))
            GC_WATCH.reset()
        elif command == "freeze":
            freeze_gc()
