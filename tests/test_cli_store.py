"""``serve --store``, ``connect --store``, ``store inspect`` and ``store purge``, in processes.

A venue killed with SIGKILL and started again on its store loses nothing and resets
nobody; ``store inspect`` reads the store of a running venue; a store that cannot be
used (corrupt, newer schema, held by another venue) stops ``serve`` at once with
one error line and exit code 2.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
from pathlib import Path

import trio

import trio_session as ts
from trio_session.protocol import Role
from trio_session.store._sqlite_file import SCHEMA_VERSION

from .cli_helpers import (
    Cli,
    Keys,
    assert_clean,
    connect_cli,
    keys,
    serve_cli,
    start_serve,
    trading_summary,
)


def _participant(k: Keys, port: int, *extra: str) -> Cli:
    return connect_cli(k, port, "--max-delay", "0.25", *extra)


def _second_participant(k: Keys) -> Path:
    """dave: another key the registry trusts (alice is the first)."""
    dave = ts.Identity.generate(key_id="dave")
    dave.save(k.dir / "dave.key")
    registry = ts.KeyRegistry.load(k.registry)
    registry.add("dave", dave.public_key)
    registry.save(k.registry)
    return k.dir / "dave.key"


def _one_error_line(cli: Cli, pattern: str) -> str:
    code = cli.finish(timeout=20)
    assert code == 2, cli.dump()
    assert_clean(cli.dump())
    errors = [line for line in cli.err if line.startswith("trio-session: error:")]
    assert len(errors) == 1, cli.dump()
    assert re.search(pattern, errors[0]), errors[0]
    return errors[0]


def test_a_venue_killed_and_restarted_on_its_store_resets_nobody(tmp_path: Path) -> None:
    k = keys(tmp_path)
    store = str(tmp_path / "venue.db")
    venue, port = start_serve(k, "--store", store, "--log-level", "warning")
    participant = _participant(k, port, "--seconds", "5")
    try:
        participant.wait_for(r"orders \d+ acked \d+")
        venue.signal(signal.SIGKILL)
        assert venue.finish() == -signal.SIGKILL
        participant.wait_for("event=stale", stream="stderr")
        venue, _ = start_serve(k, "--store", store, "--log-level", "warning", port=port)
        code = participant.finish(timeout=30)
    finally:
        participant.stop()
        venue.stop()
    summary = trading_summary(participant, code)
    assert "resets=0" in summary, summary
    assert re.search(r"resumes=[1-9]", summary), summary


def test_store_inspect_lists_the_sessions_of_a_running_venue(tmp_path: Path) -> None:
    k = keys(tmp_path)
    dave = _second_participant(k)
    store = str(tmp_path / "venue.db")
    venue, port = start_serve(k, "--store", store)
    alice = _participant(k, port, "--seconds", "30")
    other = connect_cli(k, port, "--seconds", "30", identity=dave)
    try:
        logins = {}
        for name in ("alice", "dave"):
            found = venue.wait_for(rf"event=login session=(\w+) .*key_id={name}", stream="stderr")
            logins[found[1]] = name
        for p in (alice, other):
            p.wait_for(r"orders [1-9]\d* acked [1-9]\d*")
        inspect = Cli("store", "inspect", store, "--json")
        assert inspect.finish() == 0, inspect.dump()
        table = Cli("store", "inspect", store)
        assert table.finish() == 0, table.dump()
    finally:
        for p in (alice, other, venue):
            p.stop()
    doc = json.loads(inspect.out[-1])
    secrets = _resume_secrets(Path(store))
    assert secrets and not any(s.hex() in inspect.dump() + table.dump() for s in secrets)
    rows = {row["session_id"]: row for row in doc["sessions"]}
    assert {sid: row["key_id"] for sid, row in rows.items()} == logins
    for row in rows.values():
        assert row["role"] == "venue" and row["status"] == "attached", row
        assert row["next_tx_seq"] > 0 and row["rx_committed"] > 0, row
        assert 0 <= row["peer_ack"] <= row["next_tx_seq"] and row["unacked"] >= 0, row
        assert row["detached_at"] is None and row["resume_gen"] >= 0, row
    assert doc["alive_at"] is not None
    text = "\n".join(table.out)
    assert text.startswith(f"store {store}: 2 sessions; last venue liveness stamp: ")
    for sid, name in logins.items():
        assert re.search(rf"^{sid} venue +{name} +attached +tx=\d+ acked=\d+ ", text, re.M), text


def test_a_store_that_cannot_be_used_stops_serve_with_one_line(tmp_path: Path) -> None:
    k = keys(tmp_path)
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"\x00garbage" * 512)
    corrupt.chmod(0o600)
    line = _one_error_line(
        _serve(k, corrupt), "store .*corrupt.db is not a trio_session store or is damaged"
    )
    assert "move it aside" in line

    newer = tmp_path / "newer.db"
    venue, _ = start_serve(k, "--store", str(newer))
    venue.signal(signal.SIGTERM)
    assert venue.finish() == 143
    db = sqlite3.connect(newer)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    _one_error_line(_serve(k, newer), rf"schema version {SCHEMA_VERSION + 1}, newer than")

    held = tmp_path / "held.db"
    first, _ = start_serve(k, "--store", str(held))
    try:
        line = _one_error_line(_serve(k, held), r"held.db is in use by another process \(pid \d+\)")
        assert f"pid {first.proc.pid}" in line, line
    finally:
        first.stop()


def _resume_secrets(path: Path) -> list[bytes]:
    """What the store holds that must never be printed (read after the venue died)."""

    async def load() -> list[bytes]:
        store = ts.SqliteStore(path, read_only=True)
        await store.open()
        try:
            contents = await store.load(Role.VENUE)
        finally:
            await store.aclose()
        return [secret for s in contents.sessions for _, secret in s.state.resume_secrets]

    return trio.run(load)


def _serve(k: Keys, store: Path) -> Cli:
    return serve_cli(k, "--store", str(store))


def test_store_purge_deletes_sessions_from_a_store_nobody_uses(tmp_path: Path) -> None:
    k = keys(tmp_path)
    store = str(tmp_path / "venue.db")
    venue, port = start_serve(k, "--store", store)
    participant = _participant(k, port, "--seconds", "30")
    try:
        login = venue.wait_for(r"event=login session=(\w+) ", stream="stderr")
        participant.wait_for(r"orders [1-9]\d* acked")
        busy = Cli("store", "purge", store, "--all")
        _one_error_line(busy, "in use by another process")
        venue.signal(signal.SIGKILL)  # the session stays in the store
        venue.finish()
    finally:
        participant.stop()
        venue.stop()
    unknown = Cli("store", "purge", store, "--session", "feedface")
    _one_error_line(unknown, r"no session feedface \(see `trio-session store inspect")
    purge = Cli("store", "purge", store, "--session", login[1], "--json")
    assert purge.finish() == 0, purge.dump()
    assert json.loads(purge.out[-1]) == {"path": store, "purged": 1}
    inspect = Cli("store", "inspect", store, "--json")
    assert inspect.finish() == 0
    assert json.loads(inspect.out[-1])["sessions"] == []


def test_store_inspect_of_a_missing_file_is_one_line(tmp_path: Path) -> None:
    _one_error_line(Cli("store", "inspect", str(tmp_path / "none.db")), r"none.db: no such file")
