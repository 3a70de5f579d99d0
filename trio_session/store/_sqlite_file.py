"""Opening a store file safely: checks, the owner lock, the schema.

Why a module of its own: every way a store file can be wrong must end in one
:class:`~trio_session.StoreError` line that names the file and the fix, before
anything runs, and never in a silent fresh store.  This module owns those
checks; ``_sqlite.py`` owns reading and writing sessions.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import stat
from typing import Final

from .._errors import StoreError

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "OwnerLock",
    "check_path",
    "connect",
    "ensure_schema",
]

#: ``PRAGMA application_id`` of a trio_session store ("tses").
APPLICATION_ID: Final = 0x74736573
#: ``PRAGMA user_version``: the layout below.  A file with a higher one was
#: written by a newer trio_session and is refused.
SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value ANY) WITHOUT ROWID;
CREATE TABLE sessions (
    key TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    session_id BLOB NOT NULL,
    status TEXT NOT NULL,
    updated_at REAL NOT NULL,
    state BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE frames (
    key TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    end_seq INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    msgs BLOB NOT NULL,
    PRIMARY KEY (key, first_seq)
) WITHOUT ROWID;
CREATE TABLE journal (
    key TEXT NOT NULL,
    j INTEGER NOT NULL,
    end_j INTEGER NOT NULL,
    msgs BLOB NOT NULL,
    PRIMARY KEY (key, j)
) WITHOUT ROWID;
"""


def check_path(path: str, *, create: bool) -> None:
    """The path is a regular file we may use (created 0600 when missing and ``create``)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not create:
            raise StoreError(f"store {path}: no such file", path=path) from None
        _create(path)
        return
    except OSError as exc:
        raise StoreError(f"store {path}: cannot use it ({exc.strerror})", path=path) from None
    if stat.S_ISDIR(st.st_mode):
        raise StoreError(f"store {path} is a directory (expected a store file)", path=path)
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"store {path} is not a regular file", path=path)
    if create and os.name == "posix" and st.st_mode & 0o077:
        raise StoreError(
            f"store {path}: permissions too open (mode {stat.S_IMODE(st.st_mode):#o}; it holds "
            f"message payloads and resume secrets); fix: chmod 600 {path}",
            path=path,
        )


def _create(path: str) -> None:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"store {path}: cannot create it ({exc.strerror})", path=path) from None
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o600)  # whatever the umask
    os.close(fd)


class OwnerLock:
    """An exclusive ``flock`` on the store file for as long as this process uses it.

    ``flock`` and SQLite's own (``fcntl``) locks are independent on Linux, so
    readers (``store inspect``) still work while a venue runs.  The descriptor is
    closed only after SQLite closed the file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError as exc:
            raise StoreError(
                f"store {self.path}: cannot open it ({exc.strerror})", path=self.path
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = _owner(self.path)
            raise StoreError(
                f"store {self.path} is in use by another process{owner}: one venue or "
                "participant process per store file (stop it, or use another file)",
                path=self.path,
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _owner(path: str) -> str:
    """`` (pid N)`` when the file says which process owns it."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.5)
        try:
            row = db.execute("SELECT value FROM meta WHERE name = 'owner_pid'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return ""
    return f" (pid {row[0]})" if row and isinstance(row[0], int) else ""


def connect(path: str, *, read_only: bool, synchronous: str) -> sqlite3.Connection:
    """An SQLite connection on ``path`` in WAL mode with the schema checked."""
    try:
        if read_only:
            db = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
        else:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"store {path}: cannot open it ({exc})", path=path) from None
    try:
        ensure_schema(db, path, read_only=read_only)
        if not read_only:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"store {path}: cannot use WAL mode (got {mode})", path=path)
            db.execute(f"PRAGMA synchronous={synchronous}")
    except sqlite3.DatabaseError as exc:
        db.close()
        raise StoreError(
            f"store {path} is not a trio_session store or is damaged ({exc}); move it aside "
            "to start afresh (the sessions in it are lost)",
            path=path,
        ) from None
    except BaseException:
        db.close()
        raise
    return db


def ensure_schema(db: sqlite3.Connection, path: str, *, read_only: bool) -> None:
    """Check the file's identity and version; create the schema in an empty file."""
    app_id = db.execute("PRAGMA application_id").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if app_id == 0 and version == 0:
        tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables:
            raise StoreError(
                f"store {path} is not a trio_session store (an SQLite database of something "
                "else); use another file",
                path=path,
            )
        if read_only:
            raise StoreError(f"store {path} is empty (no sessions were ever stored)", path=path)
        db.executescript(
            f"BEGIN; {_SCHEMA} PRAGMA application_id={APPLICATION_ID}; "
            f"PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
        )
        return
    if app_id != APPLICATION_ID:
        raise StoreError(
            f"store {path} is not a trio_session store (an SQLite database of something "
            "else); use another file",
            path=path,
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"store {path} has schema version {version}, newer than this trio_session "
            f"supports ({SCHEMA_VERSION}): upgrade trio_session, or use another file",
            path=path,
        )
    if version < SCHEMA_VERSION:
        raise StoreError(
            f"store {path} has schema version {version}, which this trio_session cannot "
            f"read ({SCHEMA_VERSION}); use another file",
            path=path,
        )
