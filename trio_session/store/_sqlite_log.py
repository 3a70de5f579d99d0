"""The SQLite store's write path: an append-only log beside the database.

Why a log: a group commit is on the path of every ``send()``, and most of an
SQLite commit's cost is per transaction (locks, page writes, index upkeep),
tens of microseconds even when nothing waits for the disk.  Appending one
record to a file is one ``write()`` call.  So each batch is appended to the
current log file (``<store>-log-<n>``), and when the file is big or old
enough the store *rotates*: new batches go to file ``n + 1`` while a
background thread applies what file ``n`` changed (:class:`Changes`, folded in
memory, where acknowledged frames were already dropped) to the SQLite tables
in one transaction, records ``log_applied = n`` with it, and deletes file
``n``.  A crash anywhere in between is harmless: a load reads the tables and
replays every log file above ``log_applied`` in order, and replaying a file
whose changes are already in the tables changes nothing.

Record format: ``u32 length || u32 crc32 || msgpack batch`` after an 8-byte
file header (:data:`LOG_MAGIC`).  A record cut short by a crash (it was being
written, so nothing it holds was promised) ends the replay of its file; a bad
record before the end of a file means the file is damaged.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

import msgspec

from .._errors import StoreError
from ._image import drop_below
from ._types import (
    JournalEntry,
    ReplayEntry,
    SessionWrite,
    StoredState,
    encode_messages,
    encode_state,
)

__all__ = [
    "LOG_MAGIC",
    "ROTATE_BYTES",
    "ROTATE_RECORDS",
    "Changes",
    "LogFile",
    "decode_log",
    "delete_key",
    "encode_log",
    "log_files",
    "read_log",
]

#: First 8 bytes of every log file (the format's version is its last byte).
LOG_MAGIC: Final = b"TSESLOG\x01"
#: Rotate (and compact) once the current file holds this many records or bytes.
ROTATE_RECORDS: Final = 4096
ROTATE_BYTES: Final = 32 * 2**20
_RECORD: Final = struct.Struct("!II")
_LOG_NAME: Final = re.compile(r"-log-(\d{6,})$")

_encode: Final = msgspec.msgpack.Encoder().encode


class _LogRow(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    alive_at: float | None
    writes: list[SessionWrite]


_decoder: Final = msgspec.msgpack.Decoder(_LogRow)


def encode_log(writes: Sequence[SessionWrite], alive_at: float | None) -> bytes:
    """One record: its header and the encoded batch."""
    data = _encode(_LogRow(alive_at, list(writes)))
    return _RECORD.pack(len(data), zlib.crc32(data)) + data


def decode_log(data: bytes) -> tuple[float | None, list[SessionWrite]]:
    """Raises ValueError for a batch that does not decode."""
    try:
        row = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"invalid log record: {exc}") from None
    return row.alive_at, row.writes


def log_name(path: str, number: int) -> str:
    return f"{path}-log-{number:06d}"


def log_files(path: str) -> list[tuple[int, str]]:
    """The store's log files, by number."""
    directory, base = os.path.split(os.path.abspath(path))
    found = []
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            if name.startswith(base + "-log-"):
                m = _LOG_NAME.search(name)
                if m is not None:
                    found.append((int(m.group(1)), os.path.join(directory, name)))
    return sorted(found)


def read_log(path: str) -> Iterator[bytes]:
    """The complete records of one log file (a torn last record ends it).

    Raises ValueError naming the problem for a file that is not a log or is
    damaged before its end.
    """
    with open(path, "rb") as f:
        data = f.read()
    if data[: len(LOG_MAGIC)] != LOG_MAGIC:
        if len(data) < len(LOG_MAGIC) and LOG_MAGIC.startswith(data):
            return  # created and never written
        raise ValueError(f"{os.path.basename(path)} is not a trio_session log file")
    pos = len(LOG_MAGIC)
    end = len(data)
    while pos + _RECORD.size <= end:
        length, crc = _RECORD.unpack_from(data, pos)
        body = data[pos + _RECORD.size : pos + _RECORD.size + length]
        if len(body) < length:
            return  # torn by a crash while it was written: never promised
        if zlib.crc32(body) != crc:
            if pos + _RECORD.size + length == end:
                return  # the torn last record
            raise ValueError(f"{os.path.basename(path)}: damaged record at byte {pos}")
        yield body
        pos += _RECORD.size + length


class LogFile:
    """The log file being appended to (see the module docstring)."""

    def __init__(self, path: str, number: int) -> None:
        self.number = number
        self.path = log_name(path, number)
        self.records = 0
        self.bytes = 0
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        except OSError as exc:
            raise StoreError(
                f"store {path}: cannot create its log {self.path} ({exc.strerror})", path=path
            ) from None
        self._fd = fd
        self.append(LOG_MAGIC)
        self.records = 0

    def append(self, record: bytes) -> None:
        """Write ``record`` (one ``write()`` call for anything but a huge record)."""
        view = memoryview(record)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.records += 1
        self.bytes += len(record)

    def sync(self) -> None:
        os.fdatasync(self._fd)

    @property
    def due(self) -> bool:
        return self.records >= ROTATE_RECORDS or self.bytes >= ROTATE_BYTES

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


class _Delta:
    """One key's changes since the last compaction."""

    __slots__ = ("deleted", "frames", "journal", "replace", "state", "trim")

    def __init__(self, *, deleted: bool = False) -> None:
        #: The tables' rows of this key go first (it was deleted, maybe re-created).
        self.deleted = deleted
        #: The tables' frames of this key go (a new logical session).
        self.replace = False
        self.state: StoredState | None = None
        self.trim = 0
        self.frames: dict[int, ReplayEntry] = {}
        self.journal: dict[int, JournalEntry] = {}

    def apply(self, w: SessionWrite, state: StoredState) -> None:
        self.state = state
        if w.replace:
            self.replace = True
            self.frames.clear()
            self.trim = 0
        for first, msgs, flags in w.frames:
            self.frames[first] = (first, msgs, flags)
        if w.trim_below > self.trim:
            self.trim = w.trim_below
            drop_below(self.frames, w.trim_below)
        done = state.journal_done
        for j, msgs in w.journal:
            if j + len(msgs) > done:
                self.journal[j] = (j, msgs)
        drop_below(self.journal, done)


class Changes:
    """What a log file changed, folded per key (see the module docstring)."""

    def __init__(self) -> None:
        self._deltas: dict[str, _Delta] = {}
        self.alive_at: float | None = None

    def __bool__(self) -> bool:
        return bool(self._deltas) or self.alive_at is not None

    def add(self, writes: Iterable[SessionWrite], alive_at: float | None) -> None:
        for w in writes:
            if w.state is None:
                self._deltas[w.key] = _Delta(deleted=True)
                continue
            delta = self._deltas.get(w.key)
            if delta is None:
                delta = self._deltas[w.key] = _Delta()
            delta.apply(w, w.state)
        if alive_at is not None:
            self.alive_at = alive_at

    def apply(self, db: sqlite3.Connection, applied: int) -> None:
        """Apply the changes to the tables, inside the caller's transaction, and
        record that log files up to ``applied`` are in them."""
        for key, d in self._deltas.items():
            _apply(db, key, d)
        if self.alive_at is not None:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('alive_at', ?)", (self.alive_at,))
        db.execute("INSERT OR REPLACE INTO meta VALUES ('log_applied', ?)", (applied,))


def _apply(db: sqlite3.Connection, key: str, d: _Delta) -> None:
    if d.deleted:
        delete_key(db, key)
    state = d.state
    if state is None:
        return
    db.execute(
        "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
        "session_id = excluded.session_id, status = excluded.status, "
        "updated_at = excluded.updated_at, state = excluded.state",
        (
            key,
            state.role.value,
            state.session_id,
            state.status.value,
            state.updated_at,
            encode_state(state),
        ),
    )
    if d.replace and not d.deleted:
        db.execute("DELETE FROM frames WHERE key = ?", (key,))
    elif d.trim:
        db.execute(
            "DELETE FROM frames WHERE key = ? AND first_seq < ? AND end_seq <= ?",
            (key, d.trim, d.trim),
        )
    if d.frames:
        db.executemany(
            "INSERT OR REPLACE INTO frames VALUES (?, ?, ?, ?, ?)",
            [(key, f, f + len(m), fl, encode_messages(m)) for f, m, fl in d.frames.values()],
        )
    db.execute("DELETE FROM journal WHERE key = ? AND end_j <= ?", (key, state.journal_done))
    if d.journal:
        db.executemany(
            "INSERT OR REPLACE INTO journal VALUES (?, ?, ?, ?)",
            [(key, j, j + len(m), encode_messages(m)) for j, m in d.journal.values()],
        )


def delete_key(db: sqlite3.Connection, key: str) -> None:
    for table in ("sessions", "frames", "journal"):
        db.execute(f"DELETE FROM {table} WHERE key = ?", (key,))
