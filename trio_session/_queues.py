"""The session's two queues: what waits to be sent, and what waits to be read.

Both outlive connections: messages queued during an outage go out after the
resume, and messages received before a connection broke are still delivered.
Both count the payload bytes they hold (``bytes``), and report them to the
session's :class:`~trio_session._budget.ByteLedger` (the venue's budget).

:class:`Outbound` holds the three send policies and the notices (rejections)
in stream order, and is where the writer task waits for work.  Waking it is a
plain reschedule of a parked task (a :class:`trio.lowlevel.ParkingLot`): a
cancel scope would raise and catch a ``Cancelled`` per wake-up, which was the
venue's largest idle cost with thousands of sessions.

:class:`Inbound` is fed by the reader task and drained by ``receive()``.  Its
queue is unbounded on purpose: the credit window (``inbound_capacity``
messages, enforced by the peer's protocol state machine) bounds it, so the
reader can never block on the application and heartbeats, acks and rekeys keep
flowing while the application is busy.  It is a plain deque with a parking lot
rather than a memory channel, both created on first use: an idle session never
receives a batch, and a channel with its deque, ordered dicts and task sets
costs about 2.5 KB per session.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Coroutine, Hashable
from typing import Any, Final, final

import trio

from ._budget import ByteLedger
from ._errors import InDoubt, MessageRejected, RejectCode, SessionError
from .protocol import SessionRecord
from .protocol._empty import EMPTY
from .protocol._wire import NOTICE_REJECT, Notice, decode_notice, encode_body

__all__ = [
    "NO_LIMIT",
    "Inbound",
    "Notices",
    "OutNotice",
    "Outbound",
    "notice_error",
    "reject_notice",
]

#: ``Inbound.deliver_limit`` without a durable store: beyond any data seq.
NO_LIMIT: Final = 2**64

#: The shared, read-only empty deque (``protocol/_empty.py``): a queue gets its
#: own deque (:func:`_own`) before its first item.
_EMPTY: Final[deque[Any]] = EMPTY


def _own(q: deque[Any]) -> deque[Any]:
    """``q``, or a new deque if ``q`` is the shared empty one (before adding to it)."""
    return deque() if q is _EMPTY else q


class OutNotice(bytes):
    """An outbound notice (FLAG_SYSTEM) queued among lossless messages, so that a
    ``reject()`` never overtakes replies the application sent before it."""


class Notices(list[bytes]):
    """An inbound batch of session-layer notices (FLAG_SYSTEM), kept in stream order."""


@final
class _Reset:
    """Inbound marker: the logical session was replaced by ``record``; ``in_doubt``
    are the old session's messages sent and never acknowledged."""

    __slots__ = ("in_doubt", "record")

    def __init__(self, record: SessionRecord, in_doubt: tuple[InDoubt, ...]) -> None:
        self.record = record
        self.in_doubt = in_doubt


@final
class _Slot:
    """Where the writer (or a ``receive()``) parks: a :class:`trio.lowlevel.ParkingLot`
    made for one task.

    Parking awaits ``wait_task_rescheduled`` directly, with a bound abort method:
    no ordered dict, no closure and no coroutine of its own stay alive per parked
    writer, and a wake-up allocates nothing.  Should a second task park while one
    is parked (never the writer; two tasks in ``receive()``), it waits in a real
    parking lot, and :meth:`unpark` wakes everyone (parkers re-check their
    condition in a loop).
    """

    __slots__ = ("_extra", "_task")

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None
        self._extra: trio.lowlevel.ParkingLot | None = None

    def park(self) -> Coroutine[Any, Any, Any]:
        """Await the result: returns once :meth:`unpark` was called (cancellable)."""
        if self._task is not None:
            if self._extra is None:
                self._extra = trio.lowlevel.ParkingLot()
            return self._extra.park()
        self._task = trio.lowlevel.current_task()
        # The caller awaits it (``await slot.park()``): one frame less per parked writer.
        return trio.lowlevel.wait_task_rescheduled(self._abort)  # noqa: ASYNC105

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED

    def unpark(self) -> None:
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)
        if self._extra:
            self._extra.unpark_all()


@final
class Outbound:
    """Messages waiting to be sent, by policy, and the writer's wake-up.

    * ``block`` (lossless): a channel of ``capacity`` items (a message or a
      ``send_many`` list); senders wait while it is full, or while ``max_bytes``
      payload bytes are queued.  The writer stages items into ``pending``, where
      notices keep their place in the stream.
    * ``conflate``: the latest message per key, FIFO by last update.
    * ``drop_oldest``: a deque of at most ``capacity`` messages, which also drops
      its oldest while the queue holds ``max_bytes``.

    The writer takes lossless messages first, then conflated, then lossy ones.
    """

    def __init__(
        self,
        capacity: int,
        max_batch_bytes: int,
        max_bytes: float = math.inf,
        ledger: ByteLedger | None = None,
    ) -> None:
        self.capacity = capacity
        self.max_batch_bytes = max_batch_bytes
        self.max_bytes = max_bytes
        #: Payload bytes queued (all policies, notices included).
        self.bytes = 0
        self.ledger = ledger if ledger is not None else ByteLedger()
        #: Senders waiting for ``bytes`` to drop below ``max_bytes``.
        self._room = trio.lowlevel.ParkingLot()
        self._closed = False
        self._send, self._recv = trio.open_memory_channel[bytes | list[bytes]](capacity)
        self.pending: deque[bytes] = _EMPTY  # its own deque from the first item (_own)
        self.latest: OrderedDict[Hashable, bytes] = OrderedDict()
        self.lossy: deque[bytes] = _EMPTY  # its own deque from the first message
        #: Messages in the channel (not yet staged into ``pending``).
        self.queued = 0
        #: Messages discarded by the ``drop_oldest`` / ``conflate`` policies.
        self.dropped = 0
        self.conflated = 0
        #: Lossless messages taken so far (a durable store numbers them in this order).
        self.lossless_taken = 0
        # The writer's wake-up.
        self._lot = _Slot()
        self._parked = False
        #: Set by every wake-up; the writer clears it when it looks for work.
        self.wake_pending = False
        #: The parked writer waits for credit (or a control frame), not for data.
        self.waits_for_credit = False
        #: A sender holds the single-writer token and writes its own frame
        #: (``_inline.py``): the parked writer is not woken until :meth:`release`.
        self.token = False
        #: The parked writer gathers a backlog: wake it once this many messages wait
        #: (0: at once).
        self.gather = 0

    # -- producers (the application) ---------------------------------------------

    def put_nowait(self, item: bytes | list[bytes], count: int, nbytes: int) -> bool:
        """Queue a lossless item of ``nbytes`` payload bytes if there is room
        (False when full).

        Raises ``trio.BrokenResourceError`` once the session has finished.
        """
        if self.bytes >= self.max_bytes:
            if self._closed:
                raise trio.BrokenResourceError("the session finished")
            return False
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            return False
        except trio.ClosedResourceError:
            raise trio.BrokenResourceError("the session finished") from None
        self.queued += count
        self.bytes += nbytes
        self.ledger.add(nbytes)
        # wake_for_data(), inline on the hot path; a writer gathering a backlog
        # (``_inline.coalesce``) sleeps on until it is big enough.
        if self._parked and not self.token and self.queued + len(self.pending) >= self.gather:
            self.wake()
        return True

    async def put(self, item: bytes | list[bytes], count: int, nbytes: int) -> None:
        """Queue a lossless item, waiting while the queue is full (in items or bytes)."""
        while self.bytes >= self.max_bytes:
            if self._closed:
                raise trio.BrokenResourceError("the session finished")
            await self._room.park()
        try:
            await self._send.send(item)
        except trio.ClosedResourceError:
            raise trio.BrokenResourceError("the session finished") from None
        self.queued += count
        self.bytes += nbytes
        self.ledger.add(nbytes)
        self.wake_for_data()

    def put_latest(self, key: Hashable, payload: bytes) -> None:
        latest = self.latest
        old = latest.get(key)
        if old is not None:
            latest.move_to_end(key)  # FIFO by last update
            self.conflated += 1
            self._added(-len(old))
        latest[key] = payload
        self._added(len(payload))
        self.wake_for_data()

    def put_lossy(self, payload: bytes) -> None:
        lossy = self.lossy = _own(self.lossy)
        n = len(payload)
        while lossy and (len(lossy) >= self.capacity or self.bytes + n > self.max_bytes):
            self._added(-len(lossy.popleft()))
            self.dropped += 1
        lossy.append(payload)
        self._added(n)
        self.wake_for_data()

    def put_notice(self, notice: Notice) -> None:
        """Queue a notice behind everything sent before it (even senders still
        blocked on the full channel were staged first: their call came earlier)."""
        self._stage_all()
        body = OutNotice(encode_body(notice))
        self.pending = _own(self.pending)
        self.pending.append(body)
        self._added(len(body))
        self.wake()

    def close(self) -> None:
        """The session finished: senders blocked on a full queue wake with an error
        (what is queued stays, until :meth:`clear`)."""
        self._send.close()
        self._closed = True
        self._room.unpark_all()

    def clear(self) -> None:
        """Drop everything queued (the session ended and will never send it)."""
        self._stage_all()
        self.queued = 0
        self.pending.clear()
        self.latest.clear()
        self.lossy.clear()
        self._added(-self.bytes)

    def _added(self, n: int) -> None:
        """``n`` payload bytes more (negative: fewer) are queued."""
        self.bytes += n
        self.ledger.add(n)
        if n < 0 and self._room and self.bytes < self.max_bytes:
            self._room.unpark_all()

    # -- the consumer (the writer task) ------------------------------------------

    @property
    def depth(self) -> int:
        return self.queued + len(self.pending) + len(self.latest) + len(self.lossy)

    def has_data(self) -> bool:
        return bool(
            self.pending or self.latest or self.lossy or self._recv.statistics().current_buffer_used
        )

    def take_notices(self, window: int) -> list[bytes]:
        """Notices at the head of the stream (up to ``window``); they travel in their
        own frame, in queue order."""
        pending = self.pending
        notices: list[bytes] = []
        size = 0
        while pending and type(pending[0]) is OutNotice and len(notices) < window:
            notice = bytes(pending.popleft())
            notices.append(notice)
            size += len(notice)
        self._added(-size)
        return notices

    def take(self, window: int, budget: int) -> list[bytes]:
        """Up to ``window`` messages within the batch and byte budgets: lossless
        ones first (stopping at a notice), then conflated, then lossy ones."""
        cap = min(self.max_batch_bytes, budget)
        msgs: list[bytes] = []
        size = 0
        pending = self.pending
        recv = self._recv
        full = False
        while len(msgs) < window:
            if not pending:
                try:
                    self._stage(recv.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
                pending = self.pending  # its own deque now, if it was the shared empty one
                continue
            m = pending[0]
            if type(m) is OutNotice:
                break  # notices travel in their own frame, in queue order
            lm = len(m)
            if size + lm > cap and (msgs or lm > budget):
                full = True
                break
            msgs.append(pending.popleft())
            size += lm
        self.lossless_taken += len(msgs)
        if not full:
            size = self._take_unordered(msgs, window, cap, budget, size)
        if size:
            self._added(-size)
        return msgs

    def _take_unordered(
        self, msgs: list[bytes], window: int, cap: int, budget: int, size: int
    ) -> int:
        """Add conflated, then lossy messages to ``msgs``; returns the batch's size."""
        latest, lossy = self.latest, self.lossy
        while (latest or lossy) and len(msgs) < window:
            m = next(iter(latest.values())) if latest else lossy[0]
            lm = len(m)
            if size + lm > cap and (msgs or lm > budget):
                break
            if latest:
                latest.popitem(last=False)
            else:
                lossy.popleft()
            msgs.append(m)
            size += lm
        return size

    def _stage(self, item: bytes | list[bytes]) -> None:
        """Move one channel item into ``pending``."""
        pending = self.pending = _own(self.pending)
        if isinstance(item, bytes):
            pending.append(item)
            self.queued -= 1
        else:
            pending.extend(item)
            self.queued -= len(item)

    def requeue(self, items: list[bytes]) -> None:
        """Queue ``items`` (restored from a store) ahead of anything sent from now on."""
        self.pending = _own(self.pending)
        self.pending.extend(items)

    def _stage_all(self) -> None:
        while True:
            try:
                self._stage(self._recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return

    # -- waking the writer ----------------------------------------------------------

    def wake(self) -> None:
        """The writer has something to do (data, a control frame, credit)."""
        self.wake_pending = True
        if self._parked and not self.token:
            self._parked = False
            self._lot.unpark()

    def writer_idle(self) -> bool:
        """The writer is parked, nothing woke it, and no sender holds the token."""
        return self._parked and not self.wake_pending and not self.token and not self.gather

    def release(self) -> None:
        """A sender gives the token back: the writer runs if anything was owed
        meanwhile (a wake-up, or messages queued by other senders)."""
        self.token = False
        if self.wake_pending or self.depth:
            self.wake()

    def wake_for_data(self) -> None:
        # A running writer takes new data before it parks (no checkpoint between
        # its last look at the queues and parking): only a parked one needs waking
        # (and a sender holding the token wakes it on release).
        if self._parked and not self.token:
            self.wake()

    async def park(self, *, wait_for_data: bool) -> None:
        """The writer sleeps until :meth:`wake` (returns at once if one is pending).

        ``wait_for_data=False`` records that only credit (or a control frame)
        can let the writer make progress, so the reader wakes it when credit
        arrives.
        """
        if self.wake_pending:
            await trio.lowlevel.checkpoint()
            return
        self.waits_for_credit = not wait_for_data
        self._parked = True
        try:
            await self._lot.park()
        finally:
            self._parked = False
            self.waits_for_credit = False


@final
class Inbound:
    """Received messages and notices, in stream order, until the application reads them.

    The reader puts whole batches on the queue; ``receive()`` gets them
    (:meth:`get`, :meth:`get_nowait`) and moves them into ``buf`` with
    :meth:`take`.  A reset marker (:meth:`put_reset`) sits between the last
    message of a replaced logical session and the first of the new one, and
    switches which session consumption credits.
    """

    def __init__(self, ledger: ByteLedger | None = None) -> None:
        #: Batches not yet in ``buf``, each with its payload bytes (created on the
        #: first batch: an idle session receives none).
        self._items: deque[tuple[Any, int]] | None = None
        #: Where :meth:`get` waits (usually one task: the application's ``receive()``).
        self._lot = _Slot()
        self._closed = False
        #: Payload bytes of the batches not yet in ``buf`` (what ``buf`` holds is not
        #: counted: at most one batch, being read).
        self.bytes = 0
        self.ledger = ledger if ledger is not None else ByteLedger()
        #: Payloads (bytes) and decoded notices (a Notice, or the error a bad one made).
        self.buf: deque[Any] = _EMPTY  # its own deque from the first batch
        #: Data seq of the next message handed to the application.
        self.rx_seq = 0
        #: Durable store: messages from this seq on wait until the store recorded
        #: that they may be delivered (:data:`NO_LIMIT` without a durable store).
        self.deliver_limit = NO_LIMIT
        #: Messages below this seq may have reached the application before a
        #: restart (they are flagged as redeliveries).
        self.redeliver_before = 0
        self.reset_pending = False
        #: For the SessionReset: the old session's in-doubt messages, and the seq
        #: of the last message delivered from it.
        self.reset_info: tuple[tuple[InDoubt, ...], int] = ((), -1)
        #: The in-doubt messages of the last reset queued (for its log record).
        self.pending_reset_in_doubt: tuple[InDoubt, ...] = ()
        #: Messages not yet in ``buf``.
        self.queued = 0
        #: The logical session that consuming the next messages credits.
        self.consume_target: SessionRecord | None = None

    @property
    def depth(self) -> int:
        return len(self.buf) + self.queued

    # -- the reader ---------------------------------------------------------------

    def put(self, payloads: list[bytes], system: bool, nbytes: int = 0) -> bool:
        """Queue a received batch of ``nbytes`` payload bytes; False once the
        session finished (not delivered)."""
        if self._closed:
            return False
        self._append(Notices(payloads) if system else payloads, nbytes)
        self.queued += len(payloads)
        self.bytes += nbytes
        self.ledger.add(nbytes)
        return True

    def put_reset(self, record: SessionRecord, in_doubt: tuple[InDoubt, ...]) -> None:
        """Everything queued so far belongs to the old session; ``record`` follows."""
        if self._closed:
            raise trio.ClosedResourceError("the session finished")
        self.pending_reset_in_doubt = in_doubt
        self._append(_Reset(record, in_doubt), 0)

    def _append(self, item: Any, nbytes: int) -> None:
        items = self._items
        if items is None:
            items = self._items = deque()
        items.append((item, nbytes))
        self._lot.unpark()

    def close(self) -> None:
        """No more batches: waiting readers get ``EndOfChannel`` once the rest is read."""
        self._closed = True
        self._lot.unpark()

    def clear(self) -> None:
        """Drop everything not yet read (the session was shed for memory)."""
        self.close()
        for item, _ in self._items or ():
            if type(item) is _Reset:
                self.consume_target = item.record
        self._items = None
        self.buf.clear()
        self.queued = 0
        self.ledger.add(-self.bytes)
        self.bytes = 0

    def get_nowait(self) -> Any:
        """The next batch (or reset marker), without waiting.

        Raises ``trio.WouldBlock`` when none is queued, ``trio.EndOfChannel``
        once the session finished and everything was read.
        """
        items = self._items
        if not items:
            if self._closed:
                raise trio.EndOfChannel
            raise trio.WouldBlock
        item, nbytes = items.popleft()
        if nbytes:
            self.bytes -= nbytes
            self.ledger.add(-nbytes)
        return item

    async def get(self) -> Any:
        """The next batch, waiting for one; one checkpoint, as a memory channel's
        ``receive()`` (``trio.EndOfChannel`` once finished and read)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            item = self.get_nowait()
        except trio.WouldBlock:
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return item
        lot = self._lot
        while True:
            await lot.park()
            try:
                return self.get_nowait()
            except trio.WouldBlock:
                continue  # another reader took it

    # -- the application -------------------------------------------------------------

    def take(self, item: Any) -> int:
        """Move one batch (from :meth:`get`) into ``buf``; returns how many messages to credit."""
        if type(item) is _Reset:
            # From here on: the new session's messages, numbered and credited there.
            self.reset_pending = True
            self.reset_info = (item.in_doubt, self.rx_seq - 1)
            self.rx_seq = 0
            self.consume_target = item.record
            self.redeliver_before = 0
            if self.deliver_limit != NO_LIMIT:
                self.deliver_limit = 0  # the new session's bound is recorded on first use
            return 0
        n = len(item)
        self.queued -= n
        buf = self.buf = _own(self.buf)
        if type(item) is Notices:
            buf.extend(_decode_notice_safely(p) for p in item)
        else:
            buf.extend(item)
        return n


def reject_notice(seq: int, reason: str, code: RejectCode, retry_after: float | None) -> Notice:
    """The notice that tells the peer its message ``seq`` was not accepted."""
    retry_ms = None if retry_after is None else max(0, min(int(retry_after * 1000), 2**32 - 1))
    return Notice(NOTICE_REJECT, seq, int(code), reason[:200], retry_ms)


def _decode_notice_safely(payload: bytes) -> Notice | Exception:
    try:
        return decode_notice(payload)
    except SessionError as exc:
        return exc


def notice_error(item: Any) -> SessionError:
    """What ``receive()`` raises for a notice in the stream."""
    if isinstance(item, SessionError):
        return item
    n: Notice = item
    retry = None if n.retry_after_ms is None else n.retry_after_ms / 1000
    try:
        name = RejectCode(n.code).name
    except ValueError:
        name = str(n.code)
    text = f"peer rejected our message {n.ref_seq}: {name}" + (f" ({n.reason})" if n.reason else "")
    return MessageRejected(
        text, ref_seq=n.ref_seq, reason_code=n.code, reason=n.reason, retry_after=retry
    )
