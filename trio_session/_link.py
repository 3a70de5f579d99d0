"""One attached connection: four tasks in one nursery, one typed error out.

While a connection is attached to a session, a :class:`Link` runs exactly:

* the **reader**: feeds each received frame to the sans-IO connection and puts
  message batches on the inbound queue.  Credit flow control guarantees that
  queue has room, so the reader never blocks on the application, and
  heartbeats, acks and rekeys keep flowing while the application is busy;
* the **writer** (``_link_writer.py``): holds the single-writer token while it
  runs, so sequence numbers and key epochs follow wire order.  Control frames
  (acks, heartbeats, rekeys, close) first, always; then queued notices; then as
  many queued messages as credit allows, coalesced into one frame.  While it is
  parked with nothing queued, a ``send()`` may take the token and write its
  own frame (``_inline.py``);
* the **heartbeat** task: sleeps until the session's next timer deadline
  (heartbeat, probe, stale and heartbeat timeouts, delayed ack; on the venue
  also the slow-consumer deadlines).  One adjustable sleep: whoever changes an
  input of the deadline moves it (the reader after each frame, the writer when
  a write starts or data waits), so an idle session's timer fires only when
  something is due, and no write needs a cancel scope of its own;
* the **key-rotation** task: sleeps until the next ratchet/rekey deadline.

Any task failure or connection break cancels the nursery; :meth:`Link.run`
returns the first typed error (never an exception group) after closing the
transport, telling the peer why when we detected the problem.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from functools import partial
from typing import final

import trio

from ._clock import run_clock
from ._core import SessionCore
from ._durable_link import durable_writer
from ._errors import (
    CloseCode,
    ConnectionLost,
    SessionError,
    is_clean_close,
)
from ._flag import Flag
from ._lifecycle import State
from ._link_close import answer_close, close_forcefully, guard, task_failed, tear_down
from ._link_timers import MIN_TIMER_STEP, heartbeat_task, rotation_task
from ._link_writer import plain_writer
from ._queues import OutNotice
from ._transport import Transport
from .protocol import (
    CloseReceived,
    Connection,
    HeartbeatAcked,
    MessagesReceived,
    Role,
)

__all__ = ["MIN_TIMER_STEP", "Link", "close_forcefully"]


@final
class Link:
    """The tasks of one connection attached to a session (see the module docstring)."""

    def __init__(
        self,
        core: SessionCore,
        transport: Transport,
        conn: Connection,
        *,
        replay_until: int = 0,
        on_confirmed: Callable[[], None] | None = None,
    ) -> None:
        self._core = core
        self.transport = transport
        self.conn = conn
        #: The run's clock (``_clock.py``): read on every frame.
        self.now = run_clock()
        #: Why the connection ended (the first error wins).
        self.error: SessionError | None = None
        #: Set once our CLOSE frame was written (or the connection is gone).
        self.close_sent = Flag()
        self._scope: trio.CancelScope | None = None
        #: The peer's data seq that ends the replay: LIVE once it was received.
        self._replay_until = replay_until
        #: Called once, on the first authenticated frame from the peer.
        self._on_confirmed = on_confirmed
        self.hb_sleep: trio.CancelScope | None = None
        self.rot_sleep: trio.CancelScope | None = None
        #: Venue: when the write in progress started, and when it must have
        #: finished (both None between writes; the heartbeat task enforces it).
        self._send_started: float | None = None
        self.send_deadline: float | None = None
        #: Frames sealed by the writer and not yet written (a cancelled writer
        #: leaves them for the CLOSE, whose control seq comes after theirs).
        self.owed: list[bytes] = []
        #: The connection was LIVE (caught up) at some point.
        self.reached_live = False
        #: A frame sealed by a sender on the fast path whose write was cancelled
        #: before it started: the writer writes it first (``_inline.py``).
        self.unwritten: bytes | None = None
        #: When the last data frame was written, and whether a frame came in since:
        #: what tells a request/response or sparse sender from a stream (``_inline.py``).
        self.last_write = -math.inf
        self.heard = True
        record = conn.session
        #: Where the session stood at attach: (peer_ack, next_rx_seq, messages owed).
        self._start = (
            (record.peer_ack, record.next_rx_seq, record.replay_messages)
            if record is not None
            else (0, 0, 0)
        )

    @property
    def core(self) -> SessionCore:
        return self._core

    @property
    def send_started(self) -> float | None:
        """Venue: when the write in progress started (None between writes)."""
        return self._send_started

    async def run(self) -> SessionError:
        """Run the four tasks until the connection ends; returns why it ended (a
        SessionClosed for a clean close).  Raises only Cancelled from outside."""
        core = self._core
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                if core.finished.is_set():
                    nursery.cancel_scope.cancel()
                # Each task turns its own failure into the connection's one typed
                # error (task_failed); the durable writer through guard().
                nursery.start_soon(self._reader, name="reader")
                if core.persist is None:
                    nursery.start_soon(plain_writer, self, name="writer")
                else:  # write-ahead (_durable_link.py)
                    nursery.start_soon(guard, self, partial(durable_writer, self), name="writer")
                nursery.start_soon(heartbeat_task, self, name="heartbeat")
                nursery.start_soon(rotation_task, self, name="key-rotation")
        finally:
            self._scope = None
            await tear_down(self)
        if self.error is not None:
            return self.error
        return core.error if core.error is not None else ConnectionLost("connection ended")

    def end(self, error: SessionError) -> None:
        """End the connection with ``error`` (ignored if it already has one).

        The session turns STALE here, at detection, not after the close
        handshake that follows (bounded by ``close_timeout``): the application
        must know at once, and ``send(fail_fast=True)`` fails from now on.
        """
        if self.error is None:
            self.error = error
            if not is_clean_close(error):
                self._core.log.debug("connection ended: %s: %s", type(error).__name__, error)
                self.mark_lost(f"{type(error).__name__}: {error}")
        self.cancel()

    def mark_lost(self, reason: str) -> None:
        """This connection is known lost: STALE now, unless the session is ending anyway."""
        core = self._core
        if (
            core.link is self
            and not core.closing
            and not core.finished.is_set()
            and core.states.state in (State.LIVE, State.RESUMING)
        ):
            core.set_state(State.STALE, reason)

    def cancel(self) -> None:
        if self._scope is not None:
            self._scope.cancel()

    async def close(self, code: CloseCode, reason: str) -> None:
        """Queue our CLOSE and wait until the writer sent it (aclose())."""
        self.conn.close(code, reason)
        self._core.outbound.wake()
        await self.close_sent.wait()

    def made_progress(self) -> bool:
        """LIVE, and moved what was owed: the peer acknowledged messages of ours, or
        we received new ones, or nothing was owed (see ``_policy.py``)."""
        record = self.conn.session
        peer_ack, rx, owed = self._start
        return (
            self.reached_live
            and record is not None
            and (owed == 0 or record.peer_ack > peer_ack or record.next_rx_seq > rx)
        )

    # -- lifecycle helpers ----------------------------------------------------------------

    def _caught_up(self) -> bool:
        """The peer confirmed this connection and its replay has been received."""
        conn = self.conn
        s = conn.session
        return conn.authenticated and s is not None and s.next_rx_seq >= self._replay_until

    # -- reader ------------------------------------------------------------------------------

    async def _reader(self) -> None:
        try:
            transport, conn, core = self.transport, self.conn, self._core
            counters, out = core.counters, core.outbound
            while True:
                events = conn.receive_data(await transport.receive())
                self.heard = True
                core.sync_replay()  # acknowledgements trimmed the replay buffer
                self._note_authenticated()
                for ev in events:
                    if type(ev) is MessagesReceived:
                        if not self._deliver(ev):
                            return  # session finished; messages after close are not delivered
                    elif type(ev) is HeartbeatAcked:
                        counters.rtt = ev.rtt
                    elif type(ev) is CloseReceived:
                        await answer_close(self, ev)
                        return
                if conn.has_pending_control() or (out.waits_for_credit and conn.send_window() > 0):
                    out.wake()
                elif core.record is not None and not core.record.replay_messages:
                    core.drained.set()
                self.retime_heartbeat()  # the frame moved last_rx (and maybe the ack deadline)
        except Exception as exc:  # Cancelled passes: teardown is the nursery's
            task_failed(self, exc, "_reader")

    def _note_authenticated(self) -> None:
        if self._on_confirmed is not None and self.conn.authenticated:
            confirmed, self._on_confirmed = self._on_confirmed, None
            confirmed()
        if self._core.states.state is not State.LIVE and self._caught_up():
            self._live()

    def _deliver(self, ev: MessagesReceived) -> bool:
        core = self._core
        if not core.inbound.put(ev.payloads, ev.system, ev.nbytes):
            return False
        core.counters.received += len(ev.payloads)
        if core.states.state is not State.LIVE and self._caught_up():
            self._live()
        return True

    def _live(self) -> None:
        core = self._core
        if core.link is self and not core.finished.is_set() and self.error is None:
            self.reached_live = True
            core.set_state(State.LIVE)

    # -- writer ------------------------------------------------------------------------------

    async def timed_write(self, send: Callable[[bytes], Awaitable[None]], frame: bytes) -> None:
        """Write the data frame ``frame``, noting when (``_inline.py``)."""
        self.heard = False
        await send(frame)
        self.last_write = self.now()

    def sender(self) -> Callable[[bytes], Awaitable[None]]:
        """How frames are written (the venue bounds each write)."""
        return self._bounded_send if self._core.role is Role.VENUE else self.transport.send

    def pull_rotation_deadline(self) -> None:
        """The key-rotation task wakes at the connection's deadline if that is sooner."""
        rot = self.rot_sleep
        if rot is not None:
            due = self.conn.rotation_deadline()
            if due < rot.deadline:
                rot.deadline = due

    def retime_heartbeat(self) -> None:
        """Move the heartbeat task's one deadline, earlier or later, to where a frame
        just received or sealed put it.

        The writer calls it after sealing control frames: without it, a task that
        woke for a due heartbeat would wake again ``MIN_TIMER_STEP`` later (a cancel
        scope and a ``Cancelled`` each) whenever the ack takes longer than that,
        i.e. exactly when the process is busy.  Clamped as the task clamps its own
        sleep: a deadline that is due but waits on the writer must not wake it at
        every frame.  Sooner always moves it; later only by more than MIN_TIMER_STEP,
        so a busy link resets the scope's deadline (a heap update in Trio, dearer than
        the rest of a round trip's checks) every few milliseconds, not every frame;
        the task then wakes at most that much early, finds nothing due and sleeps again.
        """
        hb = self.hb_sleep
        if hb is not None:
            due = max(self.timer_due(), self.now() + MIN_TIMER_STEP)
            deadline = hb.deadline
            if due < deadline or due > deadline + MIN_TIMER_STEP:
                hb.deadline = due

    def pull_heartbeat_deadline(self) -> None:
        """The heartbeat task wakes at the connection's deadline if that is sooner."""
        hb = self.hb_sleep
        if hb is not None:
            due = self.conn.heartbeat_deadline()
            if due < hb.deadline:
                hb.deadline = due

    def timer_due(self) -> float:
        """When the heartbeat task next has something to do: the connection's
        heartbeat deadline; on the venue also the slow-consumer deadlines of
        queued data that cannot go out and of the write in progress."""
        due = self.conn.heartbeat_deadline()
        core = self._core
        if core.role is Role.VENUE:
            stalled = core.stalled_since
            if stalled is not None:
                due = min(due, stalled + core.config.slow_consumer_timeout)
            write = self.send_deadline
            if write is not None and write < due:
                due = write
        return due

    def next_data_frame(self, window: int) -> bytes | None:
        """The next notice or message frame the window allows, or None (idle or stalled)."""
        conn, core = self.conn, self._core
        out = core.outbound
        if window > 0:
            pending = out.pending
            if pending and type(pending[0]) is OutNotice:
                frame = conn.send_data(out.take_notices(window), system=True)
                core.sync_replay()
                return frame
            batch = out.take(window, conn.send_bytes_budget())
            if batch:
                core.stalled_since = None
                core.counters.sent += len(batch)  # in the replay buffer from here: sent
                frame = conn.send_data(batch)
                core.sync_replay()
                return frame
        if out.has_data():
            if core.stalled_since is None:
                core.stalled_since = self.now()
                hb = self.hb_sleep
                if hb is not None and core.role is Role.VENUE:
                    due = core.stalled_since + core.config.slow_consumer_timeout
                    hb.deadline = min(hb.deadline, due)
        else:
            core.stalled_since = None
            if core.record is not None and not core.record.replay_messages:
                core.drained.set()
        return None

    async def _bounded_send(self, frame: bytes) -> None:
        # Venue: a participant that stops reading its socket fills TCP buffers and
        # blocks us here rather than in credit, so every write is bounded: by the
        # heartbeat task's deadline (one sleep per session, not a scope per write).
        limit = self._core.config.slow_consumer_timeout
        self._send_started = started = self.now()
        stalled = self._core.stalled_since
        # A stall carried over from before a resume leaves less time for this write.
        self.send_deadline = deadline = (
            started + limit if stalled is None else min(started, stalled) + limit
        )
        hb = self.hb_sleep
        if hb is not None and deadline < hb.deadline:
            hb.deadline = deadline
        try:
            await self.transport.send(frame)
        except SessionError:
            self._send_started = self.send_deadline = None  # failed, not blocked
            raise
        # Cancelled (the connection ended while this write was blocked, or the
        # heartbeat task ended it at the deadline): the start stays, and
        # _keep_stall carries it over to the detached session.
        self._send_started = self.send_deadline = None
