"""The runner's interface to a session: everything a supervisor or venue may do.

A session is driven from outside by a *runner*: the participant's supervisor
(``_client.py``) or the venue (``_server.py``).  The runner owns the
decisions (reconnect or not, resume or start afresh, expire, take over); the
session owns its queues, state and tasks.  The two meet only here:
:func:`open_session` returns a :class:`SessionControl` whose methods are the
whole contract, so neither side reaches into the other.

The life of a session as the runner sees it::

    control = open_session(role, config, messages, key_id)
    control.bind(record)                 # after the first handshake
    err = await control.attach(transport, conn)   # until the connection ends
    control.detach(State.STALE)          # connection lost, session kept
    ...                                  # a new handshake (resume or not)
    control.detach(State.RESUMING)       # reconnecting
    err = await control.attach(...)      # resumed on a new connection
    control.finish(err)                  # ended for good (CLOSED)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, final

import attrs
import trio

from ._budget import ByteLedger
from ._config import SessionConfig
from ._core import SessionCore, in_doubt_of
from ._errors import Category, ConnectionLost, InDoubt, SessionError
from ._flag import Flag
from ._lifecycle import State
from ._link import Link
from ._persist import SessionPersistence, StoreRuntime
from ._session import Session, new_session
from ._transport import Transport
from .protocol import Connection, Role, SessionRecord
from .store import StoredSession

__all__ = ["LinkOutcome", "SessionControl", "open_session"]


@attrs.frozen
class LinkOutcome:
    """What the last attached connection achieved (for the restart policy)."""

    #: It was LIVE (caught up with the peer's replay) at some point.
    live: bool = False
    #: It was LIVE and moved what was owed: see ``Link.made_progress``.
    progress: bool = False


def open_session(
    role: Role,
    config: SessionConfig,
    messages: Any | None,
    key_id: str,
    *,
    ledger: ByteLedger | None = None,
) -> SessionControl:
    """Create a session (state CONNECTING) and the runner's handle on it; its
    buffered bytes count in ``ledger`` (the venue's budget) if given."""
    core = SessionCore(role, config, messages, key_id, ledger)
    return SessionControl(core, new_session(core))


@final
class SessionControl:
    """The runner's handle on one session (see the module docstring).

    One connection at a time: :meth:`attach` runs it to its end.  The venue
    holds :attr:`attach_lock` across an attach and what follows it, so that a
    connection taking the session over attaches only once the previous one's
    aftermath (STALE or finished) has been decided.
    """

    def __init__(self, core: SessionCore, session: Session) -> None:
        self._core = core
        #: The application's side of this session.
        self.session = session
        self.attach_lock = trio.Lock()
        self._link: Link | None = None
        #: What the last connection achieved (set when :meth:`attach` returns).
        self.last_outcome = LinkOutcome()

    # -- facts ------------------------------------------------------------------------

    @property
    def record(self) -> SessionRecord | None:
        """The logical-session record (None before the first handshake)."""
        return self._core.record

    @property
    def resumable_record(self) -> SessionRecord | None:
        """The record to offer for resume, or None to start a new session."""
        record = self._core.record
        return None if record is None or record.compromised else record

    @property
    def finished(self) -> bool:
        """The session ended for good (CLOSED)."""
        return self._core.finished.is_set()

    @property
    def closing(self) -> bool:
        """The application is closing the session: do not reconnect."""
        return self._core.closing

    @property
    def ending(self) -> bool:
        """The session is over or on its way out: finished, closing, or its
        connection ending with a code that ends the session (it must not be resumed)."""
        core = self._core
        if core.closing or core.finished.is_set():
            return True
        link = self._link
        err = link.error if link is not None else None
        return err is not None and err.category is not Category.RESUMABLE

    @property
    def error(self) -> SessionError | None:
        """Why the session ended, a clean close included (None while it runs)."""
        return self._core.error

    @property
    def stalled_since(self) -> float | None:
        """Venue: since when queued messages wait on a participant that consumes
        nothing (None when they do not); it goes on while the session is detached."""
        return self._core.stalled_since

    def buffered_bytes(self) -> int:
        """Payload bytes the session holds in its queues and replay buffer."""
        return self._core.buffered_bytes()

    @property
    def pending_reset_in_doubt(self) -> tuple[InDoubt, ...]:
        """After :meth:`reset_to`: the old session's messages in doubt."""
        return self._core.inbound.pending_reset_in_doubt

    async def wait_finished(self) -> None:
        await self._core.finished.wait()

    def when_finished(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the session finished (at once if it has)."""
        if self._core.finished.is_set():
            callback()
        else:
            self._core.on_finished = callback

    def log_event(self, level: int, event: str, msg: str, *args: object, **fields: Any) -> None:
        """Log a lifecycle event of this session (see ``_log.py``)."""
        self._core.log.event(level, event, msg, *args, **fields)

    # -- the logical session ----------------------------------------------------------

    def bind(self, record: SessionRecord) -> None:
        """The first handshake established ``record``: the session runs on it."""
        self._core.bind(record)

    def reset_to(self, record: SessionRecord) -> None:
        """A resume was refused and ``record`` is a new logical session.

        Messages of the old session still queued are delivered first (and
        credited to the old session); then ``receive()`` raises
        :class:`~trio_session.SessionReset` once, and messages of the new one follow.
        """
        core = self._core
        old_target = core.inbound.consume_target
        in_doubt = in_doubt_of(core.record, core.codec) if core.record is not None else ()
        core.bind(record)
        core.inbound.consume_target = old_target
        core.inbound.put_reset(record, in_doubt)

    @property
    def restored_unused(self) -> bool:
        """The session was restored from a store and never carried a message
        either way (e.g. the process died right after storing a new session):
        if the venue does not know it, a new one replaces it silently, as there
        is nothing to reconcile."""
        record = self._core.record
        return (
            self._core.restored
            and record is not None
            and record.next_tx_seq == 0
            and max(record.next_rx_seq, record.rx_dedup) == 0
        )

    @property
    def persist(self) -> SessionPersistence | None:
        """The session's write-ahead state with a durable store (else None)."""
        return self._core.persist

    def use_store(self, runtime: StoreRuntime, *, key: str | None, peer: str) -> SessionPersistence:
        """Keep this session in a durable store (before its first :meth:`bind`)."""
        persist = SessionPersistence(runtime, self._core, key=key, peer=peer)
        self._core.persist = persist
        return persist

    def restore(self, stored: StoredSession) -> None:
        """Continue a session loaded from the store (after :meth:`use_store`).

        Raises ValueError for an entry that does not validate.
        """
        core = self._core
        assert core.persist is not None
        core.bind(core.persist.restore(stored))
        core.restored = True

    def discard_resume(self) -> None:
        """The logical session is gone: the next handshake starts a new one."""
        if self._core.record is not None:
            self._core.record.compromised = True

    # -- connections ------------------------------------------------------------------

    async def attach(
        self,
        transport: Transport,
        conn: Connection,
        *,
        replay_until: int = 0,
        resumed: bool = False,
        on_confirmed: Callable[[], None] | None = None,
    ) -> SessionError:
        """Run the session on ``conn`` (handshake complete) until the connection ends.

        Returns why it ended (a SessionClosed for a clean close); raises only
        Cancelled from an enclosing scope.  The venue is LIVE at once (it
        verified ClientFinish); a participant is LIVE once the venue confirmed
        the handshake (its first authenticated frame, which also calls
        ``on_confirmed``) and the peer's replay up to ``replay_until`` arrived.
        """
        core = self._core
        assert conn.session is not None
        link = Link(core, transport, conn, replay_until=replay_until, on_confirmed=on_confirmed)
        self._link = core.link = link
        core.connection_done = Flag()
        core.counters.connections += 1
        core.resumed = resumed
        if resumed:
            core.counters.resumes += 1
        if core.role is Role.VENUE:
            link.reached_live = True
            core.set_state(State.LIVE)
        elif core.states.state is not State.CONNECTING:
            core.set_state(State.RESUMING)
        core.log.debug("connection up (%s)", transport.remote_address)
        try:
            return await link.run()
        finally:
            self._link = None
            self.last_outcome = LinkOutcome(link.reached_live, link.made_progress())

    def detach(self, state: State, reason: str = "") -> None:
        """No connection now: STALE (lost, ``reason`` says why) or RESUMING
        (reconnecting).  Ignored once the session finished."""
        assert state in (State.STALE, State.RESUMING), state
        if not self._core.finished.is_set():
            self._core.set_state(state, reason)

    def preempt(self) -> None:
        """Drop the attached connection: a resume on a new one is taking over."""
        if self._link is not None:
            self._link.end(ConnectionLost("replaced by a resumed connection"))

    def finish(self, error: SessionError) -> None:
        """End the session for good with ``error`` (the first one wins)."""
        self._core.finish(error)

    def shed(self, error: SessionError) -> None:
        """End the session for good and free its buffers at once: the connection
        (if any) tells the peer ``error``'s code, queued messages both ways and the
        replay buffer are dropped."""
        if self._link is not None:
            self._link.end(error)
        self._core.finish(error)
        self._core.drop_buffers(inbound=True)

    def drop_unsent(self) -> None:
        """The session ended and will never send again: free its queued and
        unacknowledged outbound messages (received ones stay for the application)."""
        self._core.drop_buffers(inbound=False)

    @contextmanager
    def supervising(self) -> Iterator[trio.CancelScope]:
        """A cancel scope for the runner's loop that :meth:`finish` cancels, so a
        closed session stops reconnecting (or sleeping before it)."""
        with trio.CancelScope() as scope:
            self._core.runner_scope = scope
            try:
                yield scope
            finally:
                self._core.runner_scope = None
