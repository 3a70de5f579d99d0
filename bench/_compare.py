"""``run.py --compare``: the hot-path goals' table, built from a run's JSON results.

Pure functions over the scenario results (the dicts ``run.py --json`` prints, one
per scenario), so the table can be rebuilt from saved output and tested without a
benchmark run.  Each goal says what it was before the hot-path work ("today"), the
bar to meet, the stretch goal, and reads its measured figure from the results:
ratios are medians over ``--runs`` from the same run; goals that must hold "in
every run" read each run's figure (``per_run`` of the ``many`` results).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import attrs

Results = Mapping[str, Mapping[str, Any]]

NOT_MEASURED = "not measured"


@attrs.frozen
class Measured:
    """One goal's figure: the text shown, and whether it meets the bar and the stretch."""

    text: str
    bar: bool
    #: None where the goal has no stretch figure.
    stretch: bool | None = None
    #: The figure itself (a ratio, ms, KB, a count), for the JSON summary.
    value: float | None = None


@attrs.frozen
class Goal:
    label: str
    today: str
    bar: str
    stretch: str
    #: What it needs, for the "not measured" hint: the scenario key (``many:3000``...).
    needs: str
    measure: Callable[[Mapping[str, Any]], Measured]


@attrs.frozen
class Row:
    label: str
    today: str
    bar: str
    stretch: str
    measured: str
    #: ``"stretch met"``, ``"met"``, ``"not met"``, ``"not measured"`` or ``"failed"``.
    status: str
    value: float | None

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def index(results: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Results by scenario; ``many`` results as ``many:<n>``."""
    out: dict[str, Mapping[str, Any]] = {}
    for r in results:
        name = str(r.get("scenario"))
        if name == "many" and "params" in r:
            name = f"many:{r['params']['n']}"
        out[name] = r
    return out


def _ratio(value: float, bar: float, stretch: float | None, higher: bool) -> Measured:
    def ok(limit: float) -> bool:
        return value >= limit if higher else value <= limit

    return Measured(f"{value:.2f}x", ok(bar), None if stretch is None else ok(stretch), value)


def _per_message(r: Mapping[str, Any]) -> Measured:
    m = _ratio(r["ratio"], 3.0, 8.0, higher=True)
    ours, raw = r["ours"]["msgs_per_s"], r["raw"]["msgs_per_s"]
    return attrs.evolve(m, text=f"{m.text} ({ours:,.0f} vs {raw:,.0f} msgs/s)")


def _send_many(r: Mapping[str, Any]) -> Measured:
    return _ratio(r["ratios"]["send_many"], 20.0, None, higher=True)


def _rtt(which: str, bar: float, stretch: float) -> Callable[[Mapping[str, Any]], Measured]:
    def measure(r: Mapping[str, Any]) -> Measured:
        m = _ratio(r["ratios"][which], bar, stretch, higher=False)
        ours, raw = r["ours"][f"{which}_us"], r["raw"][f"{which}_us"]
        return attrs.evolve(m, text=f"{m.text} ({ours:,.0f} vs {raw:,.0f} µs)")

    return measure


def _establish(r: Mapping[str, Any]) -> Measured:
    m = _ratio(r["ratios"]["p50"], 2.0, 1.5, higher=False)
    ours, raw = r["ours"]["p50_us"], r["raw"]["p50_us"]
    return attrs.evolve(m, text=f"{m.text} ({ours:,.0f} vs {raw:,.0f} µs)")


def _venue_cpu(r: Mapping[str, Any]) -> Measured:
    m = _ratio(r["ratios"]["venue_cpu_share"], 1.5, 1.0, higher=False)
    ours, raw = r["ours"]["venue_cpu_share"], r["raw"]["venue_cpu_share"]
    return attrs.evolve(m, text=f"{m.text} ({ours:.2f} vs {raw:.2f} core)")


def _ours_runs(r: Mapping[str, Any], key: str) -> list[float]:
    """Each run's figure of ours (older results without ``per_run``: the median)."""
    runs = r.get("per_run", {}).get("ours")
    return [run[key] for run in runs] if runs else [r["ours"][key]]


def _held_all(r: Mapping[str, Any]) -> bool:
    return min(_ours_runs(r, "sessions")) >= r["params"]["n"]


def _hb_p99_every_run(r: Mapping[str, Any]) -> Measured:
    p99s = _ours_runs(r, "rtt_p99_ms")
    worst = max(p99s)
    held = _held_all(r)
    text = "runs " + ", ".join(f"{v:.1f}" for v in p99s) + " ms"
    if not held:
        text += f" (fewer than {r['params']['n']} sessions up)"
    return Measured(text, held and worst < 20, held and worst < 10, worst)


def _rss(r: Mapping[str, Any]) -> Measured:
    kb = r["ours"]["rss_per_session_kb"]
    raw = r["raw"]["rss_per_session_kb"]
    return Measured(f"{kb:.1f} KB (raw {raw:.1f} KB)", kb <= 35, kb <= 25, kb)


def _all_up(r: Mapping[str, Any]) -> Measured:
    up = _ours_runs(r, "sessions")
    n = r["params"]["n"]
    text = "runs " + ", ".join(f"{v:,.0f}" for v in up) + f" of {n:,}"
    return Measured(text, min(up) >= n, None, min(up))


def _p99_3000(r: Mapping[str, Any]) -> Measured:
    ours, raw = r["ours"]["rtt_p99_ms"], r["raw"]["rtt_p99_ms"]
    held = _held_all(r)
    text = f"{ours:.1f} ms (raw {raw:.1f} ms)"
    if not held:
        text += " (not all up)"
    return Measured(text, held and ours < 100, held and ours <= raw, ours)


def _gc_pause(r: Mapping[str, Any]) -> Measured:
    pauses = _ours_runs(r, "venue_gc_max_pause_ms")
    gen2 = r["ours"].get("venue_gc_gen2", float("nan"))
    worst = max(pauses)
    text = f"{worst:.0f} ms worst of {len(pauses)} run(s); median gen-2 collections {gen2:.0f}"
    return Measured(text, worst <= 60, None, worst)


GOALS: tuple[Goal, ...] = (
    Goal(
        "one-way throughput, per-message send()/receive()",
        "0.83-0.95x",
        "≥ 3x",
        "≥ 8x",
        "per_message",
        _per_message,
    ),
    Goal("one-way throughput, send_many", "22-28x", "≥ 20x", "—", "throughput", _send_many),
    Goal("RTT p50", "1.8-2.0x", "≤ 1.25x", "≤ 1.0x", "rtt", _rtt("p50", 1.25, 1.0)),
    Goal("RTT p99", "1.8-2.0x", "≤ 1.4x", "≤ 1.1x", "rtt", _rtt("p99", 1.4, 1.1)),
    Goal(
        "establishment (connect until usable)",
        "3.0-3.2x",
        "≤ 2.0x",
        "≤ 1.5x",
        "establish",
        _establish,
    ),
    Goal(
        "venue CPU per idle session (1,000 sessions)",
        "2.4x",
        "≤ 1.5x",
        "≤ 1.0x",
        "many:1000",
        _venue_cpu,
    ),
    Goal(
        "heartbeat RTT p99 at 1,000 sessions",
        "13-80 ms",
        "< 20 ms every run",
        "< 10 ms",
        "many:1000",
        _hb_p99_every_run,
    ),
    Goal("RSS per session (1,000 sessions)", "59.5 KB", "≤ 35 KB", "≤ 25 KB", "many:1000", _rss),
    Goal("3,000 sessions: all up", "1,801 in 120 s", "all 3,000", "—", "many:3000", _all_up),
    Goal(
        "3,000 sessions: heartbeat RTT p99",
        "2.5 s",
        "< 100 ms",
        "≤ raw's",
        "many:3000",
        _p99_3000,
    ),
    Goal(
        "3,000 sessions: longest venue GC pause",
        "736 ms",
        "≤ 60 ms",
        "—",
        "many:3000",
        _gc_pause,
    ),
)


def _status(m: Measured) -> str:
    if not m.bar:
        return "not met"
    return "stretch met" if m.stretch else "met"


def build_rows(results: Iterable[Mapping[str, Any]]) -> list[Row]:
    """One row per goal from a run's scenario results (missing scenario: not measured)."""
    found = index(results)
    rows = []
    for g in GOALS:
        r = found.get(g.needs)
        if r is None:
            measured, status, value = f"{NOT_MEASURED} (needs {_hint(g.needs)})", NOT_MEASURED, None
        elif "error" in r:
            measured, status, value = f"failed: {r['error']}", "failed", None
        else:
            m = g.measure(r)
            measured, status, value = m.text, _status(m), m.value
        rows.append(Row(g.label, g.today, g.bar, g.stretch, measured, status, value))
    return rows


def _hint(needs: str) -> str:
    if needs.startswith("many:"):
        return f"--scenario many --many-n {needs.split(':')[1]}"
    return f"--scenario {needs}"


def format_table(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table (readable as text, pastable into a README)."""
    head = ("goal", "today", "bar", "stretch", "measured", "met")
    cells = [head] + [(r.label, r.today, r.bar, r.stretch, r.measured, r.status) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def summary(rows: Sequence[Row], runs: int) -> dict[str, Any]:
    """The one JSON object ``--compare --json`` prints after the scenario lines."""
    measured = [r for r in rows if r.status not in (NOT_MEASURED, "failed")]
    return {
        "scenario": "compare",
        "runs": runs,
        "rows": [r.as_json() for r in rows],
        "measured": len(measured),
        "bar_met": sum(r.status in ("met", "stretch met") for r in measured),
        "all_bars_met": len(measured) == len(rows)
        and all(r.status in ("met", "stretch met") for r in rows),
    }


def print_compare(results: Sequence[dict[str, Any]], runs: int, as_json: bool) -> None:
    rows = build_rows(results)
    if as_json:
        print(json.dumps(summary(rows, runs)), flush=True)
    else:
        print(f"\n== hot-path goals (medians of {runs} run(s), ratios ours / raw)")
        print(format_table(rows))


def compare_saved(path: Path, as_json: bool) -> int:
    """``--compare-from FILE``: the table from saved ``--json`` lines (other lines ignored)."""
    results = []
    for line in path.read_text().splitlines():
        with suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict) and "scenario" in obj and obj["scenario"] != "compare":
                results.append(obj)
    runs = max((int(r.get("runs", 1)) for r in results), default=0)
    print_compare(results, runs, as_json)
    return 0
