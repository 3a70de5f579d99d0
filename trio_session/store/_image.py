"""Sessions as a store holds them, in memory, and how a write changes them.

One definition of what a :class:`~trio_session.store.SessionWrite` means, used
by :class:`~trio_session.store.MemoryStore` as its storage and by
:class:`~trio_session.store.SqliteStore` to replay its log on load, so the two
cannot disagree.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..protocol import Role
from ._types import JournalEntry, ReplayEntry, SessionWrite, StoredSession, StoredState

__all__ = ["Image", "drop_below"]


class _Entry:
    """One stored session: state, frames by first seq, journal by number (both
    in number order: entries are added in order)."""

    __slots__ = ("frames", "journal", "state")

    def __init__(self, state: StoredState) -> None:
        self.state = state
        self.frames: dict[int, ReplayEntry] = {}
        self.journal: dict[int, JournalEntry] = {}

    def copy(self) -> _Entry:
        entry = _Entry(self.state)
        entry.frames = dict(self.frames)
        entry.journal = dict(self.journal)
        return entry


class Image:
    """Stored sessions by key (see the module docstring)."""

    def __init__(self) -> None:
        self.entries: dict[str, _Entry] = {}
        self.alive_at: float | None = None

    def copy(self) -> Image:
        other = Image()
        other.entries = {key: entry.copy() for key, entry in self.entries.items()}
        other.alive_at = self.alive_at
        return other

    def add(
        self,
        key: str,
        state: StoredState,
        frames: Iterable[ReplayEntry],
        journal: Iterable[JournalEntry],
    ) -> None:
        """A session as read back from storage."""
        entry = self.entries[key] = _Entry(state)
        entry.frames = {f[0]: f for f in frames}
        entry.journal = {j[0]: j for j in journal}

    def apply(self, w: SessionWrite) -> None:
        """Apply one session's write (the meaning of every :class:`SessionWrite` field)."""
        if w.state is None:
            self.entries.pop(w.key, None)
            return
        entry = self.entries.get(w.key)
        if entry is None:
            entry = self.entries[w.key] = _Entry(w.state)
        entry.state = w.state
        if w.replace:
            entry.frames.clear()
        for first, msgs, flags in w.frames:
            entry.frames[first] = (first, msgs, flags)
        if w.trim_below:
            drop_below(entry.frames, w.trim_below)
        done = w.state.journal_done
        for j, msgs in w.journal:
            if j + len(msgs) > done:
                entry.journal[j] = (j, msgs)
        drop_below(entry.journal, done)

    def sessions(self, role: Role) -> list[StoredSession]:
        """The sessions of ``role``, as :meth:`SessionStore.load` returns them."""
        out = []
        for entry in self.entries.values():
            if entry.state.role is role:
                out.append(
                    StoredSession(
                        entry.state, list(entry.frames.values()), list(entry.journal.values())
                    )
                )
        return out

    def purge(self, keys: Iterable[str] | None) -> int:
        if keys is None:
            n = len(self.entries)
            self.entries.clear()
            return n
        return sum(self.entries.pop(k, None) is not None for k in keys)


def drop_below(entries: dict[int, ReplayEntry] | dict[int, JournalEntry], limit: int) -> None:
    """Drop the oldest entries that end at or below ``limit``."""
    while entries:
        first = next(iter(entries))
        if first + len(entries[first][1]) > limit:
            return
        del entries[first]
