"""Byte budgets: what a session's queues hold, and the venue's budget for all of them.

Credit bounds what a peer may send in *messages*; messages can be large, so the
memory a session pins is bounded in *bytes* too, at three places:

* per session, inbound: the credit granted never lets the peer park more than
  ``inbound_max_bytes`` (``protocol._channel.credit_window``);
* per session, outbound: ``send`` waits while ``outbound_max_bytes`` are
  queued, and the replay buffer stops at ``replay_max_bytes``;
* venue-wide: every venue session's queues report to one :class:`ByteLedger`;
  when the total passes :data:`PAYLOAD_SHARE` of ``max_buffered_bytes``,
  :class:`MemoryGuard` ends the sessions holding the most (``MEMORY_BUDGET``)
  and drops their buffers, so the venue's memory comes back instead of growing.
  Detached sessions count like attached ones: their queued data is memory all
  the same.  The rest of the budget is headroom for what the ledger cannot see:
  frames being received and decoded, the WebSocket layer's buffers, allocator
  overhead (measured: about 5 % of the payload with 256 KiB messages).

The ledger is updated in place by the queues (an integer add per item), so the
check costs nothing until the budget is reached; the shedding itself runs in
its own task, never inside a ``send`` or the reader of the session that tipped
the balance.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Final, Protocol, final

import trio

from ._errors import MemoryBudgetExceeded

__all__ = ["PAYLOAD_SHARE", "ByteLedger", "MemoryGuard", "Sheddable"]

logger = logging.getLogger("trio_session.server")

#: The share of ``max_buffered_bytes`` that queued payload may take; the rest is
#: headroom for buffers the ledger does not count.
PAYLOAD_SHARE: Final = 7 / 8


@final
class ByteLedger:
    """Payload bytes buffered by a set of sessions, against ``limit``.

    ``over`` is called (synchronously, from whoever added the bytes) whenever an
    addition leaves the total above the limit; it must only schedule work.
    """

    __slots__ = ("_over", "limit", "total")

    def __init__(self, limit: float = math.inf, over: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.total = 0
        self._over = over

    def add(self, n: int) -> None:
        """Account ``n`` more bytes (negative: fewer)."""
        total = self.total = self.total + n
        if n > 0 and total > self.limit and self._over is not None:
            self._over()


class Sheddable(Protocol):
    """What :class:`MemoryGuard` needs of a session."""

    @property
    def finished(self) -> bool: ...

    def buffered_bytes(self) -> int: ...

    def shed(self, error: MemoryBudgetExceeded) -> None: ...


@final
class MemoryGuard:
    """Keeps a venue's buffers within ``budget`` (``max_buffered_bytes``) by shedding
    sessions.

    :meth:`run` waits until the ledger reports being over its limit (the payload
    share of the budget), then ends the session holding the most bytes, and the
    next, until the total is back under it.
    """

    def __init__(self, budget: int, sessions: Callable[[], Iterable[Sheddable]]) -> None:
        self.budget = budget
        self.ledger = ByteLedger(int(budget * PAYLOAD_SHARE), self._wake)
        self._sessions = sessions
        self._due = trio.Event()
        #: Sessions shed so far.
        self.shed_count = 0

    def _wake(self) -> None:
        self._due.set()

    async def run(self) -> None:
        while True:
            await self._due.wait()
            self._due = trio.Event()
            self.shed_over_budget()

    def shed_over_budget(self) -> None:
        """End the largest sessions until the total is within the limit."""
        ledger = self.ledger
        while ledger.total > ledger.limit:
            live = [s for s in self._sessions() if not s.finished]
            victim = max(live, key=lambda s: s.buffered_bytes(), default=None)
            if victim is None or victim.buffered_bytes() <= 0:
                return  # nothing left to shed: the total is memory in flight
            held = victim.buffered_bytes()
            logger.warning(
                "venue buffers hold %d bytes (max_buffered_bytes %d): ending the session "
                "holding the most (%d bytes)",
                ledger.total,
                self.budget,
                held,
            )
            victim.shed(
                MemoryBudgetExceeded(
                    f"the venue's buffers reached max_buffered_bytes ({self.budget} bytes) "
                    f"and this session held the most ({held} bytes)"
                )
            )
            self.shed_count += 1
