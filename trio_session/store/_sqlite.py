"""``SqliteStore``: sessions in one SQLite file (stdlib ``sqlite3``, WAL), written through a log.

Every group commit is one record appended to the store's log file
(``_sqlite_log.py``); a store thread folds full log files into the SQLite
tables in the background, in transactions that wait for the disk.  So the
event loop never waits for SQLite, and never for the disk unless asked to:

* ``synchronous="normal"`` (default): a commit is in the operating system's
  page cache when :meth:`SqliteStore.write` returns (one ``write()`` call, a
  few microseconds on the event loop).  It survives the process being killed
  (kill -9, a crash, an OOM kill); a power loss or kernel crash may lose the
  last commits (the store stays consistent).
* ``synchronous="full"``: each commit also waits for the disk (``fdatasync``
  of the log, on a thread of its own: milliseconds, during which the event loop
  goes on), so it survives a power loss too.
"""

from __future__ import annotations

import contextlib
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import outcome
import trio

from .._errors import StoreError
from ..protocol import Role
from ._base import SessionStore
from ._image import Image
from ._sqlite_file import OwnerLock, check_path, connect
from ._sqlite_log import (
    Changes,
    LogFile,
    decode_log,
    delete_key,
    encode_log,
    log_files,
    read_log,
)
from ._types import SessionWrite, StoreContents, StoredState, decode_messages, decode_state

__all__ = ["SqliteStore"]

T = TypeVar("T")
Synchronous = Literal["normal", "full"]


class SqliteStore(SessionStore):
    """Sessions in the SQLite file ``path`` (created with mode 0600 if missing).

    Args:
        path: the store file; its log files sit beside it (``PATH-log-N``).
            One process at a time may use it (it is locked).
        synchronous: ``"normal"`` (survives a process crash) or ``"full"``
            (survives a power loss too, slower); see the module docstring.
        read_only: only :meth:`load` (for ``store inspect``): no lock, works on
            the file of a running venue.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "normal",
        read_only: bool = False,
    ) -> None:
        super().__init__()
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', got {synchronous!r}")
        self.path = os.fspath(path)
        self.synchronous = synchronous
        self.read_only = read_only
        self._lock = OwnerLock(self.path)
        #: The thread that folds full log files into the tables, and for "full" the
        #: thread that waits for the disk.
        self._compactor: _Compactor | None = None
        self._syncer: _Worker | None = None
        self._db: sqlite3.Connection | None = None
        self._log: LogFile | None = None
        #: What the current log file changed (folded into the tables on rotation).
        self._changes = Changes()
        #: Set when a background compaction failed.
        self._failure: StoreError | None = None

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path!r} synchronous={self.synchronous}>"

    @property
    def location(self) -> str:
        return self.path

    # -- opening and closing ------------------------------------------------------------
    #
    # Opening, loading, purging and closing run on the event loop: they happen at
    # start and stop (and in `store` commands), and a blocking call there is
    # simpler than a thread round trip (and keeps a MockClock's time still).

    async def _open(self) -> None:
        await trio.lowlevel.checkpoint()
        if self.read_only:
            check_path(self.path, create=False)
            self._db = connect(self.path, read_only=True, synchronous="full")
            return
        number = self._open_sync()
        try:
            self._log = LogFile(self.path, number)
            name = os.path.basename(self.path)
            self._compactor = _Compactor(f"trio-session store {name}")
            if self.synchronous == "full":
                self._syncer = _Worker(f"trio-session log sync {name}")
        except BaseException:
            self._stop_threads()
            self._close_db()
            raise

    def _open_sync(self) -> int:
        """Lock, check and recover the file; returns the number of the next log file."""
        check_path(self.path, create=True)
        self._lock.acquire()
        try:
            self._db = db = connect(self.path, read_only=False, synchronous="full")
            with _Transaction(db, self.path):
                db.execute("INSERT OR REPLACE INTO meta VALUES ('owner_pid', ?)", (os.getpid(),))
            return self._recover(db)
        except BaseException:
            self._close_db()
            raise

    def _recover(self, db: sqlite3.Connection) -> int:
        """Fold the log files a previous process left into the tables."""
        applied = _applied(db)
        files = log_files(self.path)
        changes = Changes()
        try:
            for number, path in files:
                if number > applied:
                    for data in read_log(path):
                        changes.add(*_swap(decode_log(data)))
        except (OSError, ValueError) as exc:
            raise self._damaged(f"its log: {exc}") from None
        last = max([applied, *(n for n, _ in files)])
        if changes or last > applied:
            with _Transaction(db, self.path):
                changes.apply(db, last)
        for _, path in files:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return last + 1

    async def _close(self) -> None:
        await trio.lowlevel.checkpoint()
        log, self._log = self._log, None
        try:
            if log is not None and self._compactor is not None:
                log.close()
                self._compactor.drain()  # folds still running go first
                changes, self._changes = self._changes, Changes()
                with contextlib.suppress(StoreError):  # the log stays; the next open folds it
                    self._compact(log.number, log.path, changes)
        finally:
            self._stop_threads()
            self._close_db()

    def _close_db(self) -> None:
        db, self._db = self._db, None
        try:
            if db is not None:
                db.close()
        finally:
            self._lock.release()

    def _stop_threads(self) -> None:
        for worker in (self._syncer, self._compactor):
            if worker is not None:
                worker.stop()
        self._syncer = self._compactor = None

    def _damaged(self, what: str) -> StoreError:
        return StoreError(
            f"store {self.path} is damaged: {what}; move it aside to start afresh "
            "(the sessions in it are lost)",
            path=self.path,
        )

    # -- writing -------------------------------------------------------------------------

    async def write(self, writes: Sequence[SessionWrite], *, alive_at: float | None = None) -> None:
        log = self._log
        if log is None:
            raise StoreError(f"store {self.path} is not open for writing", path=self.path)
        if self._failure is not None:
            raise self._failure
        start = time.perf_counter()
        record = encode_log(writes, alive_at)
        try:
            if self._syncer is None:
                log.append(record)  # no checkpoint: a started write completes (the contract)
            else:
                await self._syncer.run(_append_and_sync, log, record)
        except OSError as exc:
            self._failure = StoreError(
                f"cannot write store {self.path}: {exc.strerror or exc}", path=self.path
            )
            raise self._failure from None
        self._changes.add(writes, alive_at)
        if log.due:
            self._rotate(log)
        self._count(writes, len(record), time.perf_counter() - start)

    def _rotate(self, log: LogFile) -> None:
        """New batches go to the next log file; the store thread folds this one."""
        assert self._compactor is not None
        self._log = LogFile(self.path, log.number + 1)
        log.close()
        changes, self._changes = self._changes, Changes()
        self._compactor.submit(self._compact_in_background, log.number, log.path, changes)

    def _compact_in_background(self, number: int, path: str, changes: Changes) -> None:
        try:
            self._compact(number, path, changes)
        except StoreError as exc:
            self._failure = exc

    def _compact(self, number: int, path: str, changes: Changes) -> None:
        """Apply ``changes`` (log file ``number``) and delete the file."""
        assert self._compactor is not None
        with self._compactor.lock:
            db = self._connection()
            with _Transaction(db, self.path):
                changes.apply(db, number)
            with contextlib.suppress(OSError):
                os.unlink(path)
            with contextlib.suppress(sqlite3.Error):
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"store {self.path} is not open", path=self.path)
        return self._db

    # -- reading ---------------------------------------------------------------------------

    async def load(self, role: Role) -> StoreContents:
        await trio.lowlevel.checkpoint()
        if self._failure is not None:
            raise self._failure
        if self._compactor is None:
            image = self._read_image()
        else:
            with self._compactor.lock:
                image = self._read_image()
        sessions = image.sessions(role)
        for session in sessions:
            try:
                session.record()  # validates sequence numbers, frames and secrets
                session.unsent()  # validates the journal
            except ValueError as exc:
                raise self._damaged(f"session {session.key}: {exc}") from None
        return StoreContents(sessions, image.alive_at)

    def _read_image(self) -> Image:
        """The tables with the log files above ``log_applied`` replayed on top.

        A log file that vanishes while it is read was folded into the tables by
        a running venue meanwhile: read everything again.
        """
        for _ in range(20):
            try:
                return self._read_image_once()
            except FileNotFoundError:
                continue
        raise StoreError(f"store {self.path} keeps changing while it is read", path=self.path)

    def _read_image_once(self) -> Image:
        db = self._connection()
        image = Image()
        try:
            db.execute("BEGIN")
            try:
                applied = _applied(db)
                _read_tables(db, image)
            finally:
                db.execute("COMMIT")
            for number, path in log_files(self.path):
                if number > applied:
                    for data in read_log(path):
                        alive_at, writes = decode_log(data)
                        for w in writes:
                            image.apply(w)
                        if alive_at is not None:
                            image.alive_at = alive_at
        except sqlite3.DatabaseError as exc:
            raise self._damaged(f"cannot read it ({exc})") from None
        except ValueError as exc:
            raise self._damaged(str(exc)) from None
        return image

    async def purge(self, keys: Sequence[str] | None = None) -> int:
        await trio.lowlevel.checkpoint()
        log, compactor = self._log, self._compactor
        if log is None or compactor is None:
            raise StoreError(f"store {self.path} was opened read-only", path=self.path)
        if log.records:
            self._rotate(log)
        compactor.drain()
        if self._failure is not None:
            raise self._failure
        with compactor.lock:
            return self._purge_sync(keys)

    def _purge_sync(self, keys: Sequence[str] | None) -> int:
        db = self._connection()
        with _Transaction(db, self.path):
            if keys is None:
                n = db.execute("SELECT count(*) FROM sessions").fetchone()[0]
                for table in ("sessions", "frames", "journal"):
                    db.execute(f"DELETE FROM {table}")
            else:
                n = 0
                for key in keys:
                    row = db.execute("SELECT count(*) FROM sessions WHERE key = ?", (key,))
                    n += row.fetchone()[0]
                    delete_key(db, key)
        return int(n)


def _swap(
    decoded: tuple[float | None, list[SessionWrite]],
) -> tuple[list[SessionWrite], float | None]:
    alive_at, writes = decoded
    return writes, alive_at


def _append_and_sync(log: LogFile, record: bytes) -> None:
    log.append(record)
    log.sync()


def _applied(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM meta WHERE name = 'log_applied'").fetchone()
    return row[0] if row and isinstance(row[0], int) else 0


def _read_tables(db: sqlite3.Connection, image: Image) -> None:
    frames = _grouped(
        db.execute("SELECT key, first_seq, msgs, flags FROM frames ORDER BY key, first_seq")
    )
    journal = _grouped(db.execute("SELECT key, j, msgs FROM journal ORDER BY key, j"))
    for key, blob in db.execute("SELECT key, state FROM sessions"):
        image.add(
            key,
            _state(key, blob),
            [(f, decode_messages(m), fl) for f, m, fl in frames.get(key, [])],
            [(j, decode_messages(m)) for j, m in journal.get(key, [])],
        )
    alive = db.execute("SELECT value FROM meta WHERE name = 'alive_at'").fetchone()
    if alive and isinstance(alive[0], (int, float)):
        image.alive_at = float(alive[0])


def _grouped(cursor: sqlite3.Cursor) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    for row in cursor:
        out.setdefault(row[0], []).append(row[1:])
    return out


def _state(key: str, blob: Any) -> StoredState:
    if not isinstance(blob, bytes):
        raise ValueError(f"session {key}: state is not a blob")
    state = decode_state(blob)
    if state.key != key:
        raise ValueError(f"session {key}: belongs to {state.key!r}")
    return state


class _Transaction:
    """``with`` one transaction: COMMIT on success, ROLLBACK and a StoreError on failure."""

    def __init__(self, db: sqlite3.Connection, path: str) -> None:
        self.db = db
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN")
        return self.db

    def __exit__(self, exc_type: type[BaseException] | None, exc: Any, tb: Any) -> None:
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error as err:
                exc = err
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"cannot write store {self.path}: {exc}", path=self.path) from None


class _Thread:
    """One long-lived thread running the calls it is given, in order."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=60)


class _Compactor(_Thread):
    """The store thread: folds log files into the tables, one after the other.

    The SQLite connection is shared with the event loop's own (rare) uses,
    under :attr:`lock`; :meth:`drain` waits until every submitted fold is done.
    """

    def __init__(self, name: str) -> None:
        self.lock = threading.Lock()
        self._idle = threading.Condition()
        self._pending = 0
        super().__init__(name)

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        with self._idle:
            self._pending += 1

        def job() -> None:
            try:
                fn(*args)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

        self._jobs.put(job)

    def drain(self) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0)


class _Worker(_Thread):
    """The log sync thread (``synchronous="full"``): :meth:`run` waits for a call's
    result, which comes back through the Trio token, so the event loop goes on
    while the disk syncs."""

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        result: list[outcome.Outcome[T]] = []

        def job() -> None:
            result.append(outcome.capture(fn, *args))
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        self._jobs.put(job)
        # A call in flight finishes whatever happens to the caller: the store's
        # state must follow what the file holds.
        with trio.CancelScope(shield=True):
            await done.wait()
        return result[0].unwrap()
