"""What a :class:`~trio_session.Session` adds with a durable store: commits,
redelivery flags, and the facts a restarted application needs.

A mixin of :class:`~trio_session.Session`, kept apart so the facade stays small;
without a durable store these cost nothing (``commit()`` only checkpoints, the
flags are False).
"""

from __future__ import annotations

import trio

from ._core import SessionCore
from ._durable_link import commit_pending
from ._persist import SessionPersistence
from ._queues import Inbound, Outbound

__all__ = ["DurableFacade"]


class DurableFacade:
    """The durable-store part of the public session facade (see the module docstring)."""

    _core: SessionCore
    _in: Inbound
    _out: Outbound
    _last_seq: int
    _send_count: int

    async def _enqueue_durable(
        self, item: bytes | list[bytes], count: int, nbytes: int, commit: bool
    ) -> None:
        """``send()`` with a durable store: returns once the item is stored
        (``commit``: with what the application received so far)."""
        persist = self._core.persist
        assert persist is not None
        if commit:
            persist.commit(self._in.rx_seq, self._in.consume_target)
        await persist.enqueue(item, count, nbytes)

    def _commit_now(self, persist: SessionPersistence) -> None:
        inbound = self._in
        if persist.commit(inbound.rx_seq, inbound.consume_target):
            # Stored with the next write, or by the writer when enough is owed
            # or the delayed ack comes due (20 ms): a commit alone is not worth one.
            if persist.commits_due():
                self._out.wake()
            else:
                link = self._core.link
                if link is not None:
                    commit_pending(link)

    async def commit(self) -> None:
        """Commit every message :meth:`receive` returned so far, and wait until the
        store recorded it.

        With a durable store, the peer keeps (and after a crash retransmits)
        every message until it is committed; :meth:`receive` commits the
        previous ones by itself unless :attr:`auto_commit` is False.  Without a
        durable store it only checkpoints (messages are acknowledged on receipt).
        """
        persist = self._core.persist
        if persist is None:
            await trio.lowlevel.checkpoint()
            return
        inbound = self._in
        persist.commit(inbound.rx_seq, inbound.consume_target)
        await persist.runtime.sync()
        self._out.wake()

    @property
    def last_redelivered(self) -> bool:
        """Whether the last message :meth:`receive` returned may have been handed
        to the application before: it was received again after a restart from a
        store, and the application had not committed it.  Always False without
        a durable store."""
        return 0 <= self._last_seq < self._in.redeliver_before

    @property
    def send_count(self) -> int:
        """How many messages :meth:`send` / :meth:`send_many` have accepted on this
        session (a ``send`` cancelled while it waited for room is not counted).

        With a durable store it counts across restarts: after a crash, a send
        that was in progress made it into the session exactly when this count
        includes it, so an application that numbers its messages in send order
        knows where to continue."""
        persist = self._core.persist
        return self._send_count if persist is None else persist.next_j

    @property
    def restored(self) -> bool:
        """True when this session was loaded from a store after a restart (its
        handler runs again; see docs/howto/durable.md)."""
        return self._core.restored
