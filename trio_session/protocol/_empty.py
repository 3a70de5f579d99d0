"""The one empty deque that idle sessions share until they hold something.

An empty :class:`collections.deque` costs 624 bytes and most idle sessions never
put anything in several of theirs (replay buffer, held frames, lossy and pending
queues), so those start as this one shared instance and get a deque of their
own on their first item.  Sharing a mutable container between sessions would turn
a forgotten "own it first" into one session's messages appearing in another's
queue; this deque refuses every mutation instead, so such a bug is a loud
``TypeError`` at the first append, never a leak.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final, NoReturn

__all__ = ["EMPTY", "SharedEmptyDeque"]


class SharedEmptyDeque(deque[Any]):
    """An empty deque every mutating method of which raises ``TypeError``."""

    __slots__ = ()

    def _refuse(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(
            "the shared empty deque is read-only: give the queue its own deque before adding to it"
        )

    append = appendleft = extend = extendleft = insert = _refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = rotate = _refuse


#: The shared instance (reading, ``len()``, iteration and ``clear()`` are fine).
EMPTY: Final[deque[Any]] = SharedEmptyDeque()
