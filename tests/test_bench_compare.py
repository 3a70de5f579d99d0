"""``bench/run.py --compare``: the goals' table built from canned scenario results
(pure functions, no benchmark run)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_compare", BENCH / "_compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # attrs resolves the classes' annotations through it
    spec.loader.exec_module(module)
    return module


compare = _load()


def _many(n: int, ours_runs: list[dict[str, float]], raw: dict[str, float]) -> dict[str, Any]:
    mid = sorted(ours_runs, key=lambda r: r["rtt_p99_ms"])[len(ours_runs) // 2]
    return {
        "scenario": "many",
        "params": {"n": n},
        "raw": raw,
        "ours": mid,
        "ratios": {"venue_cpu_share": mid["venue_cpu_share"] / raw["venue_cpu_share"]},
        "per_run": {"raw": [raw] * len(ours_runs), "ours": ours_runs},
    }


def _run(p99: float, sessions: float = 1000, pause: float = 12.0) -> dict[str, float]:
    return {
        "sessions": sessions,
        "rtt_p99_ms": p99,
        "venue_cpu_share": 0.30,
        "rss_per_session_kb": 30.0,
        "venue_gc_max_pause_ms": pause,
        "venue_gc_gen2": 1.0,
    }


RAW_MANY = {
    "sessions": 1000.0,
    "rtt_p99_ms": 5.0,
    "venue_cpu_share": 0.17,
    "rss_per_session_kb": 17.5,
    "venue_gc_max_pause_ms": 7.0,
    "venue_gc_gen2": 0.0,
}

CANNED: list[dict[str, Any]] = [
    {
        "scenario": "throughput",
        "ratio": 25.0,
        "ratios": {"send_many": 25.0, "send": 0.9},
        "raw": {"msgs_per_s": 25_000.0},
        "ours": {"send_many": {"msgs_per_s": 625_000.0}, "send": {"msgs_per_s": 22_500.0}},
    },
    {
        "scenario": "per_message",
        "ratio": 3.2,
        "ratios": {"msgs_per_s": 3.2},
        "raw": {"msgs_per_s": 25_000.0},
        "ours": {"msgs_per_s": 80_000.0},
    },
    {
        "scenario": "rtt",
        "ratio": 1.3,
        "ratios": {"p50": 1.3, "p99": 1.05},
        "raw": {"p50_us": 250.0, "p99_us": 400.0},
        "ours": {"p50_us": 325.0, "p99_us": 420.0},
    },
    {"scenario": "establish", "error": "ours-establish: timed out waiting for output"},
    # Median 15 ms, but one run at 25 ms: "< 20 ms in every run" is not met.
    _many(1000, [_run(15.0), _run(25.0), _run(9.0)], RAW_MANY),
]


def _by_label(rows: list[Any]) -> dict[str, Any]:
    return {r.label: r for r in rows}


def test_rows_read_each_goal_from_the_results() -> None:
    rows = _by_label(compare.build_rows(CANNED))
    assert [r.label for r in compare.build_rows(CANNED)] == [g.label for g in compare.GOALS]

    per_message = rows["one-way throughput, per-message send()/receive()"]
    assert per_message.status == "met"  # 3.2x: over the bar (3x), under the stretch (8x)
    assert per_message.value == pytest.approx(3.2)
    assert "80,000 vs 25,000 msgs/s" in per_message.measured

    assert rows["one-way throughput, send_many"].status == "met"
    assert rows["RTT p50"].status == "not met"  # 1.3x > 1.25x
    assert rows["RTT p99"].status == "stretch met"  # 1.05x <= 1.1x
    assert rows["establishment (connect until usable)"].status == "failed"
    assert "timed out" in rows["establishment (connect until usable)"].measured

    cpu = rows["venue CPU per idle session (1,000 sessions)"]
    assert cpu.value == pytest.approx(0.30 / 0.17)
    assert cpu.status == "not met"

    heartbeat = rows["heartbeat RTT p99 at 1,000 sessions"]
    assert heartbeat.status == "not met"  # the worst run counts, not the median
    assert heartbeat.value == 25.0
    assert heartbeat.measured == "runs 15.0, 25.0, 9.0 ms"

    rss = rows["RSS per session (1,000 sessions)"]
    assert (rss.status, rss.value) == ("met", 30.0)


def test_a_scenario_not_run_is_not_measured_and_says_how_to_run_it() -> None:
    rows = _by_label(compare.build_rows(CANNED))
    for label in (
        "3,000 sessions: all up",
        "3,000 sessions: heartbeat RTT p99",
        "3,000 sessions: longest venue GC pause",
    ):
        assert rows[label].status == "not measured"
        assert "--many-n 3000" in rows[label].measured
        assert rows[label].value is None


def test_3000_sessions_goals() -> None:
    short = _run(2500.0, sessions=1801, pause=736.0)
    rows = _by_label(compare.build_rows([_many(3000, [short, _run(40.0, 3000, 30.0)], RAW_MANY)]))
    assert rows["3,000 sessions: all up"].status == "not met"
    assert rows["3,000 sessions: all up"].measured == "runs 1,801, 3,000 of 3,000"
    assert rows["3,000 sessions: longest venue GC pause"].value == 736.0
    assert rows["3,000 sessions: longest venue GC pause"].status == "not met"
    # Not every run held 3,000 sessions: the p99 is not comparable, hence not met.
    assert rows["3,000 sessions: heartbeat RTT p99"].status == "not met"

    good = [_run(40.0, 3000, 30.0)] * 3
    rows = _by_label(compare.build_rows([_many(3000, good, RAW_MANY)]))
    assert rows["3,000 sessions: all up"].status == "met"
    assert rows["3,000 sessions: heartbeat RTT p99"].status == "met"  # raw's 5 ms: no stretch
    assert rows["3,000 sessions: longest venue GC pause"].status == "met"


def test_table_and_summary() -> None:
    rows = compare.build_rows(CANNED)
    table = compare.format_table(rows).splitlines()
    assert len(table) == 2 + len(compare.GOALS)
    assert table[0].split("|")[1].strip() == "goal"
    assert all(line.startswith("|") and line.endswith("|") for line in table)
    assert len({len(line) for line in table}) == 1  # aligned columns

    s = compare.summary(rows, runs=3)
    assert s["scenario"] == "compare"
    assert s["runs"] == 3
    assert s["measured"] == len(compare.GOALS) - 4  # establish failed, three 3,000 goals
    assert s["bar_met"] == 4  # per-message, send_many, RTT p99, RSS
    assert s["all_bars_met"] is False
    json.dumps(s)  # one JSON object


def test_compare_from_saved_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "run.jsonl"
    lines = ["[bench 10:00:00] a log line", *(json.dumps(r | {"runs": 3}) for r in CANNED)]
    saved.write_text("\n".join(lines) + "\n")
    assert compare.compare_saved(saved, as_json=True) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runs"] == 3
    assert [r["status"] for r in out["rows"]] == [r.status for r in compare.build_rows(CANNED)]
