"""One attached connection: four tasks in one nursery, one typed error out.

While a connection is attached to a session, a :class:`Link` runs exactly:

* the **reader**: feeds each received frame to the sans-IO connection and puts
  message batches on the inbound queue.  Credit flow control guarantees that
  queue has room, so the reader never blocks on the application, and
  heartbeats, acks and rekeys keep flowing while the application is busy;
* the **writer**: the only task that builds frames, so sequence numbers and
  key epochs follow wire order.  Control frames (acks, heartbeats, rekeys,
  close) first, always; then queued notices; then as many queued messages as
  credit allows, coalesced into one frame;
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

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final, final

import trio
from trio.lowlevel import wait_task_rescheduled

from ._core import SessionCore
from ._durable_link import durable_writer
from ._errors import (
    Category,
    CloseCode,
    ConnectionLost,
    SessionClosed,
    SessionError,
    SlowConsumer,
    is_clean_close,
)
from ._flag import Flag
from ._lifecycle import State
from ._queues import OutNotice
from ._transport import Transport, observable_close
from .protocol import (
    CloseReceived,
    Connection,
    ConnectionState,
    HeartbeatAcked,
    MessagesReceived,
    Role,
)

__all__ = ["MIN_TIMER_STEP", "Link", "close_forcefully"]

#: Timer tasks never re-check more often than this when a deadline is already
#: due but waits on another task (e.g. the writer is blocked on a full socket).
MIN_TIMER_STEP: Final = 0.005


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
        #: Why the connection ended (the first error wins).
        self.error: SessionError | None = None
        #: Set once our CLOSE frame was written (or the connection is gone).
        self.close_sent = Flag()
        self._scope: trio.CancelScope | None = None
        #: The peer's data seq that ends the replay: LIVE once it was received.
        self._replay_until = replay_until
        #: Called once, on the first authenticated frame from the peer.
        self._on_confirmed = on_confirmed
        self._hb_sleep: trio.CancelScope | None = None
        self._rot_sleep: trio.CancelScope | None = None
        #: Venue: when the write in progress started, and when it must have
        #: finished (both None between writes; the heartbeat task enforces it).
        self._send_started: float | None = None
        self._send_deadline: float | None = None
        #: Frames sealed by the writer and not yet written (a cancelled writer
        #: leaves them for the CLOSE, whose control seq comes after theirs).
        self.owed: list[bytes] = []
        #: The connection was LIVE (caught up) at some point.
        self.reached_live = False
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

    async def run(self) -> SessionError:
        """Run the four tasks until the connection ends; returns why it ended (a
        SessionClosed for a clean close).  Raises only Cancelled from outside."""
        core = self._core
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                if core.finished.is_set():
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._guard, self._reader, name="reader")
                if core.persist is None:
                    nursery.start_soon(self._guard, self._writer, name="writer")
                else:  # a durable store: write-ahead (_durable_link.py)
                    nursery.start_soon(self._guard, partial(durable_writer, self), name="writer")
                nursery.start_soon(self._guard, self._heartbeat, name="heartbeat")
                nursery.start_soon(self._guard, self._rotation, name="key-rotation")
        finally:
            self._scope = None
            if core.link is self:
                core.link = None
            self._keep_stall()
            self._absorb_stats()
            await close_transport(self, self._core.config.close_timeout)
            # Release anyone waiting on this connection's progress.
            core.drained.set()
            self.close_sent.set()
            core.connection_done.set()
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
                self._mark_lost(f"{type(error).__name__}: {error}")
        self.cancel()

    def _mark_lost(self, reason: str) -> None:
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

    def _keep_stall(self) -> None:
        """A write blocked when the connection ended is a stall that goes on while
        the session is detached (the participant still consumes nothing)."""
        started, core = self._send_started, self._core
        if started is not None and (core.stalled_since is None or started < core.stalled_since):
            core.stalled_since = started

    def _absorb_stats(self) -> None:
        s, c = self.conn.stats, self._core.counters
        c.bytes_sent += s.bytes_sent
        c.bytes_received += s.bytes_received
        c.rekeys += s.rekeys
        c.ratchets += s.ratchets
        c.retransmitted += s.retransmitted
        c.heartbeats_sent += s.heartbeats_sent
        if s.last_rtt is not None:
            c.rtt = s.last_rtt

    async def _guard(self, task: Callable[[], Awaitable[None]]) -> None:
        """Turn a task's failure into the connection's one typed error."""
        try:
            await task()
        except SessionError as exc:
            self.end(exc)
        except Exception as exc:
            self._core.log.exception("internal error in the %s task", task.__name__)
            err = SessionError(
                f"internal error: {type(exc).__name__}", code=CloseCode.INTERNAL_ERROR
            )
            err.__cause__ = exc
            self.end(err)

    # -- reader ------------------------------------------------------------------------------

    async def _reader(self) -> None:
        transport, conn, core = self.transport, self.conn, self._core
        counters, out = core.counters, core.outbound
        while True:
            events = conn.receive_data(await transport.receive())
            core.sync_replay()  # acknowledgements trimmed the replay buffer
            self._note_authenticated()
            for ev in events:
                if type(ev) is MessagesReceived:
                    if not self._deliver(ev):
                        return  # session finished; messages after close are not delivered
                elif type(ev) is HeartbeatAcked:
                    counters.rtt = ev.rtt
                elif type(ev) is CloseReceived:
                    await self._on_peer_close(ev)
                    return
            if conn.has_pending_control() or (out.waits_for_credit and conn.send_window() > 0):
                out.wake()
            elif core.record is not None and not core.record.replay_messages:
                core.drained.set()
            self.retime_heartbeat()  # the frame moved last_rx (and maybe the ack deadline)

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

    async def _on_peer_close(self, ev: CloseReceived) -> None:
        err = ev.to_error()
        if self.error is None:
            self.error = err
            if not is_clean_close(err):
                self._mark_lost(f"{type(err).__name__}: {err}")
        self.conn.close(CloseCode.NORMAL if ev.code is CloseCode.NORMAL else ev.code)
        self._core.outbound.wake()
        with trio.move_on_after(self._core.config.close_timeout):
            await self.close_sent.wait()
        self.end(err)

    # -- writer ------------------------------------------------------------------------------

    async def _writer(self) -> None:
        conn, out = self.conn, self._core.outbound
        send: Callable[[bytes], Awaitable[None]] = self.transport.send
        if self._core.role is Role.VENUE:
            send = self._bounded_send
        while True:
            out.wake_pending = False
            self.pull_rotation_deadline()
            owed = self.owed = conn.data_to_send()
            if owed:  # a heartbeat or ack sealed: the timer's next deadline moved
                self.retime_heartbeat()
            while owed:
                await send(owed[0])
                del owed[0]
            if conn.state is not ConnectionState.OPEN:
                if conn.state in (ConnectionState.CLOSING, ConnectionState.ERROR) and (
                    not conn.has_pending_control()
                ):
                    self.close_sent.set()
                await out.park(wait_for_data=False)
                continue
            window = conn.send_window()
            data = self.next_data_frame(window)
            if data is not None:
                await send(data)
                continue
            if out.wake_pending:
                continue
            await out.park(wait_for_data=window > 0 and not out.latest and not out.lossy)

    def sender(self) -> Callable[[bytes], Awaitable[None]]:
        """How frames are written (the venue bounds each write)."""
        return self._bounded_send if self._core.role is Role.VENUE else self.transport.send

    def pull_rotation_deadline(self) -> None:
        """The key-rotation task wakes at the connection's deadline if that is sooner."""
        rot = self._rot_sleep
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
        every frame.
        """
        hb = self._hb_sleep
        if hb is not None:
            due = max(self._timer_due(), trio.current_time() + MIN_TIMER_STEP)
            if due != hb.deadline:
                hb.deadline = due

    def pull_heartbeat_deadline(self) -> None:
        """The heartbeat task wakes at the connection's deadline if that is sooner."""
        hb = self._hb_sleep
        if hb is not None:
            due = self.conn.heartbeat_deadline()
            if due < hb.deadline:
                hb.deadline = due

    def _timer_due(self) -> float:
        """When the heartbeat task next has something to do: the connection's
        heartbeat deadline; on the venue also the slow-consumer deadlines of
        queued data that cannot go out and of the write in progress."""
        due = self.conn.heartbeat_deadline()
        core = self._core
        if core.role is Role.VENUE:
            stalled = core.stalled_since
            if stalled is not None:
                due = min(due, stalled + core.config.slow_consumer_timeout)
            write = self._send_deadline
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
                core.stalled_since = trio.current_time()
                hb = self._hb_sleep
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
        self._send_started = started = trio.current_time()
        stalled = self._core.stalled_since
        # A stall carried over from before a resume leaves less time for this write.
        self._send_deadline = deadline = (
            started + limit if stalled is None else min(started, stalled) + limit
        )
        hb = self._hb_sleep
        if hb is not None and deadline < hb.deadline:
            hb.deadline = deadline
        try:
            await self.transport.send(frame)
        except SessionError:
            self._send_started = self._send_deadline = None  # failed, not blocked
            raise
        # Cancelled (the connection ended while this write was blocked, or the
        # heartbeat task ended it at the deadline): the start stays, and
        # _keep_stall carries it over to the detached session.
        self._send_started = self._send_deadline = None

    # -- timers ------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        conn, core = self.conn, self._core
        venue = core.role is Role.VENUE
        slow_limit = core.config.slow_consumer_timeout
        while True:
            now = trio.current_time()
            # An adjustable sleep: see _timer_due and the module docstring.
            with trio.move_on_at(max(self._timer_due(), now + MIN_TIMER_STEP)) as sleep:
                self._hb_sleep = sleep
                await wait_task_rescheduled(_abort_sleep)
            self._hb_sleep = None
            if conn.handle_heartbeat_timer() and core.states.state is State.LIVE:
                # Silent for stale_after: STALE now; the connection is kept (and
                # probed) until heartbeat_timeout, so a link that recovers is LIVE
                # again at its next frame, without a reconnect.
                core.set_state(State.STALE, f"no frame from the peer for {conn.stale_after}s")
            if conn.has_pending_control():
                core.outbound.wake()
            if not venue:
                continue
            now = trio.current_time()
            write = self._send_deadline
            if write is not None and now >= write:
                raise slow_consumer(core, f"participant did not read for {slow_limit}s")
            stalled = core.stalled_since
            if stalled is not None and now - stalled >= slow_limit:
                raise slow_consumer(
                    self._core,
                    f"participant consumed nothing for {slow_limit}s while messages waited",
                )

    async def _rotation(self) -> None:
        conn, log = self.conn, self._core.log
        rekeys = conn.stats.rekeys
        while True:
            now = trio.current_time()
            # Adjustable: once a due ratchet step rides on an outgoing frame, the
            # writer pulls this deadline in to the new epoch's schedule.
            with trio.move_on_at(max(conn.rotation_deadline(), now + MIN_TIMER_STEP)) as sleep:
                self._rot_sleep = sleep
                await wait_task_rescheduled(_abort_sleep)
            self._rot_sleep = None
            conn.handle_rotation_timer()
            if conn.stats.rekeys != rekeys:  # a DH rekey completed since the last look
                rekeys = conn.stats.rekeys
                log.event(
                    logging.DEBUG,
                    "rekey",
                    "keys rotated (%d rekeys, %d ratchet steps on this connection)",
                    rekeys,
                    conn.stats.ratchets,
                    rekeys=rekeys,
                    ratchets=conn.stats.ratchets,
                )
            if conn.has_pending_control():
                self._core.outbound.wake()


def _abort_sleep(_: object) -> trio.lowlevel.Abort:
    """A timer task's sleep ends only by its scope's deadline (``trio.sleep_forever``
    without its lambda and coroutine, kept alive per sleeping task)."""
    return trio.lowlevel.Abort.SUCCEEDED


async def close_transport(link: Link, close_timeout: float) -> None:
    """End ``link``'s transport after its tasks ended, telling the peer why when we
    detected the problem ourselves."""
    err, transport = link.error, link.transport
    # Cancelled from outside (err is None): the connection simply drops.  A
    # cancelled participant is indistinguishable from a lost one on purpose:
    # the venue keeps the session for resume, then its dead man's switch
    # fires.  A clean logout is aclose() (or leaving ``connect()`` normally).
    with trio.CancelScope(shield=True):
        # Tell the peer why, when we detected the problem and still hold keys
        # (not for a plain close: that one was exchanged already, or received).
        if (
            err is not None
            and not err.remote
            and not isinstance(err, ConnectionLost)
            and type(err) is not SessionClosed
            and not transport.closed
        ):
            await _send_close(link, err, close_timeout)
        if err is None:
            await close_forcefully(transport)  # cancelled: drop, do not linger
            return
        # The WebSocket close carries the code too (docs/protocol.md, "Observable
        # close codes"), for peers that cannot read our CLOSE.
        code, reason = observable_close(err.code)
        deadline = _close_deadline(link.core, err, close_timeout)
        with trio.move_on_at(deadline) as scope:
            if err.remote and not isinstance(err, (SessionClosed, ConnectionLost)):
                await transport.fail(code, reason)  # an invalid frame: do not linger
            else:
                await transport.aclose(code, reason)
        if scope.cancelled_caught:
            await close_forcefully(transport)


def _close_deadline(core: SessionCore, err: SessionError, close_timeout: float) -> float:
    """How long the close handshake may take: ``close_timeout``; but when the venue
    will keep the session for a resume, never past a stalled participant's
    slow-consumer deadline (until the connection is closed, the session is neither
    attached nor detached, and nobody checks it)."""
    deadline = trio.current_time() + close_timeout
    stalled = core.stalled_since
    if core.role is Role.VENUE and stalled is not None and err.category is Category.RESUMABLE:
        deadline = min(deadline, stalled + core.config.slow_consumer_timeout)
    return deadline


async def _send_close(link: Link, err: SessionError, close_timeout: float) -> None:
    try:
        persist = link.core.persist
        if persist is not None and persist.write_ahead_owed():  # the CLOSE is a frame too
            with trio.move_on_after(min(0.5, close_timeout)):
                await persist.store_ahead()
        link.conn.close(err.code, type(err).__name__)
        # Frames the writer had sealed but not written when it was cancelled go
        # first: the CLOSE's control seq follows theirs.
        frames = link.owed + link.conn.data_to_send()
        with trio.move_on_after(min(0.5, close_timeout)):
            for frame in frames:
                await link.transport.send(frame)
    except SessionError:
        pass


def slow_consumer(core: SessionCore, why: str) -> SlowConsumer:
    """The error that closes a venue session whose participant does not read (logged)."""
    core.log.event(
        logging.WARNING,
        "slow_consumer",
        "closing the session: %s (slow_consumer_timeout)",
        why,
        outbound_depth=core.outbound.depth,
    )
    return SlowConsumer(why)


async def close_forcefully(transport: Transport) -> None:
    """Like :func:`trio.aclose_forcefully`, for our Transport protocol."""
    with trio.CancelScope() as scope:
        scope.cancel()
        await transport.aclose()
