"""The ``modes`` scenario: mode "aead" against mode "mac", in the same run.

Two trio_session venues, one accepting only ``"mac"`` and one only ``"aead"``; for
each run and each mode, the ``throughput`` clients (``send_many`` in batches and
per-message ``send``) and the ``rtt`` client of bench/_ours.py, alternating between
the modes so that both see the same machine load.  Ratios are aead / mac: the cost of
encrypting every frame (ChaCha20-Poly1305) instead of only authenticating it (BLAKE2b).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from _common import median, percentile, proc_cpu_seconds

if TYPE_CHECKING:
    from run import Bench

MODES = ("mac", "aead")


def run_modes(bench: Bench, log: Any) -> dict[str, Any]:
    z = bench.sizes
    rows: dict[str, dict[str, list[float]]] = {mode: {} for mode in MODES}
    with (
        bench.server("ours", {"modes": ["mac"]}, tag="mac") as mac,
        bench.server("ours", {"modes": ["aead"]}, tag="aead") as aead,
    ):
        for run in range(bench.runs):
            for mode, srv in (("mac", mac), ("aead", aead)):
                config = {"modes": [mode]}
                row = rows[mode]
                for variant, batch in (("send_many", z.batch), ("send", 0)):
                    n = z.throughput_n
                    params = {"port": srv.port, "n": n, "batch": batch, "config": config}
                    cpu0 = proc_cpu_seconds(srv.pid)
                    res = bench.client("ours-throughput", params, tag=mode)
                    venue_cpu = proc_cpu_seconds(srv.pid) - cpu0
                    row.setdefault(f"{variant}_msgs_per_s", []).append(res["msgs_per_s"])
                    row.setdefault(f"{variant}_venue_cpu_us_per_msg", []).append(
                        venue_cpu / n * 1e6
                    )
                    client_us = res["client_cpu_s"] / n * 1e6
                    row.setdefault(f"{variant}_participant_cpu_us_per_msg", []).append(client_us)
                params = {"port": srv.port, "n": z.rtt_n, "warmup": z.rtt_warmup, "config": config}
                res = bench.client("ours-rtt", params, tag=mode)
                row.setdefault("rtt_p50_us", []).append(percentile(res["rtt_us"], 50))
                log(
                    f"modes run {run + 1} {mode}: "
                    + ", ".join(f"{k} {v[-1]:,.2f}" for k, v in row.items())
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
