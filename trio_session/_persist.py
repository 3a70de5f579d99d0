"""The runtime side of a durable store: group commit, and each session's write-ahead.

A :class:`StoreRuntime` serves every session on one store object in this
process.  Sessions mark themselves dirty; whoever needs durability calls
:meth:`StoreRuntime.sync`.  The first caller leads: it lets the tasks that run
in the same scheduling rounds add their changes (two checkpoints), collects
every dirty session's :class:`~trio_session.store.SessionWrite` and writes them
in one batch (one transaction); the others wait for that batch.  So a send
and the frame that carries it, or a hundred venue sessions writing in the
same instant, cost one commit.

A :class:`SessionPersistence` is one session's bridge to it.  It decides what
must be stored before what (docs/howto/durable.md):

* a lossless message is stored before ``send()`` returns: its journal entry,
  or the frame that carries it, whichever the batch holds;
* every DATA frame, a new logical session and a new resume secret generation
  are stored before the writer puts any frame on the wire;
* the peer's messages are acknowledged (``SessionRecord.rx_stable``) only once
  the application committed them and the store recorded that;
* before the application sees a message, the store holds a bound above it, so
  that after a restart every message it may already have seen is flagged as a
  redelivery.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final, final

import trio

from ._durable_link import stable_advanced
from ._errors import StoreError
from ._queues import NO_LIMIT
from .protocol import SessionRecord
from .store import (
    JournalEntry,
    ReplayEntry,
    SessionStatus,
    SessionStore,
    SessionWrite,
    StoredSession,
    StoredState,
)

if TYPE_CHECKING:
    from ._core import SessionCore

__all__ = ["SessionPersistence", "StoreRuntime", "store_runtime"]

#: Acknowledged frames are deleted from the store once this many messages are due.
TRIM_CHUNK: Final = 256
#: At most this many checkpoints a group-commit leader waits for the other
#: tasks' changes (while a dirty session's writer was woken and has not run).
GATHER_ROUNDS: Final = 3


@final
class StoreRuntime:
    """Group commit over one store (see the module docstring)."""

    def __init__(self, store: SessionStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        #: Wall-clock seconds for detach times and stamps (a test passes Trio's clock).
        self.clock = clock
        self._dirty: list[SessionPersistence] = []
        #: The batch collecting changes now, and the last one durable.
        self._gen = 1
        self._durable = 0
        #: A leader gathers changes; a writer may take over a sender's batch.
        self._leading = False
        self._stealable = False
        self._writing = False
        self._progress = trio.Event()
        self._alive_at: float | None = None
        #: Set when a write failed: nothing durable can be promised any more.
        self.error: StoreError | None = None
        self.failed = trio.Event()
        #: Users in this process, and the store keys (or roles) they hold.
        self.users = 0
        self._claims: set[str] = set()

    def claim(self, name: str, what: str) -> None:
        """Reserve ``name`` for one user of this store in this process."""
        if name in self._claims:
            raise StoreError(
                f"store {self.store.location} is already used by {what} in this process",
                path=self.store.location,
            )
        self._claims.add(name)

    def release(self, name: str) -> None:
        self._claims.discard(name)

    def mark(self, persistence: SessionPersistence) -> None:
        """``persistence`` has changes for the next batch."""
        if not persistence.queued:
            persistence.queued = True
            self._dirty.append(persistence)

    def stamp(self, now: float) -> None:
        """Record that the venue is alive now (with the next batch)."""
        self._alive_at = now

    @property
    def pending(self) -> bool:
        return bool(self._dirty) or self._alive_at is not None

    async def sync(self, *, writer: bool = False) -> None:
        """Return once every change marked before the call is durable.

        ``writer=True``: the caller holds frames that wait for this batch.  If a
        ``send()`` leads the batch and is still gathering, the writer writes it
        at once and goes on to the wire without another scheduling round.

        Raises the store's :class:`~trio_session.StoreError` if a write failed.
        """
        target = self._gen
        while self._durable < target:
            if self.error is not None:
                raise self.error
            if not self._leading:
                await self._lead(writer)
            elif writer and self._stealable and not self._writing:
                self._stealable = False
                await self._write_batch()
            else:
                await self._progress.wait()
        if self.error is not None:
            raise self.error

    async def _lead(self, writer: bool) -> None:
        # A batch, once collected, is written whatever happens to the task that
        # leads it (its followers depend on it): the gathering checkpoints are
        # shielded and a store's write never raises Cancelled (its contract).
        self._leading = True
        gen = self._gen
        try:
            self._stealable = not writer
            try:
                await trio.lowlevel.cancel_shielded_checkpoint()  # the tasks of this round
                for _ in range(GATHER_ROUNDS - 1):
                    # A woken writer will seal frames that this batch should carry.
                    if self._gen != gen or not any(
                        p.core.outbound.wake_pending for p in self._dirty
                    ):
                        break
                    await trio.lowlevel.cancel_shielded_checkpoint()
            finally:
                self._stealable = False
            while self._writing:
                await self._progress.wait()
            if self._gen == gen:  # not taken over by a writer meanwhile
                await self._write_batch()
        finally:
            self._leading = False
            self._signal()

    def _signal(self) -> None:
        done, self._progress = self._progress, trio.Event()
        done.set()

    async def _write_batch(self) -> None:
        self._writing = True
        try:
            await self._write_batch_now()
        finally:
            self._writing = False
            self._signal()

    async def _write_batch_now(self) -> None:
        gen = self._gen
        self._gen += 1
        dirty, self._dirty = self._dirty, []
        alive_at, self._alive_at = self._alive_at, None
        now = self.clock()
        writes = []
        for p in dirty:
            p.queued = False
            w = p.collect(now)
            if w is not None:
                writes.append((p, w))
        if writes or alive_at is not None:
            try:
                await self.store.write([w for _, w in writes], alive_at=alive_at)
            except StoreError as exc:
                self.error = exc
                self.failed.set()
                raise
        for p, w in writes:
            p.applied(w)
        self._durable = gen


@final
class SessionPersistence:
    """One durable session's write-ahead state (see the module docstring).

    Args:
        runtime: the store's group commit.
        core: the session.
        key: the store key (participant: known up front; venue: set at bind).
        peer: what :attr:`StoredState.peer` records.
    """

    def __init__(
        self, runtime: StoreRuntime, core: SessionCore, *, key: str | None, peer: str
    ) -> None:
        self.runtime = runtime
        self.core = core
        self.key = key
        self.peer = peer
        self.record: SessionRecord | None = None
        #: In the runtime's dirty list.
        self.queued = False
        #: What the store holds: the session at all, frames below this tx seq,
        #: this resume generation, this trim.
        self._stored = False
        self._stored_tx = 0
        self._stored_gen = -1
        self._trimmed = 0
        self._replace = False
        self._deleted = False
        #: Journal entries not yet handed to the store, and the numbering.
        self._journal: list[JournalEntry] = []
        self.next_j = 0
        self._j_base = 0  # journal number of the first message the outbound queue took
        #: The application's commit position, and what the store holds of it.
        self.committed = 0
        self.stable = 0
        #: Commits owed that make the writer store them at once (else the delayed ack).
        self.commit_batch = max(1, core.config.inbound_capacity // 8)
        #: Redelivery bound: what the store holds, and what the next write records.
        self.bound = 0
        self._bound_target = 0
        #: How far ahead of the application the bound is recorded: it starts
        #: small (few false redelivery flags after a crash) and doubles each time
        #: the application had to wait for it, up to a quarter of the credit.
        self._max_step = max(1, core.config.inbound_capacity // 4)
        self.bound_step = min(16, self._max_step)
        self.status = SessionStatus.ATTACHED
        self.detached_at: float | None = None
        self._send_lock = trio.Lock()

    def __repr__(self) -> str:
        return f"<SessionPersistence {self.key} stored={self._stored} tx={self._stored_tx}>"

    # -- binding -----------------------------------------------------------------------

    def bind(self, record: SessionRecord) -> None:
        """The session runs on ``record`` (new, or replacing another under the same key)."""
        replacing = self.record is not None
        self.record = record
        if self.key is None:
            self.key = record.session_id.hex()
        record.rx_stable = 0
        self.committed = self.stable = 0
        self._bound_target = self.bound = 0
        self._stored_tx, self._stored_gen, self._trimmed = 0, -1, 0
        self._replace = replacing
        self.runtime.mark(self)
        inbound = self.core.inbound
        if inbound.deliver_limit == NO_LIMIT:
            inbound.deliver_limit = 0

    def restore(self, stored: StoredSession) -> SessionRecord:
        """Continue ``stored``: record, positions, and the unsent journal queued again.

        Raises ValueError for an entry that does not validate.
        """
        record = stored.record()
        state = stored.state
        unsent = stored.unsent()
        self.record = record
        self.key = stored.key
        self._stored = True
        self._stored_tx = record.next_tx_seq
        self._stored_gen = record.resume_gen
        self._trimmed = record.peer_ack
        record.rx_stable = self.committed = self.stable = state.rx_committed
        self.bound = self._bound_target = max(state.redeliver_before, state.rx_committed)
        self.status, self.detached_at = state.status, state.detached_at
        self._j_base = state.journal_done
        self.next_j = state.journal_done + len(unsent)
        core = self.core
        core.outbound.requeue(unsent)
        inbound = core.inbound
        inbound.rx_seq = state.rx_committed
        inbound.redeliver_before = self.bound
        inbound.deliver_limit = self.bound
        return record

    # -- changes -----------------------------------------------------------------------

    def journal(self, item: bytes | list[bytes], count: int) -> None:
        """``send()`` queued ``item`` (``count`` messages): it gets the next numbers."""
        j = self.next_j
        self.next_j = j + count
        self._journal.append((j, [item] if isinstance(item, bytes) else item))
        self.runtime.mark(self)

    def commit(self, position: int, target: SessionRecord | None) -> bool:
        """The application committed the peer's messages below ``position`` (of the
        session ``target``).  Returns True when that is news for the store."""
        if target is not self.record or position <= self.committed:
            return False
        self.committed = position
        self.runtime.mark(self)
        return True

    def set_status(self, status: SessionStatus, detached_at: float | None = None) -> None:
        self.status = status
        self.detached_at = detached_at
        self.runtime.mark(self)

    def delete(self) -> None:
        """The session is over: remove it from the store with the next batch."""
        self._deleted = True
        self.runtime.mark(self)

    def commits_owed(self) -> bool:
        """The application committed messages the store does not hold yet."""
        return self.committed > self.stable

    def commits_due(self) -> bool:
        """Enough commits are owed to store them without waiting for the delayed ack."""
        return self.committed - self.stable >= self.commit_batch

    def write_ahead_owed(self) -> bool:
        """Whether something must be stored before the next frame goes out: a new
        session, new DATA frames, or a new resume secret generation."""
        record = self.record
        return record is not None and (
            not self._stored
            or self._replace
            or record.next_tx_seq != self._stored_tx
            or record.resume_gen != self._stored_gen
        )

    # -- waiting -----------------------------------------------------------------------

    async def store_ahead(self) -> None:
        """The writer holds frames that need what :meth:`write_ahead_owed` found:
        have it stored (in the batch being gathered, or a new one) first."""
        self.runtime.mark(self)
        await self.runtime.sync(writer=True)

    async def enqueue(self, item: bytes | list[bytes], count: int, nbytes: int) -> None:
        """Queue a lossless item and return once it is stored (``send()``).

        Journal numbers must follow queue order: a sender that has to wait for
        room does so holding a lock, and numbers its item only once it is queued.
        """
        out = self.core.outbound
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._send_lock.locked() and out.put_nowait(item, count, nbytes):
            self.journal(item, count)
        else:
            async with self._send_lock:
                if not out.put_nowait(item, count, nbytes):
                    await out.put(item, count, nbytes)
                self.journal(item, count)
        await self.runtime.sync()

    async def wait_deliverable(self, seq: int) -> None:
        """Return once the store's redelivery bound is above ``seq`` (or the
        session moved on to another record)."""
        inbound = self.core.inbound
        while seq >= inbound.deliver_limit and inbound.consume_target is self.record:
            self.bound_hit()
            self._bound_target = max(self._bound_target, seq + self.bound_step)
            self.runtime.mark(self)
            await self.runtime.sync()

    def settle_bound(self) -> None:
        """An orderly stop: nothing more will be handed to the application, so the
        bound can be exact (no false redelivery flags after the restart)."""
        inbound = self.core.inbound
        if inbound.consume_target is self.record:
            self._bound_target = max(self.committed, inbound.rx_seq)
            self.bound_step = 0
            self.runtime.mark(self)

    def bound_hit(self) -> None:
        """The application reached the recorded bound: record it further ahead."""
        self.bound_step = min(self._max_step, max(1, self.bound_step * 2))
        self.runtime.mark(self)

    # -- the batch ---------------------------------------------------------------------

    def collect(self, now: float) -> SessionWrite | None:
        """This session's changes for the batch being written."""
        record, key = self.record, self.key
        if record is None or key is None:
            return None
        if self._deleted:
            return SessionWrite(key, None) if self._stored else None
        frames: list[ReplayEntry] = []
        for entry in reversed(record.replay):
            if entry[0] < self._stored_tx:
                break
            frames.append(entry)
        frames.reverse()
        journal, self._journal = self._journal, []
        done = self._j_base + self.core.outbound.lossless_taken
        if journal and journal[-1][0] + len(journal[-1][1]) <= done:
            journal = []  # all sealed into frames already: the frames carry them
        inbound = self.core.inbound
        if inbound.consume_target is record and self.bound_step:
            # Anything the application may be handed before the next write.
            self._bound_target = max(self._bound_target, inbound.rx_seq + self.bound_step)
        state = StoredState.of(
            record,
            peer=self.peer,
            status=self.status,
            detached_at=self.detached_at,
            updated_at=now,
            rx_committed=self.committed,
            journal_done=done,
            redeliver_before=self._bound_target,
        )
        # Trims are lazy (a stale frame is only retransmitted, and dropped by
        # seq): delete acknowledged frames in chunks, not with every write.
        trim = record.peer_ack if record.peer_ack >= self._trimmed + TRIM_CHUNK else 0
        return SessionWrite(key, state, frames, trim, journal, self._replace)

    def applied(self, write: SessionWrite) -> None:
        """``write`` is durable: move the stored positions, release acks and deliveries."""
        state = write.state
        if state is None:
            self._stored = False
            return
        self._stored = True
        self._replace = False
        self._stored_tx = state.next_tx_seq
        self._stored_gen = state.resume_gen
        if write.trim_below:
            self._trimmed = write.trim_below
        record = self.record
        if record is None or record.session_id != state.session_id:
            return
        inbound = self.core.inbound
        if inbound.consume_target is record and state.redeliver_before > inbound.deliver_limit:
            inbound.deliver_limit = state.redeliver_before
        self.bound = state.redeliver_before
        if state.rx_committed > self.stable:
            self.stable = state.rx_committed
            link = self.core.link
            if link is not None and link.conn.session is record:
                stable_advanced(link, self.stable)
            else:
                record.rx_stable = self.stable


_RUNTIMES: weakref.WeakKeyDictionary[SessionStore, StoreRuntime] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def store_runtime(
    store: SessionStore, clock: Callable[[], float] = time.time
) -> AsyncIterator[StoreRuntime]:
    """Open ``store`` and share one :class:`StoreRuntime` per store object among its
    users in this process; on leaving, write what is pending and close it."""
    await store.open()
    try:
        runtime = _RUNTIMES.get(store)
        if runtime is None:
            runtime = _RUNTIMES[store] = StoreRuntime(store, clock)
        runtime.users += 1
        try:
            yield runtime
        finally:
            runtime.users -= 1
            if runtime.users == 0:
                _RUNTIMES.pop(store, None)
            if runtime.pending and runtime.error is None:
                with trio.CancelScope(shield=True):
                    await runtime.sync()
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()
