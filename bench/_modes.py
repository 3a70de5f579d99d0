"""The ``modes`` scenario: mode "aead" against mode "mac", in the same run.

Two trio_session venues, one accepting only ``"mac"`` and one only ``"aead"``; for
each run and each mode, the ``throughput`` clients (``send_many`` in batches and
per-message ``send``) and the ``rtt`` client of bench/_ours.py, alternating between
the modes so that both see the same machine load.  Ratios are aead / mac: the cost of
encrypting every frame (ChaCha20-Poly1305) instead of only authenticating it (BLAKE2b).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from _common import median, percentile

if TYPE_CHECKING:
    from run import Bench

MODES = ("mac", "aead")


def run_modes(bench: Bench, log: Any) -> dict[str, Any]:
    z = bench.sizes
    rows: dict[str, dict[str, list[float]]] = {
        mode: {"send_many_msgs_per_s": [], "send_msgs_per_s": [], "rtt_p50_us": []}
        for mode in MODES
    }
    with (
        bench.server("ours", {"modes": ["mac"]}, tag="mac") as mac,
        bench.server("ours", {"modes": ["aead"]}, tag="aead") as aead,
    ):
        for run in range(bench.runs):
            for mode, srv in (("mac", mac), ("aead", aead)):
                config = {"modes": [mode]}
                row = rows[mode]
                for key, batch in (("send_many_msgs_per_s", z.batch), ("send_msgs_per_s", 0)):
                    params = {"port": srv.port, "n": z.throughput_n, "batch": batch}
                    res = bench.client("ours-throughput", {**params, "config": config}, tag=mode)
                    row[key].append(res["msgs_per_s"])
                params = {"port": srv.port, "n": z.rtt_n, "warmup": z.rtt_warmup}
                res = bench.client("ours-rtt", {**params, "config": config}, tag=mode)
                row["rtt_p50_us"].append(percentile(res["rtt_us"], 50))
                log(
                    f"modes run {run + 1} {mode}: send_many {row['send_many_msgs_per_s'][-1]:,.0f}"
                    f" send {row['send_msgs_per_s'][-1]:,.0f} msgs/s,"
                    f" rtt p50 {row['rtt_p50_us'][-1]:.0f} us"
                )
    medians = {mode: {k: median(v) for k, v in rows[mode].items()} for mode in MODES}
    mac_m, aead_m = medians["mac"], medians["aead"]
    ratios = {k: aead_m[k] / mac_m[k] for k in mac_m}
    return {
        "scenario": "modes",
        "unit": "mode aead vs mode mac: msgs/s one-way (100 B), RTT p50 us; ratio aead/mac",
        "params": {"n": z.throughput_n, "batch": z.batch, "rtt_n": z.rtt_n},
        "raw": mac_m,  # the reference of the ratios (printed as "raw" by print_table)
        "ours": aead_m,
        "ratio": ratios["send_many_msgs_per_s"],
        "ratios": ratios,
        "targets": {},
    }
