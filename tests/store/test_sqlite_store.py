"""``SqliteStore`` specifics: the file, its lock, its schema, its log and its compaction.

Each bad file must give one ``StoreError`` line naming the file and the fix,
never a silent fresh store.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from functools import partial
from pathlib import Path

import pytest
import trio

import trio_session as ts
from trio_session.protocol import Role
from trio_session.store import SessionWrite
from trio_session.store import _sqlite_log as log_module
from trio_session.store._sqlite_file import APPLICATION_ID, SCHEMA_VERSION
from trio_session.store._sqlite_log import LOG_MAGIC, log_files
from trio_session.testing import identities

from ..cli_helpers import cli_env
from .test_contract import _state


async def _write_one(path: Path, sid: int = 1) -> None:
    store = ts.SqliteStore(path)
    await store.open()
    state = _state(sid)
    await store.write([SessionWrite(state.key, state)])
    await store.aclose()


async def _expect_error(path: Path, match: str) -> ts.StoreError:
    with pytest.raises(ts.StoreError, match=match) as info:
        await ts.SqliteStore(path).open()
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert info.value.path == str(path)
    return info.value


async def test_a_new_store_file_and_its_log_are_private(tmp_path: Path) -> None:
    path = tmp_path / "venue.db"
    store = ts.SqliteStore(path)
    await store.open()
    state = _state()
    await store.write([SessionWrite(state.key, state)])
    for p in [path, *(Path(f) for _, f in log_files(str(path)))]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    await store.aclose()
    assert log_files(str(path)) == []  # closing folds the log into the tables


async def test_a_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "venue.db"
    await _write_one(path)
    path.chmod(0o644)
    await _expect_error(path, r"permissions too open .* chmod 600")


async def test_a_second_owner_is_refused_while_the_first_holds_it(tmp_path: Path) -> None:
    path = tmp_path / "venue.db"
    first = ts.SqliteStore(path)
    await first.open()
    err = await _expect_error(path, rf"in use by another process \(pid {os.getpid()}\)")
    assert "one venue or participant process per store file" in str(err)
    await first.aclose()
    second = ts.SqliteStore(path)  # released: usable again
    await second.open()
    await second.aclose()


async def test_garbage_is_not_taken_for_a_store(tmp_path: Path) -> None:
    path = tmp_path / "venue.db"
    path.write_bytes(b"these are not the sessions you are looking for" * 100)
    path.chmod(0o600)
    await _expect_error(path, "not a trio_session store or is damaged .* move it aside")


async def test_another_applications_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE accounts (id INTEGER)")
    db.commit()
    db.close()
    path.chmod(0o600)
    await _expect_error(path, "not a trio_session store")


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "venue.db"
    await _write_one(path)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    await _expect_error(
        path, rf"schema version {SCHEMA_VERSION + 1}, newer .* upgrade trio_session"
    )
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    db.close()


def _write_and_die(path: Path, sessions: int) -> None:
    """A process that writes ``sessions`` sessions and is killed before it closes."""
    code = f"""
        import os, signal, trio
        import trio_session as ts
        from trio_session.store import SessionWrite
        from tests.store.test_contract import _state
        async def main():
            store = ts.SqliteStore({str(path)!r})
            await store.open()
            for i in range(1, {sessions} + 1):
                s = _state(i, tx=1, done=1)
                await store.write([SessionWrite(s.key, s, [(0, [b"m%d" % i], 0)])])
            os.kill(os.getpid(), signal.SIGKILL)
        trio.run(main)
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=cli_env(), timeout=60, check=False
    )
    assert done.returncode == -9


async def test_what_a_killed_process_wrote_is_read_back(tmp_path: Path) -> None:
    path = tmp_path / "venue.db"
    _write_and_die(path, 3)
    assert len(log_files(str(path))) == 1
    reader = ts.SqliteStore(path, read_only=True)  # what `store inspect` sees
    await reader.open()
    assert len((await reader.load(Role.VENUE)).sessions) == 3
    await reader.aclose()
    store = ts.SqliteStore(path)
    await store.open()  # folds the log into the tables
    sessions = (await store.load(Role.VENUE)).sessions
    assert sorted(s.frames[0][1][0] for s in sessions) == [b"m1", b"m2", b"m3"]
    await store.aclose()


async def test_a_torn_last_record_is_ignored_and_a_damaged_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "venue.db"
    _write_and_die(path, 2)
    ((_, log_file),) = log_files(str(path))
    log_path = trio.Path(log_file)
    data = await log_path.read_bytes()
    await log_path.write_bytes(data[:-3])  # the second record, cut short by the crash
    reader = ts.SqliteStore(path, read_only=True)
    await reader.open()
    assert len((await reader.load(Role.VENUE)).sessions) == 1
    await reader.aclose()
    damaged = bytearray(data)
    damaged[len(LOG_MAGIC) + 12] ^= 0xFF  # inside the first record
    await log_path.write_bytes(bytes(damaged))
    await _expect_error(path, "is damaged: its log: .*damaged record")


async def test_full_log_files_are_folded_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_module, "ROTATE_RECORDS", 5)
    path = tmp_path / "venue.db"
    store = ts.SqliteStore(path)
    await store.open()
    for i in range(1, 41):
        state = _state(i % 7 + 1, tx=i, done=i)
        await store.write([SessionWrite(state.key, state, [(i - 1, [b"x"], 0)], i - 1)])
    # A reader sees the tables plus the files not folded yet, while the owner writes.
    reader = ts.SqliteStore(path, read_only=True)
    await reader.open()
    seen = {s.key: s.state.next_tx_seq for s in (await reader.load(Role.VENUE)).sessions}
    await reader.aclose()
    assert len(seen) == 7 and max(seen.values()) == 40
    mine = {s.key: s.state.next_tx_seq for s in (await store.load(Role.VENUE)).sessions}
    assert mine == seen
    await store.aclose()
    assert log_files(str(path)) == []


async def test_a_failed_write_fails_every_later_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ts.SqliteStore(tmp_path / "venue.db")
    await store.open()
    state = _state()

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(ts.StoreError, match=r"cannot write store .*No space left on device"):
        await store.write([SessionWrite(state.key, state)])
    monkeypatch.undo()
    with pytest.raises(ts.StoreError, match="No space left"):
        await store.write([SessionWrite(state.key, state)])
    await store.aclose()


async def test_synchronous_must_be_normal_or_full(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        ts.SqliteStore(tmp_path / "x.db", synchronous="sometimes")  # type: ignore[arg-type]
    await trio.lowlevel.checkpoint()


async def test_sessions_run_end_to_end_on_full_sync_stores(tmp_path: Path) -> None:
    """synchronous="full": every write waits for the disk on the log sync thread."""
    venue_id, alice, registry = identities()

    async def echo(session: ts.Session) -> None:
        async for message in session:
            await session.send(message, commit=True)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            vstore = ts.SqliteStore(tmp_path / "venue.db", synchronous="full")
            serve = partial(ts.serve, echo, venue_id, registry, "127.0.0.1", 0, store=vstore)
            server = await nursery.start(serve)
            pstore = ts.SqliteStore(tmp_path / "alice.db", synchronous="full")
            url = f"ws://127.0.0.1:{server.port}/"
            async with ts.connect(url, alice, venue_id.public_key, store=pstore) as session:
                for i in range(50):
                    await session.send(b"%d" % i)
                assert [await session.receive() for _ in range(50)] == [
                    b"%d" % i for i in range(50)
                ]
            stats = pstore.statistics()
            assert stats.commits >= 50 and stats.max_write_seconds > 0
            nursery.cancel_scope.cancel()
