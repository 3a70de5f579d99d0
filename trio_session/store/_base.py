"""The interface every session store implements.

The runtime uses a store through these coroutine methods only, so a store over
the network (Redis, Valkey) fits the same contract as the embedded ones; the
contract test suite (``tests/store/``) runs against every implementation.

Ownership: :meth:`SessionStore.open` takes the store for this process (a file
store locks its file: a second process is refused with a :class:`StoreError`);
one store object may be opened by several users of one process (each
:meth:`open` matched by one :meth:`aclose`), e.g. several participant sessions.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import attrs

from ..protocol import Role
from ._types import SessionWrite, StoreContents

__all__ = ["SessionStore", "StoreStatistics"]


@attrs.frozen
class StoreStatistics:
    """What durability has cost so far (``store.statistics()``)."""

    #: Batches written (group commits) and session writes in them.
    commits: int
    session_writes: int
    #: Frames and journal entries written.
    frames: int
    journal_entries: int
    #: Bytes written (as the store encodes them).
    bytes_written: int
    #: Seconds spent in writes, in total and the longest one.
    write_seconds: float
    max_write_seconds: float


class SessionStore(abc.ABC):
    """Where logical sessions live between connections, and across restarts.

    The default, :class:`MemoryStore`, keeps nothing beyond the process (and
    costs nothing); :class:`SqliteStore` keeps sessions in a file so that a
    restarted venue or participant resumes them.
    """

    #: Whether the runtime treats writes as durable: it then writes ahead (a
    #: message is stored before ``send()`` returns and before it can be on the
    #: wire) and acknowledges only messages the application committed.
    durable: bool = True

    def __init__(self) -> None:
        self._users = 0
        self._commits = 0
        self._session_writes = 0
        self._frames = 0
        self._journal = 0
        self._bytes = 0
        self._write_seconds = 0.0
        self._max_write = 0.0

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """What the store is, for messages (a path, an address)."""

    @property
    def is_open(self) -> bool:
        return self._users > 0

    async def open(self) -> None:
        """Take the store for this process (see the module docstring).

        Raises :class:`~trio_session.StoreError` naming the store and the fix
        when it cannot be used: held by another process, corrupt, not a
        trio_session store, or written by a newer version.
        """
        if self._users == 0:
            await self._open()
        self._users += 1

    async def aclose(self) -> None:
        """Release one :meth:`open`; the last one closes the store.  Idempotent."""
        if self._users == 0:
            return
        self._users -= 1
        if self._users == 0:
            await self._close()

    @abc.abstractmethod
    async def _open(self) -> None: ...

    @abc.abstractmethod
    async def _close(self) -> None: ...

    @abc.abstractmethod
    async def load(self, role: Role) -> StoreContents:
        """Every stored session of ``role``, and the last liveness stamp.

        Raises :class:`~trio_session.StoreError` for an entry that cannot be
        read back (the store is damaged): never a silent fresh start.
        """

    @abc.abstractmethod
    async def write(self, writes: Sequence[SessionWrite], *, alive_at: float | None = None) -> None:
        """Apply ``writes`` (each atomically; a store may apply the whole batch in
        one transaction) and record ``alive_at`` as the liveness stamp.

        Durable, by the store's sync policy, when it returns.  Raises
        :class:`~trio_session.StoreError` when the write failed.  Never raises
        ``Cancelled``: a write the runtime started must complete (a store that
        waits, e.g. for the network, shields that wait), because the batch's
        sessions were promised it.
        """

    @abc.abstractmethod
    async def purge(self, keys: Sequence[str] | None = None) -> int:
        """Delete the sessions under ``keys`` (None: every session); returns how many."""

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            commits=self._commits,
            session_writes=self._session_writes,
            frames=self._frames,
            journal_entries=self._journal,
            bytes_written=self._bytes,
            write_seconds=self._write_seconds,
            max_write_seconds=self._max_write,
        )

    def _count(self, writes: Sequence[SessionWrite], nbytes: int, seconds: float) -> None:
        """Book one write batch in the statistics."""
        self._commits += 1
        self._session_writes += len(writes)
        for w in writes:
            self._frames += len(w.frames)
            self._journal += len(w.journal)
        self._bytes += nbytes
        self._write_seconds += seconds
        if seconds > self._max_write:
            self._max_write = seconds
