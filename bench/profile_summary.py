"""Summarise a cProfile dump by component, per message.

    python bench/profile_summary.py PROFILE.pstats MESSAGES [--top N]

``PROFILE.pstats`` comes from ``python bench/run.py --profile DIR --profiler cprofile``
(or a worker run by hand with ``"profile"``/``"profiler": "cprofile"``).  Own
time (tottime) is grouped into components — our session runtime, protocol,
crypto, msgspec, trio-websocket, wsproto, Trio's scheduler and channels,
syscalls, epoll wait (idle) — and divided by ``MESSAGES``.  cProfile roughly
doubles the cost of small Python functions: read the shares, not the absolute
microseconds (the bench's unprofiled ``cpu_us_per_msg`` figures are the truth).
Coroutine "calls" count resumptions, so ncalls of an async function is the
number of times it was scheduled.
"""

from __future__ import annotations

import argparse
import pstats
from collections import defaultdict

_COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("idle: epoll wait", ("select.epoll",)),
    ("syscalls: socket send/recv", ("_socket.socket",)),
    ("crypto: blake2b MAC, nacl", ("_blake2", "trio_session/protocol/_crypto.py", "nacl")),
    ("msgspec encode/decode", ("msgspec",)),
    (
        "trio_session: session runtime",
        ("trio_session/_session.py", "trio_session/_server.py", "trio_session/_client.py"),
    ),
    ("trio_session: protocol (sans-IO)", ("trio_session/protocol/",)),
    ("trio_session: transport adapter", ("trio_session/_transport.py",)),
    ("trio-websocket", ("trio_websocket",)),
    ("wsproto framing", ("wsproto",)),
    ("trio: scheduler, channels, sockets", ("/trio/", "outcome", "sniffio")),
    ("bench workload", ("/bench/",)),
)


def component(key: tuple[str, int, str]) -> str:
    filename, _, name = key
    text = f"{filename}:{name}"
    for label, needles in _COMPONENTS:
        if any(n in text for n in needles):
            return label
    if filename == "~":
        return "python builtins (len, append, popleft, ...)"
    return "other python"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pstats_file")
    parser.add_argument("messages", type=int)
    parser.add_argument("--top", type=int, default=15, help="functions to list")
    args = parser.parse_args()
    stats = pstats.Stats(args.pstats_file)
    raw = stats.stats  # type: ignore[attr-defined]
    groups: dict[str, float] = defaultdict(float)
    total = 0.0
    for key, (_, _, tottime, _, _) in raw.items():
        groups[component(key)] += tottime
        total += tottime
    busy = total - groups.get("idle: epoll wait", 0.0)
    n = args.messages
    print(f"total {total:.3f} s, busy {busy:.3f} s = {busy / n * 1e6:.2f} us/msg (profiled)")
    print(f"{'component':<44} {'us/msg':>8} {'% busy':>7}")
    for label, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        share = "" if label.startswith("idle") else f"{t / busy:7.1%}"
        print(f"{label:<44} {t / n * 1e6:8.2f} {share:>7}")
    print(f"\ntop {args.top} functions by own time (us/msg, calls/msg):")
    rows = sorted(raw.items(), key=lambda kv: -kv[1][2])
    shown = 0
    for (filename, line, name), (_, nc, tottime, _, _) in rows:
        if "epoll" in name:
            continue
        where = f"{filename.rsplit('/', 1)[-1]}:{line}({name})" if filename != "~" else name
        print(f"  {tottime / n * 1e6:7.2f}  {nc / n:7.3f}  {where}")
        shown += 1
        if shown >= args.top:
            break


if __name__ == "__main__":
    main()
