"""``trio-session store inspect`` and ``trio-session store purge``: a session store file.

``inspect PATH`` lists the sessions in an ``SqliteStore`` file (``serve
--store``, ``connect --store``): role, key id, state, sequence numbers both
ways, unacknowledged and queued messages, detach time.  It reads the file
without locking it, so it works on the store of a running venue.  It never
prints a secret (only resume secret *generations*).

``purge PATH`` deletes sessions (``--session ID``, repeatable, or ``--all``); it
takes the file's lock, so it refuses a store a venue or participant is using.
"""

from __future__ import annotations

import argparse
import datetime
import time
from collections.abc import Sequence
from typing import Any

import trio

import trio_session as ts
from trio_session.protocol import Role
from trio_session.store import StoredSession

from .args import Parser, Subparsers
from .errors import EXIT_OK, CliError
from .output import add_output_options, emit_json

__all__ = ["add_parser", "session_row"]


def add_parser(sub: Subparsers, common: Parser) -> None:
    p = sub.add_parser(
        "store",
        help="inspect or purge a session store file",
        description="Look into, or clean up, the SQLite store of serve --store / connect --store.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    inspect = actions.add_parser(
        "inspect",
        parents=[common],
        help="list the sessions in a store (works while a venue runs on it)",
    )
    inspect.add_argument("path", help="store file")
    add_output_options(inspect, json_help="print one JSON object", live=False)
    inspect.set_defaults(run=run_inspect)
    purge = actions.add_parser(
        "purge",
        parents=[common],
        help="delete sessions from a store (not while a process uses it)",
    )
    purge.add_argument("path", help="store file")
    which = purge.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--session",
        action="append",
        metavar="ID",
        help="a session id or store key, as `store inspect` shows it (repeatable)",
    )
    which.add_argument("--all", action="store_true", help="every session in the store")
    add_output_options(purge, json_help="print one JSON object", live=False)
    purge.set_defaults(run=run_purge)


def run_inspect(args: argparse.Namespace) -> int:
    path: str = args.path
    sessions, alive_at = trio.run(_load, path)
    rows = [session_row(s) for s in sessions]
    if args.json:
        emit_json({"path": path, "alive_at": alive_at, "sessions": rows})
        return EXIT_OK
    stamp = "never" if alive_at is None else f"{_when(alive_at)} ({_ago(alive_at)} ago)"
    print(f"store {path}: {len(rows)} sessions; last venue liveness stamp: {stamp}")
    for row in rows:
        detached = row["detached_at"]
        away = "-" if detached is None else f"{_when(detached)} ({_ago(detached)} ago)"
        print(
            f"{row['session_id']} {row['role']:<11} {row['key_id']:<16} {row['status']:<10} "
            f"tx={row['next_tx_seq']} acked={row['peer_ack']} unacked={row['unacked']} "
            f"queued={row['queued']} rx={row['rx_committed']} gen={row['resume_gen']} "
            f"detached={away}"
        )
        if row["role"] == "participant":
            print(f"    key {row['key']}")
    return EXIT_OK


async def _load(path: str) -> tuple[list[StoredSession], float | None]:
    store = ts.SqliteStore(path, read_only=True)
    await store.open()
    try:
        sessions: list[StoredSession] = []
        alive_at = None
        for role in (Role.VENUE, Role.PARTICIPANT):
            contents = await store.load(role)
            sessions += contents.sessions
            alive_at = contents.alive_at
        return sessions, alive_at
    finally:
        await store.aclose()


def session_row(session: StoredSession) -> dict[str, Any]:
    """What ``inspect`` shows of one session (never a secret)."""
    state = session.state
    record = session.record()
    return {
        "session_id": state.session_id.hex(),
        "key": session.key,
        "role": state.role.value,
        "key_id": state.key_id,
        "status": state.status.value,
        "detached_at": state.detached_at,
        "updated_at": state.updated_at,
        "next_tx_seq": state.next_tx_seq,
        "peer_ack": record.peer_ack,
        "unacked": record.replay_messages,
        "queued": len(session.unsent()),
        "rx_committed": state.rx_committed,
        "resume_gen": state.resume_gen,
    }


def run_purge(args: argparse.Namespace) -> int:
    path: str = args.path
    targets: Sequence[str] | None = None if args.all else args.session
    purged, unknown = trio.run(_purge, path, targets)
    if unknown:
        raise CliError(
            f"{path}: no session {', '.join(unknown)} (see `trio-session store inspect {path}`)"
        )
    if args.json:
        emit_json({"path": path, "purged": purged})
    else:
        print(f"purged {purged} sessions from {path}")
    return EXIT_OK


async def _purge(path: str, targets: Sequence[str] | None) -> tuple[int, list[str]]:
    store = ts.SqliteStore(path)
    await store.open()
    try:
        if targets is None:
            return await store.purge(), []
        keys: list[str] = []
        unknown: list[str] = []
        known: dict[str, str] = {}
        for role in (Role.VENUE, Role.PARTICIPANT):
            for s in (await store.load(role)).sessions:
                known[s.key] = known[s.state.session_id.hex()] = s.key
        for target in targets:
            key = known.get(target.lower()) or known.get(target)
            (keys.append(key) if key is not None else unknown.append(target))
        if unknown:
            return 0, unknown
        return await store.purge(keys), []
    finally:
        await store.aclose()


def _when(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(seconds: float) -> str:
    delta = max(0.0, time.time() - seconds)
    if delta < 120:
        return f"{delta:.0f}s"
    if delta < 7200:
        return f"{delta / 60:.0f}min"
    return f"{delta / 3600:.1f}h"
