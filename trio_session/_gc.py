"""The venue's garbage-collector policy (``serve(gc_freeze=True)``).

A venue holding thousands of idle sessions keeps hundreds of thousands of
long-lived objects (tasks, channels, keys, buffers).  CPython's full collection
looks at every one of them and pauses the whole process, every session
included, for as long as that takes (hundreds of milliseconds at a few thousand
sessions), and it runs whenever enough objects survived the younger collections,
which establishing sessions provides.

The policy: after sessions were opened (or resumed on new connections: a
reconnect storm allocates as much), the venue moves every object alive into
the collector's permanent generation (:func:`gc.freeze`, which costs no scan),
at most once per ``interval``.  Later collections only look at what was created
since, so they stay short however many sessions are up.

Frozen objects that become garbage are freed by reference counting as usual;
only *cyclic* garbage waits.  So that an ended session's cycles are not kept
forever, once the sessions that ended since the last full collection reach a
quarter of those alive (CPython's own rule for its oldest generation, counted in
sessions), the venue unfreezes, collects in full once (one pause, as long as
an ordinary full collection) and freezes again.  A stable population never
pays a full collection; a churning one pays about as often as without the
policy.  Leaving :func:`serve` unfreezes.

Process-wide on purpose: the collector is.  Hence opt-in.
"""

from __future__ import annotations

import gc
from types import ModuleType
from typing import Final, final

import trio

__all__ = ["CHURN", "FREEZE_INTERVAL", "GcFreezer"]

#: Sessions opened within this many seconds are frozen together.
FREEZE_INTERVAL: Final = 1.0
#: Ended sessions, as a share of the sessions alive, that trigger a full collection.
CHURN: Final = 0.25


@final
class GcFreezer:
    """Freezes the venue's established sessions; collects after churn (module docstring)."""

    __slots__ = (
        "_due",
        "_gc",
        "collections",
        "ended",
        "freezes",
        "interval",
        "live",
        "opened",
        "stepped",
    )

    def __init__(self, interval: float = FREEZE_INTERVAL, *, gc_module: ModuleType = gc) -> None:
        self.interval = interval
        self._gc = gc_module
        #: Sessions alive now.
        self.live = 0
        #: Sessions opened (or resumed) since the last freeze, and ended since the last
        #: full collection.
        self.opened = 0
        self.ended = 0
        #: How often the policy froze, and collected in full (for tests and stats).
        self.freezes = 0
        self.collections = 0
        self._due = trio.Event()
        #: Set after each policy step (replaced by a fresh event), for tests.
        self.stepped = trio.Event()

    def session_opened(self) -> None:
        self.live += 1
        self.opened += 1
        self._due.set()

    def connection_resumed(self) -> None:
        """A session resumed on a new connection, whose objects live as long."""
        self.opened += 1
        self._due.set()

    def session_ended(self) -> None:
        self.live = max(0, self.live - 1)
        self.ended += 1
        if self.ended > CHURN * max(self.live, 1):
            self._due.set()

    async def run(self) -> None:
        """Freeze (or collect, then freeze) at most once per ``interval``, when due;
        unfreeze on the way out."""
        try:
            while True:
                await self._due.wait()
                self._due = trio.Event()
                await trio.sleep(self.interval)  # sessions opening together: one freeze
                self.step()
                self.stepped.set()
                self.stepped = trio.Event()
        finally:
            self._gc.unfreeze()

    def step(self) -> None:
        """One policy decision: a full collection after churn, a freeze after opens."""
        gc_ = self._gc
        if self.ended > CHURN * max(self.live, 1):
            self.ended = 0
            self.collections += 1
            gc_.unfreeze()
            gc_.collect()
        elif not self.opened:
            return
        else:
            # Young cyclic garbage is not worth freezing: one cheap young collection.
            gc_.collect(1)
        self.opened = 0
        self.freezes += 1
        gc_.freeze()
