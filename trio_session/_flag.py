"""A :class:`trio.Event` that costs nothing until someone waits on it.

A session keeps several events (finished, drained, the connection done, our
CLOSE sent) that most sessions never wait on while they are idle.  A
``trio.Event`` carries a set of waiting tasks from the start (about 250 bytes
with the event); with thousands of sessions in one venue that is memory and
collector work for nothing.  :class:`Flag` is a boolean until the first
:meth:`wait`, which creates the event it then delegates to.
"""

from __future__ import annotations

from typing import final

import trio

__all__ = ["Flag"]


@final
class Flag:
    """``is_set()``, ``set()`` and ``wait()`` of :class:`trio.Event`, allocated on first wait."""

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: trio.Event | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        """Set the flag and wake every waiter (idempotent)."""
        if not self._set:
            self._set = True
            if self._event is not None:
                self._event.set()

    async def wait(self) -> None:
        """Return once the flag is set (a checkpoint either way, like ``Event.wait``)."""
        if self._set:
            await trio.lowlevel.checkpoint()
            return
        if self._event is None:
            self._event = trio.Event()
        await self._event.wait()

    def __repr__(self) -> str:
        return f"<Flag set={self._set}>"
