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
logical-session record, crediting consumed messages, and finishing exactly once
with one typed error.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from ._codec import Codec
from ._config import SessionConfig
from ._errors import SessionError, is_clean_close
from ._lifecycle import State, StateHistory
from ._queues import Inbound, Outbound
from .protocol import ConnectionState, Role, SessionRecord

if TYPE_CHECKING:
    from ._link import Link
    from ._persist import SessionPersistence

__all__ = ["Counters", "SessionCore", "SessionLog", "SessionStats"]

logger = logging.getLogger("trio_session.session")


class SessionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Puts the session id in every record: as ``record.session_id`` for
    structured handlers and as a ``[session …]`` prefix for plain ones."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        sid = (self.extra or {}).get("session_id", "-")
        kwargs.setdefault("extra", {})["session_id"] = sid
        return f"[session {sid}] {msg}", kwargs


@attrs.frozen
class SessionStats:
    """A snapshot of a session's counters (``session.stats``)."""

    #: Application messages handed to the wire / received from it.
    sent: int
    received: int
    #: Connections that resumed this session, and connections in total.
    resumes: int
    connections: int
    #: Completed DH rekeys (tier 2) and sending-key ratchet steps (tier 1).
    rekeys: int
    ratchets: int
    #: Messages retransmitted after resumes.
    retransmitted: int
    #: Last heartbeat round-trip time in seconds (None before the first).
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
    #: Times the session went STALE (connection lost while it was LIVE or resuming).
    stale_spells: int


@attrs.define
class Counters:
    """Session totals; the attached connection's own counters are added when read
    and folded in when it ends."""

    sent: int = 0
    received: int = 0
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
        self, role: Role, config: SessionConfig, messages: Any | None, key_id: str
    ) -> None:
        self.role = role
        self.config = config
        self.key_id = key_id
        self.codec = Codec(messages)
        self.outbound = Outbound(config.outbound_capacity, config.max_batch_bytes)
        self.inbound = Inbound()
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
        self.finished = trio.Event()
        #: Set when nothing is queued or unacknowledged (re-armed by aclose()).
        self.drained = trio.Event()
        #: Set while no connection is attached or being torn down.
        self.connection_done = trio.Event()
        self.connection_done.set()
        #: The runner's scope, cancelled by :meth:`finish` (stops reconnecting).
        self.runner_scope: trio.CancelScope | None = None
        self.log = SessionLog(logger, {"session_id": "-"})

    def set_state(self, state: State) -> None:
        old = self.states.state
        if self.states.enter(state):
            self.log.debug("state %s -> %s", old.value, state.value)

    def bind(self, record: SessionRecord) -> None:
        """Run the session on ``record`` (a new logical session, or the resumed one)."""
        self.record = record
        self.inbound.consume_target = record
        self.log = SessionLog(logger, {"session_id": record.session_id.hex()})
        if self.persist is not None and self.persist.record is not record:
            self.persist.bind(record)

    def unsent(self) -> bool:
        """Messages still queued here or sent but unacknowledged."""
        r = self.record
        return self.outbound.has_data() or (r is not None and r.replay_messages > 0)

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
            target.rx_consumed = min(target.rx_consumed + consumed, target.next_rx_seq)

    def finish(self, error: SessionError) -> None:
        """End the session for good: state CLOSED, connection and runner stopped,
        every waiter woken with ``error`` (the first error wins)."""
        if self.finished.is_set():
            return
        if self.error is None:
            self.error = error
        self.finished.set()
        self.set_state(State.CLOSED)
        if self.link is not None:
            self.link.cancel()
        if self.runner_scope is not None:
            self.runner_scope.cancel()
        self.inbound.close()
        self.outbound.close()  # senders blocked on a full queue get the session's error
        self.drained.set()
        lvl = logging.DEBUG if is_clean_close(self.error) else logging.INFO
        self.log.log(lvl, "session ended: %s", self.error)

    def stats(self) -> SessionStats:
        c = self.counters
        rekeys, ratchets, retrans, hbs = c.rekeys, c.ratchets, c.retransmitted, c.heartbeats_sent
        rtt = c.rtt
        link = self.link
        if link is not None:
            s = link.conn.stats
            rekeys += s.rekeys
            ratchets += s.ratchets
            retrans += s.retransmitted
            hbs += s.heartbeats_sent
            rtt = s.last_rtt if s.last_rtt is not None else rtt
        out = self.outbound
        return SessionStats(
            sent=c.sent,
            received=c.received,
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
