"""Helpers for the kill -9 tests: start the ``tests.durable_apps`` processes, read their logs.

A venue or participant app logs what its application saw (``tests/durable_apps.py``);
:func:`read_log` parses a log and :class:`Seen` holds what it says, so a test can
check, after any number of kills, that every message arrived, that any repeat
was flagged as a redelivery, and that the session never changed.
"""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import attrs

from .cli_helpers import Cli, Keys
from .durable_apps import AGGRESSIVE

__all__ = ["Seen", "read_log", "start_participant", "start_venue", "wait_killed"]


def start_venue(
    k: Keys, tmp: Path, *, port: int = 0, crash: dict[str, Any] | None = None
) -> tuple[Cli, int]:
    """A venue app on ``tmp/venue.db``; returns it and its port once it listens."""
    params = {
        "identity": str(k.venue),
        "registry": str(k.registry),
        "store": str(tmp / "venue.db"),
        "log": str(tmp / "venue.log"),
        "port": port,
        "config": AGGRESSIVE,
        "crash": crash,
    }
    venue = Cli("venue", json.dumps(params), module="tests.durable_apps")
    bound = int(venue.wait_for(r"^PORT (\d+)$", timeout=30)[1])
    return venue, bound


def start_participant(
    k: Keys,
    tmp: Path,
    port: int,
    orders: int,
    *,
    store: bool = True,
    crash: dict[str, Any] | None = None,
) -> Cli:
    params = {
        "identity": str(k.alice),
        "venue_key": k.venue_pub.read_text().strip(),
        "url": f"ws://127.0.0.1:{port}/",
        "store": str(tmp / "participant.db") if store else None,
        "log": str(tmp / "participant.log"),
        "orders": orders,
        "config": AGGRESSIVE,
        "crash": crash,
    }
    return Cli("participant", json.dumps(params), module="tests.durable_apps")


def wait_killed(app: Cli, timeout: float = 30.0) -> None:
    """The app killed itself (SIGKILL) as its crash plan said."""
    code = app.finish(timeout=timeout)
    assert code == -signal.SIGKILL, f"exit {code}, expected SIGKILL\n{app.dump()}"


@attrs.define
class Seen:
    """What one app's log says its application saw."""

    #: (message number, data seq, redelivered) in the order they were seen.
    messages: list[tuple[int, int, bool]] = attrs.Factory(list)
    #: Session ids the application was handed (venue: handler calls; participant: connects).
    sessions: list[str] = attrs.Factory(list)
    #: Where the process killed itself.
    kills: list[str] = attrs.Factory(list)
    #: End hooks the venue ran: LOST / LOGOUT.
    hooks: Counter[str] = attrs.Factory(Counter)
    done: bool = False

    def check_complete(self, n: int) -> None:
        """Every message 0..n-1 seen; every repeat flagged as a redelivery and
        seen again under the same data seq (so it is the same message)."""
        first: dict[int, int] = {}
        for number, seq, redelivered in self.messages:
            if number in first:
                assert redelivered, f"message {number} seen again without the redelivery flag"
                assert seq == first[number], (
                    f"message {number} seen under seqs {first[number]}, {seq}"
                )
            else:
                first[number] = seq
        missing = set(range(n)) - set(first)
        assert not missing, f"{len(missing)} messages never seen, e.g. {sorted(missing)[:10]}"

    def check_exactly_once_in_order(self, n: int) -> None:
        numbers = [number for number, _, _ in self.messages]
        assert numbers == list(range(n)), _first_difference(numbers, n)


def _first_difference(numbers: list[int], n: int) -> str:
    for i, (a, b) in enumerate(zip(numbers, range(n), strict=False)):
        if a != b:
            return f"position {i}: got {a}, expected {b} (counts: {len(numbers)} of {n})"
    return f"got {len(numbers)} messages, expected {n}"


def read_log(path: Path) -> Seen:
    seen = Seen()
    for line in path.read_text().splitlines():
        kind, *rest = line.split()
        if kind in ("O", "R"):
            seen.messages.append((int(rest[0]), int(rest[1]), rest[2] == "1"))
        elif kind in ("H", "C"):
            seen.sessions.append(rest[0])
        elif kind == "K":
            seen.kills.append(rest[0])
        elif kind in ("LOST", "LOGOUT"):
            seen.hooks[kind] += 1
        elif kind == "DONE":
            seen.done = True
    return seen
