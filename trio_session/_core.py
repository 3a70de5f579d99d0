"""What one logical session keeps across its connections.

A :class:`SessionCore` is shared by three parties, each with its own job:

* the public :class:`~trio_session.Session` facade (``_session.py``), which the
  application calls;
* the :class:`~trio_session._link.Link` of the connection attached right now
  (``_link.py``), whose four tasks move messages between the queues and the
  socket;
* the runner's :class:`~trio_session._control.SessionControl`
  (``_control.py``): the participant's supervisor or the venue, which attaches
  connections, detaches them and ends the session.

Its own methods are the few rules they share: entering a state, binding a
logical-session record, crediting consumed messages, accounting the bytes its
buffers hold (``_budget.py``), and finishing exactly once with one typed error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from ._budget import ByteLedger
from ._codec import Codec
from ._config import SessionConfig
from ._errors import InDoubt, SessionError, is_clean_close
from ._flag import Flag
from ._lifecycle import State, StateHistory
from ._log import SessionLog
from ._queues import Inbound, Outbound
from .protocol import ConnectionState, Role, SessionRecord
from .protocol._wire import FLAG_SYSTEM

if TYPE_CHECKING:
    from ._link import Link
    from ._persist import SessionPersistence

__all__ = ["Counters", "SessionCore", "SessionStats", "final_counts", "in_doubt_of"]

logger = logging.getLogger("trio_session.session")


@attrs.frozen
class SessionStats:
    """A snapshot of a session's counters (``session.stats``)."""

    #: Application messages handed to the wire / received from it.
    sent: int
    received: int
    #: Frame bytes written to / read from the connections (all frame types).
    bytes_sent: int
    bytes_received: int
    #: Connections that resumed this session, and connections in total.
    resumes: int
    connections: int
    #: Completed DH rekeys (tier 2) and sending-key ratchet steps (tier 1).
    rekeys: int
    ratchets: int
    #: Messages retransmitted after resumes.
    retransmitted: int
    #: Latest round-trip time in seconds (None before the first), measured by
    #: heartbeats: the participant beats every interval, the venue while it
    #: sends data; kept across connections.
    rtt: float | None
    #: Messages waiting to be sent / received and not yet consumed.
    outbound_depth: int
    inbound_depth: int
    #: Messages sent but not yet acknowledged by the peer.
    unacked: int
    #: Messages discarded by the ``drop_oldest`` and ``conflate`` policies.
    dropped: int
    conflated: int
    heartbeats_sent: int
    #: Outages: times the session went STALE, however many reconnection attempts
    #: each one took.
    stale_spells: int


@attrs.define
class Counters:
    """Session totals; the attached connection's own counters are added when read
    and folded in when it ends."""

    sent: int = 0
    received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    resumes: int = 0
    connections: int = 0
    rekeys: int = 0
    ratchets: int = 0
    retransmitted: int = 0
    heartbeats_sent: int = 0
    rtt: float | None = None


@final
class SessionCore:
    """The state of one logical session that outlives its connections."""

    def __init__(
        self,
        role: Role,
        config: SessionConfig,
        messages: Any | None,
        key_id: str,
        ledger: ByteLedger | None = None,
    ) -> None:
        self.role = role
        self.config = config
        self.key_id = key_id
        self.codec = Codec(messages)
        #: Where this session's buffered bytes are counted (the venue's budget).
        self.ledger = ledger if ledger is not None else ByteLedger()
        self._replay_counted = 0
        self.outbound = Outbound(
            config.outbound_capacity,
            config.max_batch_bytes,
            config.outbound_max_bytes,
            self.ledger,
        )
        self.inbound = Inbound(self.ledger)
        self.states = StateHistory()
        self.counters = Counters()
        #: The logical-session record (ids, sequence numbers, replay buffer).
        self.record: SessionRecord | None = None
        #: The attached connection's link (None between connections).
        self.link: Link | None = None
        #: With a durable store: the session's write-ahead state (else None).
        self.persist: SessionPersistence | None = None
        #: Loaded from a store after a restart.
        self.restored = False
        #: Why the session ended (set once, by :meth:`finish`).
        self.error: SessionError | None = None
        #: aclose() started: no new sends, no reconnects.
        self.closing = False
        self.finished = Flag()
        #: Called once by :meth:`finish`, last (the venue starts the session's end
        #: hooks there rather than keep a task per session waiting for the end).
        self.on_finished: Callable[[], None] | None = None
        #: Set when nothing is queued or unacknowledged (re-armed by aclose()).
        self.drained = Flag()
        #: Set while no connection is attached or being torn down.
        self.connection_done = Flag()
        self.connection_done.set()
        #: The runner's scope, cancelled by :meth:`finish` (stops reconnecting).
        self.runner_scope: trio.CancelScope | None = None
        #: Venue: since when queued messages wait on a participant that does not
        #: consume (no credit, or a blocked write); kept while it is detached.
        self.stalled_since: float | None = None
        #: When the current outage began (None while LIVE), and reconnects in it.
        self.down_since: float | None = None
        self.attempts = 0
        #: The attached connection resumed the session (False: a new one, or the first).
        self.resumed = False
        self.log = SessionLog(logger, role=role.value, key_id=key_id)

    def set_state(self, state: State, reason: str = "") -> None:
        """Enter ``state`` and log the lifecycle event it is (``reason``: why, for STALE)."""
        old = self.states.state
        if not self.states.enter(state):
            return
        if state is State.STALE or state is State.RESUMING or old is not State.LIVE:
            log_transition(self, old, state, reason)
        else:
            self.log.debug("state %s -> %s", old.value, state.value)

    def bind(self, record: SessionRecord) -> None:
        """Run the session on ``record`` (a new logical session, or the resumed one)."""
        self.record = record
        self.inbound.consume_target = record
        self.log = SessionLog(
            logger, record.session_id.hex(), role=self.role.value, key_id=self.key_id
        )
        if self.persist is not None and self.persist.record is not record:
            self.persist.bind(record)

    def unsent(self) -> bool:
        """Messages still queued here or sent but unacknowledged."""
        r = self.record
        return self.outbound.has_data() or (r is not None and r.replay_messages > 0)

    # -- bytes ---------------------------------------------------------------------------

    def buffered_bytes(self) -> int:
        """Payload bytes this session holds: queued both ways and unacknowledged."""
        r = self.record
        return self.outbound.bytes + self.inbound.bytes + (r.replay_bytes if r else 0)

    def sync_replay(self) -> None:
        """Bring the ledger up to date with the replay buffer (which the protocol
        fills and trims); the queues keep their own bytes up to date."""
        r = self.record
        held = r.replay_bytes if r is not None else 0
        delta = held - self._replay_counted
        if delta:
            self._replay_counted = held
            self.ledger.add(delta)

    def drop_buffers(self, *, inbound: bool) -> None:
        """Free what the session holds for sending at once, and with ``inbound``
        what it received and the application has not read yet."""
        self.outbound.clear()
        if inbound:
            self.inbound.clear()
        r = self.record
        if r is not None:
            r.trim(r.next_tx_seq)
        self.sync_replay()

    def _leave_ledger(self) -> None:
        """The session finished: its bytes no longer count against the budget."""
        self.sync_replay()
        ledger = self.ledger
        ledger.add(-(self.outbound.bytes + self.inbound.bytes + self._replay_counted))
        self.ledger = self.outbound.ledger = self.inbound.ledger = ByteLedger()
        self._replay_counted = 0

    def credit(self, consumed: int) -> None:
        """The application consumed ``consumed`` messages: grant the peer that much credit.

        Messages of a replaced session credit that session's record (its credit
        is gone with it); the attached connection advertises the new window.
        """
        link = self.link
        target = self.inbound.consume_target
        conn = link.conn if link is not None else None
        if conn is not None and conn.session is target and conn.state is ConnectionState.OPEN:
            if conn.messages_consumed(consumed):
                self.outbound.wake()
        elif target is not None:
            target.consume(min(consumed, target.next_rx_seq - target.rx_consumed))

    def finish(self, error: SessionError) -> None:
        """End the session for good: state CLOSED, connection and runner stopped,
        every waiter woken with ``error`` (the first error wins)."""
        if self.finished.is_set():
            return
        if self.error is None:
            self.error = error
            if self.record is not None and not is_clean_close(error) and not error.in_doubt:
                # The application reconciles exactly these (a plain attribute).
                error.in_doubt = in_doubt_of(self.record, self.codec)
                error.last_delivered_seq = self.record.next_rx_seq - 1
        self.finished.set()
        self.set_state(State.CLOSED)
        if self.link is not None:
            self.link.cancel()
        if self.runner_scope is not None:
            self.runner_scope.cancel()
        self.inbound.close()
        self.outbound.close()  # senders blocked on a full queue get the session's error
        self._leave_ledger()
        self.drained.set()
        log_end(self)
        if self.on_finished is not None:
            self.on_finished()

    def stats(self) -> SessionStats:
        c = self.counters
        rekeys, ratchets, retrans, hbs = c.rekeys, c.ratchets, c.retransmitted, c.heartbeats_sent
        bytes_sent, bytes_received = c.bytes_sent, c.bytes_received
        rtt = c.rtt
        link = self.link
        if link is not None:
            s = link.conn.stats
            bytes_sent += s.bytes_sent
            bytes_received += s.bytes_received
            rekeys += s.rekeys
            ratchets += s.ratchets
            retrans += s.retransmitted
            hbs += s.heartbeats_sent
            rtt = s.last_rtt if s.last_rtt is not None else rtt
        out = self.outbound
        return SessionStats(
            sent=c.sent,
            received=c.received,
            bytes_sent=bytes_sent,
            bytes_received=bytes_received,
            resumes=c.resumes,
            connections=c.connections,
            rekeys=rekeys,
            ratchets=ratchets,
            retransmitted=retrans,
            rtt=rtt,
            outbound_depth=out.depth,
            inbound_depth=self.inbound.depth,
            unacked=self.record.replay_messages if self.record else 0,
            dropped=out.dropped,
            conflated=out.conflated,
            heartbeats_sent=hbs,
            stale_spells=self.states.stale_spells,
        )


def log_transition(core: SessionCore, old: State, state: State, reason: str) -> None:
    """The lifecycle event a state change is: stale, resuming, live (CLOSED: :func:`log_end`)."""
    now = trio.current_time()
    log = core.log
    venue = core.role is Role.VENUE
    if state is State.STALE:
        if old is State.RESUMING:  # a failed attempt within the same outage
            log.debug("reconnection attempt failed: %s", reason or "-")
            return
        core.down_since, core.attempts = now, 0
        unacked = core.record.replay_messages if core.record is not None else 0
        text = (
            "participant's connection lost, awaiting its resume"
            if venue
            else "connection to the venue lost; data is stale"
        )
        log.event(
            logging.WARNING,
            "stale",
            "%s (%s)",
            text,
            reason or "connection lost",
            reason=reason or None,
            unacked=unacked,
        )
    elif state is State.RESUMING:
        core.attempts += 1
        level = logging.INFO if core.attempts == 1 else logging.DEBUG
        log.event(
            level, "resuming", "reconnecting (attempt %d)", core.attempts, attempt=core.attempts
        )
    elif state is State.LIVE and core.down_since is not None:
        outage = now - core.down_since
        core.down_since = None
        how = "resumed" if core.resumed else "on a new session"
        log.event(
            logging.INFO,
            "live",
            "live again after %.3fs, %s",
            outage,
            how,
            outage_s=round(outage, 3),
            attempts=core.attempts,
            resumed=core.resumed,
        )
    elif state is not State.CLOSED:
        log.debug("state %s -> %s", old.value, state.value)


def final_counts(stats: SessionStats) -> dict[str, int]:
    """The counters worth a field on a session's last log records."""
    return {
        "sent": stats.sent,
        "received": stats.received,
        "resumes": stats.resumes,
        "stale_spells": stats.stale_spells,
        "rekeys": stats.rekeys,
        "ratchets": stats.ratchets,
    }


def log_end(core: SessionCore) -> None:
    """The last record of a session: a logout, or why it ended, with its counts."""
    err = core.error
    counts = final_counts(core.stats())
    if err is None or is_clean_close(err):
        by = "peer" if err is not None and err.remote else "us"
        core.log.event(logging.INFO, "logout", "logged out (closed by %s)", by, by=by, **counts)
        return
    core.log.event(
        logging.INFO,
        "session_ended",
        "session ended: %s: %s",
        type(err).__name__,
        err,
        error=type(err).__name__,
        code=err.code.name,
        **counts,
    )


def in_doubt_of(record: SessionRecord, codec: Codec) -> tuple[InDoubt, ...]:
    """The application messages ``record`` sent that the peer never acknowledged
    (its replay buffer, notices left out), oldest first, decoded where typed."""
    out: list[InDoubt] = []
    for first, msgs, flags in record.replay:
        if flags & FLAG_SYSTEM:
            continue  # our rejects of the peer's messages, not application messages
        for i, payload in enumerate(msgs):
            out.append(InDoubt(first + i, codec.decode_or_raw(payload), payload))
    return tuple(out)
