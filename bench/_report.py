"""What the benchmarks print: the machine, one scenario's table, finite JSON."""

from __future__ import annotations

import math
import os
import platform
import time
from typing import Any

from _common import ts


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


def finite(o: Any) -> Any:
    """NaN/inf -> None, recursively (JSON has no NaN)."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    return o
