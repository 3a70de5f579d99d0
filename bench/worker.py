"""Entry point of every benchmark process: ``python bench/worker.py ROLE 'JSON-PARAMS'``.

Servers print ``PORT <n>`` when ready and run until stdin closes; clients print
``RESULT {...}`` (and ``READY {...}`` first when they wait for a go-ahead line
on stdin).  With ``"profile": PATH`` in the parameters the process runs under
pyinstrument (or cProfile with ``"profiler": "cprofile"``) and writes the
report to PATH on exit.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import _ours
import _raw
import trio
from _common import quiet_logging

Role = Callable[[dict[str, Any]], Awaitable[None]]

ROLES: dict[str, Role] = {
    "raw-server": _raw.server,
    "raw-throughput": _raw.throughput,
    "raw-rtt": _raw.rtt,
    "raw-establish": _raw.establish,
    "raw-many": _raw.many,
    "ours-server": _ours.server,
    "ours-throughput": _ours.throughput,
    "ours-rtt": _ours.rtt,
    "ours-establish": _ours.establish,
    "ours-recovery": _ours.recovery,
    "ours-rekey": _ours.rekey,
    "ours-many": _ours.many,
    "ours-restart-participant": _ours.restart_participant,
}


def _run_profiled(role: Role, params: dict[str, Any], path: str, profiler: str) -> None:
    if profiler == "cprofile":
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        try:
            trio.run(role, params)
        finally:
            prof.disable()
            with open(path, "w") as f:
                stats = pstats.Stats(prof, stream=f)
                stats.sort_stats("tottime").print_stats(40)
                stats.sort_stats("cumulative").print_stats(60)
            prof.dump_stats(path + ".pstats")
        return
    from pyinstrument import Profiler

    pyi = Profiler(interval=0.001)
    pyi.start()
    try:
        trio.run(role, params)
    finally:
        pyi.stop()
        with open(path, "w") as f:
            f.write(pyi.output_text(unicode=False, color=False, show_all=False))


def main() -> None:
    role_name, params = sys.argv[1], json.loads(sys.argv[2])
    quiet_logging()
    role = ROLES[role_name]
    if params.get("profile"):
        profiler = params.get("profiler", "pyinstrument")
        if profiler == "pyinstrument" and importlib.util.find_spec("pyinstrument") is None:
            profiler = "cprofile"  # pyinstrument is optional (pip install pyinstrument)
        _run_profiled(role, params, params["profile"], profiler)
    else:
        trio.run(role, params)


if __name__ == "__main__":
    main()
