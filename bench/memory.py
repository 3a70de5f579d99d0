"""Where an idle venue session's memory goes: ``python bench/memory.py [N] [TOP]``.

Runs a trio_session venue in this process under :mod:`tracemalloc` and holds
``N`` idle sessions (default 200, 1 s heartbeats, as in the ``many`` scenario)
from one ``ours-many`` participant process; after a settle time it prints the
bytes, allocated blocks and garbage-collector-tracked objects per session, the
``TOP`` source lines of trio_session that allocated most (each allocation is
counted at the innermost trio_session frame of its traceback), and the object
types per session.  Not timed: it measures memory only, so it need not run alone.
"""

from __future__ import annotations

import collections
import gc
import json
import logging
import subprocess
import sys
import tracemalloc
from functools import partial

import _ours
import trio
from _common import BENCH_DIR, identities, session_config, ts

CONFIG = {"heartbeat_interval": 1.0, "heartbeat_timeout": 3.0}


def _types() -> collections.Counter[str]:
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


def _ours_key(trace: tracemalloc.Traceback) -> str:
    for frame in reversed(list(trace)):  # innermost first
        name = frame.filename
        if "/trio_session/" in name and "site-packages" not in name:
            return f"{name.split('/trio_session/')[-1]}:{frame.lineno}"
    return "(outside trio_session)"


async def main(n: int, top: int) -> None:
    logging.basicConfig(level=logging.ERROR)
    venue, _, registry = identities()
    cfg = session_config(CONFIG)
    async with trio.open_nursery() as nursery:
        srv = await nursery.start(
            partial(ts.serve, _ours._handler, venue, registry, "127.0.0.1", 0, config=cfg)
        )
        gc.collect()
        types0 = _types()
        tracemalloc.start(25)
        snap0 = tracemalloc.take_snapshot()
        params = {"port": srv.port, "n": n, "sample": 1, "concurrency": 16, "config": CONFIG}
        params["ramp_timeout"] = 60
        argv = [sys.executable, str(BENCH_DIR / "worker.py"), "ours-many", json.dumps(params)]
        proc = await trio.lowlevel.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        out = b""
        while b"READY " not in out or not out.endswith(b"\n"):
            chunk = await proc.stdout.receive_some()
            if not chunk:
                raise SystemExit("the participant process ended before READY")
            out += chunk
        held = json.loads(out.split(b"READY ", 1)[1].split(b"\n", 1)[0])["n"]
        await trio.sleep(2.5)  # settle: every session has beaten at least twice
        gc.collect()
        snap1 = tracemalloc.take_snapshot()
        types = _types() - types0
        tracemalloc.stop()
        proc.kill()
        await proc.wait()
        nursery.cancel_scope.cancel()
    stats = snap1.compare_to(snap0, "traceback")
    size = sum(s.size_diff for s in stats)
    blocks = sum(s.count_diff for s in stats)
    print(
        f"{held} sessions: {size / held:,.0f} B, {blocks / held:.1f} blocks, "
        f"{sum(types.values()) / held:.1f} gc-tracked objects per session"
    )
    by_line: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for s in stats:
        entry = by_line[_ours_key(s.traceback)]
        entry[0] += s.size_diff
        entry[1] += s.count_diff
    for key, (nbytes, count) in sorted(by_line.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"{nbytes / held:8,.0f} B {count / held:6.2f} blocks  {key}")
    print(" ".join(f"{k}:{v / held:.1f}" for k, v in types.most_common(top)))


if __name__ == "__main__":
    trio.run(
        main,
        int(sys.argv[1]) if len(sys.argv) > 1 else 200,
        int(sys.argv[2]) if len(sys.argv) > 2 else 25,
    )
