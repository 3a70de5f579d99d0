"""``MemoryStore``: sessions in this process's memory (the default).

By default (``durable=False``) the runtime does not write to it at all:
sessions live in the venue's and participant's own objects, acknowledgements
follow receipt, and nothing costs anything; a restart loses every session, as
a process without a store must.

``MemoryStore(durable=True)`` behaves like a durable store (the runtime writes
ahead and acknowledges only committed messages), for tests: a venue runner
started again on the same object resumes its sessions, and :meth:`MemoryStore.copy`
is what a crash would have left behind.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import trio

from .._errors import StoreError
from ..protocol import Role
from ._base import SessionStore
from ._image import Image
from ._types import SessionWrite, StoreContents

__all__ = ["MemoryStore"]


class MemoryStore(SessionStore):
    """Sessions in memory (see the module docstring).

    Args:
        durable: make the runtime treat this store as durable (for tests of
            restarts within one process).
    """

    def __init__(self, *, durable: bool = False) -> None:
        super().__init__()
        self.durable = durable
        self._image = Image()

    def __repr__(self) -> str:
        return f"<MemoryStore durable={self.durable} sessions={len(self._image.entries)}>"

    @property
    def location(self) -> str:
        return "memory"

    def copy(self) -> MemoryStore:
        """A new store holding what this one holds now: what a crash would leave."""
        other = MemoryStore(durable=self.durable)
        other._image = self._image.copy()
        return other

    async def _open(self) -> None:
        await trio.lowlevel.checkpoint()

    async def _close(self) -> None:
        await trio.lowlevel.checkpoint()

    def _check_open(self) -> None:
        if not self.is_open:
            raise StoreError("the memory store is not open", path=self.location)

    async def load(self, role: Role) -> StoreContents:
        self._check_open()
        await trio.lowlevel.checkpoint()
        return StoreContents(self._image.sessions(role), self._image.alive_at)

    async def write(self, writes: Sequence[SessionWrite], *, alive_at: float | None = None) -> None:
        self._check_open()
        start = time.perf_counter()
        for w in writes:
            self._image.apply(w)
        if alive_at is not None:
            self._image.alive_at = alive_at
        nbytes = sum(len(m) for w in writes for _, msgs, _ in w.frames for m in msgs)
        self._count(writes, nbytes, time.perf_counter() - start)

    async def purge(self, keys: Sequence[str] | None = None) -> int:
        self._check_open()
        await trio.lowlevel.checkpoint()
        return self._image.purge(keys)
