"""Where a session is in its life: the :class:`State` enum and its history.

Why a history and not only the current value: a STALE spell can last a single
scheduler round (the supervisor moves on to RESUMING at once), and an
application that marks its market data stale must still see it.  Waiters
follow the list of transitions, so they are edge-triggered and miss nothing
(unless they fall more than :data:`HISTORY` transitions behind).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from typing import Final, final

import trio

__all__ = ["HISTORY", "State", "StateHistory"]

#: Transitions kept for waiters that have not caught up yet.
HISTORY: Final = 1024


class State(enum.Enum):
    """Where a session is in its life; observe with :meth:`Session.wait_state`."""

    #: Establishing the first connection.
    CONNECTING = "connecting"
    #: Connected and authenticated; data flows.
    LIVE = "live"
    #: The connection was lost; what you hold may be out of date.
    STALE = "stale"
    #: Reconnecting; LIVE again only after the replay has been delivered.
    RESUMING = "resuming"
    #: Ended for good (see :attr:`Session.error`).
    CLOSED = "closed"


@final
class StateHistory:
    """The current :class:`State`, the last :data:`HISTORY` transitions, and waiters.

    CLOSED is final: once entered, :meth:`enter` changes nothing.
    """

    def __init__(self) -> None:
        self.state = State.CONNECTING
        #: Outages: STALE entered other than after a failed reconnection attempt
        #: (RESUMING -> STALE continues the same spell).
        self.stale_spells = 0
        # A list and an event made on demand, not a deque and an event per
        # session: thousands of idle sessions each keep one (see _gc.py).
        self._entries: list[State] = []
        self._start = 0  # absolute index of _entries[0]
        self._changed: trio.Event | None = None

    def enter(self, state: State) -> bool:
        """Move to ``state``; False when nothing changed (same state, or CLOSED)."""
        if state is self.state or self.state is State.CLOSED:
            return False
        if state is State.STALE and self.state is not State.RESUMING:
            self.stale_spells += 1
        entries = self._entries
        if len(entries) == HISTORY:
            del entries[0]
            self._start += 1
        entries.append(state)
        self.state = state
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()
        return True

    def _next_change(self) -> trio.Event:
        """The event the next transition sets."""
        if self._changed is None:
            self._changed = trio.Event()
        return self._changed

    def _end(self) -> int:
        return self._start + len(self._entries)

    def _at(self, index: int) -> tuple[State, int]:
        """The entry at absolute ``index`` (or the oldest kept), and the next index."""
        index = max(index, self._start)
        return self._entries[index - self._start], index + 1

    async def transitions(self) -> AsyncIterator[State]:
        """Every state entered from now on, in order, ending with CLOSED."""
        index = self._end()
        while True:
            while index < self._end():
                state, index = self._at(index)
                yield state
                if state is State.CLOSED:
                    return
            if self.state is State.CLOSED:
                return
            await self._next_change().wait()

    async def wait(self, *states: State) -> State:
        """Return at once when in one of ``states`` (or CLOSED), else at the first
        transition into one of them (or into CLOSED)."""
        await trio.lowlevel.checkpoint()
        if self.state in states or self.state is State.CLOSED:
            return self.state
        index = self._end()
        while True:
            await self._next_change().wait()
            while index < self._end():
                state, index = self._at(index)
                if state in states or state is State.CLOSED:
                    return state
