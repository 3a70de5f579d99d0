"""Processes for the durable-session tests: ``python -m tests.durable_apps ROLE 'JSON'``.

* ``venue``: ``ts.serve`` on an ``SqliteStore``; its handler answers every order
  ``O<n>`` with the report ``R<n>``, sent with ``commit=True`` (the order is
  committed in the same write as its report), and logs each order it sees with
  its data seq and redelivery flag.  Prints ``PORT <n>`` when listening.
* ``participant``: ``ts.connect`` on an ``SqliteStore``; sends orders ``O0`` ...
  ``O<n-1>`` (order ``i`` is its ``i``-th message, so after a restart it goes on
  from ``session.send_count``) and logs every report.  Prints ``DONE`` once
  every report arrived.

Either can kill itself with SIGKILL at a chosen moment (``"crash"``), a real
``kill -9`` at an exact point: ``{"kind": "write", "nth": N, "before": bool}``
(the N-th store write that carries DATA frames: before it, so the frames were
sealed and never stored nor sent, or after it, so they were stored and not
sent), ``{"kind": "rekey", "nth": N}`` (venue: right after the N-th REKEY_ACK
installed a new resume secret, before it was stored; participant: right after
the N-th REKEY_ACK was built and stored, before it went out), ``{"kind":
"resume"}`` (venue: right after verifying the first resume's ClientFinish;
participant: right after completing its first resume handshake, before its
ClientFinish went out).  Before dying the process logs ``K <kind>``.

Logs are appended with ``os.write`` on an ``O_APPEND`` descriptor, so a
SIGKILL never loses a line that was written.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

import trio_session as ts
from trio_session.protocol import _handshake, _rekey

__all__ = ["AGGRESSIVE", "main"]

#: Key rotation every few hundred milliseconds, so kills land mid-rekey.
AGGRESSIVE = {
    "rekey_interval": 0.25,
    "reject_after": 2.0,
    "rekey_jitter": 0.05,
    "ratchet_interval": 0.05,
    "ratchet_messages": 64,
}


class Log:
    """Lines appended with one ``write()`` each."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, line: str) -> None:
        os.write(self._fd, (line + "\n").encode())


def _die(log: Log, kind: str) -> None:
    log.write(f"K {kind}")
    os.kill(os.getpid(), signal.SIGKILL)


def _nth(n: int) -> Callable[[], bool]:
    """True on the n-th call."""
    count = 0

    def hit() -> bool:
        nonlocal count
        count += 1
        return count == n

    return hit


def install_crash(plan: dict[str, Any] | None, log: Log, venue: bool) -> None:
    """Arrange the SIGKILL of ``plan`` (see the module docstring)."""
    if not plan:
        return
    kind = plan["kind"]
    if kind == "write":
        _crash_on_write(log, _nth(plan["nth"]), bool(plan.get("before")))
    elif kind == "rekey":
        hit = _nth(plan["nth"])
        cls = _rekey.VenueRekey if venue else _rekey.ParticipantRekey
        name = "_on_rekey_ack" if venue else "write_answers"
        original = getattr(cls, name)

        def patched(self: Any, *args: Any) -> Any:
            owed = venue or self.state is _rekey.RekeyState.ACK_OWED
            result = original(self, *args)
            if owed and hit():
                if venue:
                    _die(log, "rekey")
                else:  # the REKEY_ACK is built; die once it is stored, before it is sent
                    _arm_after_next_write(log, "rekey")
            return result

        setattr(cls, name, patched)
    elif kind == "resume":
        cls_h: Any = _handshake.VenueHandshake if venue else _handshake.ClientHandshake
        original_commit = cls_h.commit

        def commit(self: Any, result: Any, *args: Any) -> None:
            original_commit(self, result, *args)
            if result.resumed:
                _die(log, "resume")

        cls_h.commit = commit


def _crash_on_write(log: Log, hit: Callable[[], bool], before: bool) -> None:
    original = ts.SqliteStore.write

    async def write(self: ts.SqliteStore, writes: Any, *, alive_at: float | None = None) -> None:
        frames = any(w.frames for w in writes)
        if frames and before and hit():
            _die(log, "write-before")
        await original(self, writes, alive_at=alive_at)
        if frames and not before and hit():
            _die(log, "write-after")

    ts.SqliteStore.write = write  # type: ignore[method-assign]


def _arm_after_next_write(log: Log, kind: str) -> None:
    original = ts.SqliteStore.write

    async def write(self: ts.SqliteStore, writes: Any, *, alive_at: float | None = None) -> None:
        await original(self, writes, alive_at=alive_at)
        _die(log, kind)

    ts.SqliteStore.write = write  # type: ignore[method-assign]


def _config(params: dict[str, Any]) -> ts.SessionConfig:
    return ts.SessionConfig(**params.get("config", {}))


async def venue(params: dict[str, Any]) -> None:
    log = Log(params["log"])
    install_crash(params.get("crash"), log, venue=True)
    identity = ts.Identity.load(params["identity"])
    registry = ts.KeyRegistry.load(params["registry"])

    async def handler(session: ts.Session) -> None:
        log.write(f"H {session.session_id} {int(session.restored)}")
        async for order in session:
            n = int(order[1:])
            log.write(f"O {n} {session.last_seq} {int(session.last_redelivered)}")
            await session.send(b"R%d" % n, commit=True)

    def hook(name: str) -> Callable[[ts.Session], None]:
        return lambda session: log.write(f"{name} {session.session_id}")

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(
                ts.serve,
                handler,
                identity,
                registry,
                "127.0.0.1",
                params.get("port", 0),
                config=_config(params),
                store=ts.SqliteStore(params["store"]),
                on_session_lost=hook("LOST"),
                on_logout=hook("LOGOUT"),
            )
        )
        print(f"PORT {server.port}", flush=True)
        await trio.sleep_forever()


def _reports_seen(path: str) -> set[int]:
    try:
        with open(path) as f:
            return {int(line.split()[1]) for line in f if line.startswith("R ")}
    except FileNotFoundError:
        return set()


async def participant(params: dict[str, Any]) -> None:
    log_path = params["log"]
    seen = _reports_seen(log_path)
    log = Log(log_path)
    install_crash(params.get("crash"), log, venue=False)
    identity = ts.Identity.load(params["identity"])
    n = int(params["orders"])
    policy = ts.RestartPolicy(max_delay=0.1, max_restarts=10_000, max_outage=60.0)
    async with ts.connect(
        params["url"],
        identity,
        bytes.fromhex(params["venue_key"]),
        config=_config(params),
        restart=policy,
        store=ts.SqliteStore(params["store"]) if params.get("store") else None,
    ) as session:
        log.write(f"C {session.session_id} {session.send_count} {int(session.restored)}")
        print("CONNECTED", flush=True)
        all_in = trio.Event()

        async def reports() -> None:
            while len(seen) < n:
                report = await session.receive()
                r = int(report[1:])
                log.write(f"R {r} {session.last_seq} {int(session.last_redelivered)}")
                seen.add(r)
            all_in.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reports)
            sent = session.send_count
            while sent < n:
                batch = [b"O%d" % i for i in range(sent, min(n, sent + 50))]
                await session.send_many(batch)
                sent += len(batch)
            await all_in.wait()
        await session.commit()
        print("DONE", flush=True)
        log.write("DONE")


def main() -> None:
    role, params = sys.argv[1], json.loads(sys.argv[2])
    trio.run({"venue": venue, "participant": participant}[role], params)


if __name__ == "__main__":
    main()
