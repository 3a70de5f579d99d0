"""The Trio runtime of one logical session: channels, four tasks, one outcome.

Shape (DESIGN.md, "Runtime shape"): while a connection is attached, one nursery
holds exactly four tasks:

* the **reader** feeds received frames to the sans-IO connection and puts
  message batches on the inbound channel; credit flow control guarantees the
  channel has room, so the reader never blocks on the application and
  heartbeats, acks and rekeys keep flowing while the application is busy;
* the **writer** is the only task that builds frames (so sequence numbers and
  key epochs follow wire order): control frames first, then as many queued
  messages as credit allows, coalesced into one frame;
* the **heartbeat** task sleeps until the protocol's next heartbeat deadline;
* the **key-rotation** task sleeps until the next ratchet/rekey deadline.

Any task failure or connection break cancels that nursery and leaves as one
:class:`~trio_session.SessionError` (no exception groups).  The channels, the
replay buffer and the :class:`Session` object outlive connections, which is
what lets a supervisor (participant) or the server (venue) resume the session
on a new connection without the application noticing more than a STALE spell.
"""

from __future__ import annotations

import enum
import logging
import math
import typing
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from typing import Any, Final, final

import attrs
import msgspec
import trio

from ._config import SessionConfig
from ._errors import (
    CloseCode,
    ConnectionLost,
    LocalProtocolError,
    MessageRejected,
    RejectCode,
    SessionClosed,
    SessionError,
    SessionReset,
)
from ._transport import Transport
from .protocol import (
    CloseReceived,
    Connection,
    ConnectionState,
    HeartbeatAcked,
    MessagesReceived,
    Role,
    SessionState,
)
from .protocol._wire import NOTICE_REJECT, Notice, decode_notice, encode_body

__all__ = ["InvalidMessage", "Session", "SessionStats", "State"]

logger = logging.getLogger("trio_session.session")

#: Timer tasks never re-check more often than this when a deadline is already
#: due but waits on another task (e.g. the writer is blocked on a full socket).
MIN_TIMER_STEP: Final = 0.005
_RESET: Final = object()  # inbound sentinel: the logical session was replaced


class _Notices(list[bytes]):
    """An inbound batch of session-layer notices (FLAG_SYSTEM), kept in stream order."""


class _OutNotice(bytes):
    """An outbound notice (FLAG_SYSTEM) queued among lossless messages, so that a
    reject() never overtakes replies the application sent before it."""


class _SessionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Puts the session id in every record: as ``record.session_id`` for
    structured handlers and as a ``[session …]`` prefix for plain ones."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        sid = (self.extra or {}).get("session_id", "-")
        kwargs.setdefault("extra", {})["session_id"] = sid
        return f"[session {sid}] {msg}", kwargs


class State(enum.Enum):
    """Where a session is in its life; observe with :meth:`Session.wait_state`."""

    #: Establishing the first connection.
    CONNECTING = "connecting"
    #: Connected and authenticated; data flows.
    LIVE = "live"
    #: The connection was lost; what you hold may be out of date.
    STALE = "stale"
    #: Reconnecting; LIVE again only after the replay has been delivered.
    RESUMING = "resuming"
    #: Ended for good (see :attr:`Session.error`).
    CLOSED = "closed"


class InvalidMessage(SessionError):
    """A received message did not match the declared ``messages=`` schema.

    Only that message is rejected; the session continues.  ``seq`` is the data
    sequence number of the offending message.
    """

    default_code = CloseCode.PROTOCOL_ERROR

    def __init__(self, message: str, *, seq: int) -> None:
        super().__init__(message, remote=True)
        self.seq = seq


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
class _Counters:
    sent: int = 0
    received: int = 0
    resumes: int = 0
    connections: int = 0
    rekeys: int = 0
    ratchets: int = 0
    retransmitted: int = 0
    dropped: int = 0
    conflated: int = 0
    heartbeats_sent: int = 0
    stale_spells: int = 0
    rtt: float | None = None


class _Codec:
    """Bytes passthrough, or msgspec msgpack for a declared ``messages=`` type."""

    def __init__(self, messages: Any | None) -> None:
        self.typed = messages is not None
        if messages is not None:
            self._enc = msgspec.msgpack.Encoder()
            self._dec: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(messages)
            members = typing.get_args(messages) or (messages,)
            # Structs (the documented way to declare messages) are checked on
            # send, so a wrong object fails here rather than at the peer.
            self._types: tuple[type, ...] | None = (
                tuple(members)
                if all(isinstance(m, type) and issubclass(m, msgspec.Struct) for m in members)
                else None
            )

    def encode(self, message: Any) -> bytes:
        if not self.typed:
            if type(message) is bytes:
                return message
            if isinstance(message, (bytearray, memoryview)):
                return bytes(message)
            raise TypeError(
                f"without messages= a session sends bytes, not {type(message).__name__}"
            )
        if self._types is not None and not isinstance(message, self._types):
            names = ", ".join(t.__name__ for t in self._types)
            raise TypeError(f"this session sends {names}, not {type(message).__name__}")
        try:
            return self._enc.encode(message)
        except (msgspec.EncodeError, TypeError) as exc:
            raise TypeError(f"cannot encode {type(message).__name__}: {exc}") from exc

    def decode(self, payload: bytes, seq: int) -> Any:
        if not self.typed:
            return payload
        try:
            return self._dec.decode(payload)
        except (msgspec.MsgspecError, ValueError, TypeError, RecursionError) as exc:
            raise InvalidMessage(
                f"message {seq} does not match the schema: {exc}", seq=seq
            ) from exc


@final
class Session:
    """One logical session, on either side.  Created by ``ts.connect`` / ``ts.serve``.

    Sending has three policies (per call, so per stream of messages):

    * :meth:`send` / :meth:`send_many` — ``block``: lossless, waits while the
      outbound queue is full (orders, execution reports);
    * :meth:`send_latest` — ``conflate``: keeps only the latest message per key
      until it can be sent (market data);
    * :meth:`send_lossy` — ``drop_oldest``: a bounded queue that drops its
      oldest message when full.

    Order is preserved within each policy; lossless messages are sent before
    conflated ones, which go before lossy ones.  Every drop is counted in
    :attr:`stats`.
    """

    def __init__(
        self,
        *,
        role: Role,
        config: SessionConfig,
        messages: Any | None,
        key_id: str,
        _token: object = None,
    ) -> None:
        if _token is not _CREATE:
            raise TypeError("Session objects are created by trio_session.connect() or serve()")
        self.role = role
        self.config = config
        self.key_id = key_id
        self._codec = _Codec(messages)
        self._out_send, self._out_recv = trio.open_memory_channel[bytes | list[bytes]](
            config.outbound_capacity
        )
        # Inbound memory is bounded by the credit window (inbound_capacity
        # messages per session), which the peer must respect; the channel itself
        # is unbounded so the reader can never block on it (and a replaced
        # session's unread messages plus the new one's window always fit).
        self._in_send, self._in_recv = trio.open_memory_channel[Any](math.inf)
        self._pending: deque[bytes] = deque()
        self._latest: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lossy: deque[bytes] = deque()
        # bytes, or decoded notices (Notice / the error a bad one produced)
        self._rx_buf: deque[Any] = deque()
        self._rx_seq = 0  # data seq of the next message handed to the application
        self._reset_pending = False
        self._replay_until = 0
        self._out_queued = 0  # messages in the outbound channel
        self._in_queued = 0  # messages in the inbound channel
        self._last_seq = -1
        self._pstate: SessionState | None = None
        #: The session state that consuming the next inbound messages credits.
        self._consume_target: SessionState | None = None
        self._conn: Connection | None = None
        self._transport: Transport | None = None
        self._conn_scope: trio.CancelScope | None = None
        self._conn_error: SessionError | None = None
        self._close_sent = trio.Event()
        # The writer parks here when it has nothing to do.  Waking it is a plain
        # reschedule: a cancel scope would raise and catch a Cancelled per wake-up,
        # the venue's top idle cost with thousands of sessions (bench/README.md).
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._writer_parked = False
        self._hb_sleep: trio.CancelScope | None = None
        self._rot_sleep: trio.CancelScope | None = None
        self._wake_pending = False
        self._writer_waits_for_credit = False
        self._stalled_since: float | None = None
        self._state = State.CONNECTING
        self._state_changed = trio.Event()
        self._history: deque[State] = deque(maxlen=1024)
        self._history_start = 0  # absolute index of _history[0]
        self._error: SessionError | None = None
        self._closing = False
        self._finished = trio.Event()
        self._drained = trio.Event()
        self._counters = _Counters()
        self._connection_done = trio.Event()
        self._connection_done.set()
        #: Called once, by the reader, on the first authenticated frame from the
        #: peer on a connection (the venue's confirmation that ClientFinish verified).
        self._on_confirmed: Callable[[], None] | None = None
        self._attach_lock = trio.Lock()
        #: Runner-owned scope (supervisor / server) to stop reconnecting on close.
        self._runner_scope: trio.CancelScope | None = None
        self._log = _SessionLog(logger, {"session_id": "-"})

    # -- identity and observation --------------------------------------------------

    def __repr__(self) -> str:
        return f"<Session {self.session_id or '-'} {self.role.value} {self._state.value}>"

    @property
    def session_id(self) -> str | None:
        """Hex session id (None before the first handshake)."""
        return self._pstate.session_id.hex() if self._pstate else None

    @property
    def state(self) -> State:
        return self._state

    @property
    def error(self) -> SessionError | None:
        """Why the session ended (None while it runs, or after a clean close)."""
        if self._error is not None and _is_clean_close(self._error):
            return None
        return self._error

    async def transitions(self) -> AsyncIterator[State]:
        """Every state the session enters from now on, in order, ending with CLOSED.

        Edge-triggered, unlike :meth:`wait_state`: a short LIVE spell between two
        outages is never missed (a consumer more than 1,024 transitions behind
        skips the oldest).  Use it to drive resync logic or metrics::

            async for state in session.transitions():
                if state is ts.State.STALE:
                    mark_market_data_stale()
        """
        index = self._history_start + len(self._history)
        while True:
            while index < self._history_start + len(self._history):
                index = max(index, self._history_start)
                state = self._history[index - self._history_start]
                index += 1
                yield state
                if state is State.CLOSED:
                    return
            if self._state is State.CLOSED and index >= self._history_start + len(self._history):
                return
            await self._state_changed.wait()

    async def wait_state(self, *states: State) -> State:
        """Wait until the session is in one of ``states``; returns that state.

        Returns at once when it already is.  CLOSED always ends the wait (the
        session cannot change any more), so check the return value.
        """
        if not states:
            raise ValueError("wait_state() needs at least one State")
        await trio.lowlevel.checkpoint()
        if self._state in states or self._state is State.CLOSED:
            return self._state
        # Catch transitions, not levels: a STALE that lasted one scheduler round
        # (the supervisor moves on to RESUMING at once) still ends the wait.
        index = self._history_start + len(self._history)
        while True:
            await self._state_changed.wait()
            while index < self._history_start + len(self._history):
                index = max(index, self._history_start)
                state = self._history[index - self._history_start]
                index += 1
                if state in states or state is State.CLOSED:
                    return state

    @property
    def stats(self) -> SessionStats:
        c = self._counters
        conn = self._conn
        rekeys, ratchets, retrans, hbs = c.rekeys, c.ratchets, c.retransmitted, c.heartbeats_sent
        rtt = c.rtt
        if conn is not None:
            rekeys += conn.stats.rekeys
            ratchets += conn.stats.ratchets
            retrans += conn.stats.retransmitted
            hbs += conn.stats.heartbeats_sent
            rtt = conn.stats.last_rtt if conn.stats.last_rtt is not None else rtt
        out_depth = self._out_queued + len(self._pending) + len(self._latest) + len(self._lossy)
        in_depth = len(self._rx_buf) + self._in_queued
        return SessionStats(
            sent=c.sent,
            received=c.received,
            resumes=c.resumes,
            connections=c.connections,
            rekeys=rekeys,
            ratchets=ratchets,
            retransmitted=retrans,
            rtt=rtt,
            outbound_depth=out_depth,
            inbound_depth=in_depth,
            unacked=self._pstate.replay_messages if self._pstate else 0,
            dropped=c.dropped,
            conflated=c.conflated,
            heartbeats_sent=hbs,
            stale_spells=c.stale_spells,
        )

    # -- sending ---------------------------------------------------------------------

    def _check_can_send(self, payload: bytes) -> None:
        if self._error is not None:
            raise self._error_for_user()
        if self._closing:
            raise SessionClosed("session is closing", code=CloseCode.NORMAL)
        if len(payload) > self.config.max_message_size:
            raise LocalProtocolError(
                f"message of {len(payload)} bytes exceeds max_message_size "
                f"{self.config.max_message_size}"
            )

    async def send(self, message: Any, *, fail_fast: bool = False) -> None:
        """Send one message losslessly (``block`` policy).

        Waits while the outbound queue is full; during an outage the message
        waits and is delivered after the session resumes.  With
        ``fail_fast=True`` it raises :class:`~trio_session.ConnectionLost`
        instead of queueing while the session is not LIVE.
        """
        payload = self._codec.encode(message)
        self._check_can_send(payload)
        await self._enqueue(payload, 1, fail_fast)

    async def send_many(self, messages: Sequence[Any], *, fail_fast: bool = False) -> None:
        """Send several messages losslessly as one queue item (cheaper per message)."""
        payloads = [self._codec.encode(m) for m in messages]
        if not payloads:
            return
        for p in payloads:
            self._check_can_send(p)
        await self._enqueue(payloads, len(payloads), fail_fast)

    async def _enqueue(self, item: bytes | list[bytes], count: int, fail_fast: bool) -> None:
        """The lossless path shared by send() and send_many()."""
        if fail_fast and self._state is not State.LIVE:
            raise ConnectionLost(f"session is {self._state.value}, not sending (fail_fast)")
        # What MemorySendChannel.send does, with the writer woken *before* we
        # yield: it then runs in the same scheduler batch as our caller instead
        # of the next one (one pass less per message on the latency path).
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            try:
                self._out_send.send_nowait(item)
                blocked = False
            except trio.WouldBlock:  # full: wait like MemorySendChannel.send
                await self._out_send.send(item)
                blocked = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._final_error()  # noqa: B904 - keeps the error's own cause
        self._out_queued += count
        self._wake_for_data()
        if not blocked:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def send_latest(self, key: Hashable, message: Any) -> None:
        """Queue ``message`` as the latest value for ``key`` (``conflate`` policy).

        Never blocks: a message still queued under the same key is replaced
        (counted in ``stats.conflated``).
        """
        payload = self._codec.encode(message)
        self._check_can_send(payload)
        latest = self._latest
        if key in latest:
            latest.move_to_end(key)  # FIFO by last update
            self._counters.conflated += 1
        latest[key] = payload
        self._wake_for_data()

    def send_lossy(self, message: Any) -> None:
        """Queue ``message``, dropping the oldest queued one when the queue is full
        (``drop_oldest`` policy; capacity ``outbound_capacity``).  Never blocks."""
        payload = self._codec.encode(message)
        self._check_can_send(payload)
        if len(self._lossy) >= self.config.outbound_capacity:
            self._lossy.popleft()
            self._counters.dropped += 1
        self._lossy.append(payload)
        self._wake_for_data()

    # -- receiving ---------------------------------------------------------------------

    async def receive(self) -> Any:
        """The next message, in order.  Raises the session's error once it ended
        and everything received before has been delivered."""
        waited = False
        while True:
            if self._reset_pending:
                self._reset_pending = False
                raise _session_reset()
            buf = self._rx_buf
            if buf:
                payload = buf.popleft()
                seq = self._rx_seq
                self._rx_seq = seq + 1
                if not waited:  # a receive() is always a checkpoint, once
                    await trio.lowlevel.checkpoint()
                if type(payload) is not bytes:
                    raise _notice_error(payload)
                self._last_seq = seq
                if not self._codec.typed:
                    return payload
                try:
                    return self._codec.decode(payload, seq)
                except InvalidMessage as exc:
                    self.reject(seq, str(exc), code=RejectCode.INVALID)
                    raise
            try:
                item = await self._in_recv.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise self._final_error()  # noqa: B904 - keeps the error's own cause
            waited = True
            self._take_inbound(item)

    async def receive_batch(self, max_messages: int = 1024) -> list[Any]:
        """Up to ``max_messages`` messages at once (at least one; waits for it).

        A message that fails validation ends the batch early; the next call
        raises its :class:`InvalidMessage`.
        """
        if max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        out = [await self.receive()]
        buf = self._rx_buf
        typed = self._codec.typed
        while len(out) < max_messages and not self._reset_pending:
            if not buf:
                try:
                    item = self._in_recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
                self._take_inbound(item)
                continue
            head = buf[0]
            if type(head) is not bytes:
                break  # a notice: raised by the next receive()
            if typed:
                try:
                    msg = self._codec.decode(head, self._rx_seq)
                except InvalidMessage:
                    break
            else:
                msg = head
            buf.popleft()
            self._last_seq = self._rx_seq
            self._rx_seq += 1
            out.append(msg)
        return out

    @property
    def last_seq(self) -> int:
        """Data sequence number of the last message :meth:`receive` returned (-1 before).

        It identifies that message within the session (the peer's n-th message,
        from 0), e.g. to bind an execution report to the order it answers.
        """
        return self._last_seq

    def reject(
        self,
        seq: int,
        reason: str = "",
        *,
        code: RejectCode = RejectCode.REJECTED,
        retry_after: float | None = None,
    ) -> None:
        """Tell the peer that its message ``seq`` was not accepted.

        The peer's :meth:`receive` raises :class:`~trio_session.MessageRejected`
        in stream order; the session continues.  Never blocks; notices are
        sequenced and replayed across reconnects like messages.
        """
        if self._error is not None or self._closing:
            return
        retry_ms = None if retry_after is None else max(0, min(int(retry_after * 1000), 2**32 - 1))
        notice = Notice(NOTICE_REJECT, seq, int(code), reason[:200], retry_ms)
        # Everything sent before this call goes first: stage the outbound
        # channel's contents (and any sender blocked on it) ahead of the notice.
        while True:
            try:
                self._stage(self._out_recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        self._pending.append(_OutNotice(encode_body(notice)))
        self._wake()

    def _take_inbound(self, item: Any) -> None:
        if item is _RESET:
            self._reset_pending = True
            # From here on, consumption grants credit in the new session.
            self._consume_target = self._pstate
            return
        self._in_queued -= len(item)
        if type(item) is _Notices:
            self._rx_buf.extend(_decode_notice_safely(p) for p in item)
        else:
            self._rx_buf.extend(item)
        self._consumed(len(item))

    def _consumed(self, n: int) -> None:
        conn = self._conn
        st = self._consume_target
        if conn is not None and conn.session is st and conn.state is ConnectionState.OPEN:
            if conn.messages_consumed(n):
                self._wake()
        elif st is not None:
            st.rx_consumed = min(st.rx_consumed + n, st.next_rx_seq)

    def __aiter__(self) -> Session:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except SessionClosed as exc:
            if _is_clean_close(exc):
                raise StopAsyncIteration from None
            raise

    # -- closing -------------------------------------------------------------------------

    async def aclose(self, code: CloseCode = CloseCode.NORMAL, reason: str = "") -> None:
        """Close gracefully: flush queued messages, wait (bounded by
        ``close_timeout``) for the peer to acknowledge them, exchange CLOSE, and
        tear everything down.  Idempotent; always closes, even when cancelled."""
        if self._closing or self._finished.is_set():
            await self._wait_finished()
            return
        self._closing = True
        with trio.CancelScope(shield=True), trio.move_on_after(self.config.close_timeout):
            if self._state is State.LIVE and code is CloseCode.NORMAL:
                await self._wait_drained()
            conn = self._conn
            if conn is not None and conn.state is ConnectionState.OPEN:
                conn.close(code, reason)
                self._wake()
                await self._close_sent.wait()
                await self._connection_done.wait()
        self._finish(SessionClosed("session closed", code=code, remote=False, reason=reason))
        await self._wait_finished()

    async def _wait_finished(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(self.config.close_timeout):
            await self._connection_done.wait()
        await trio.lowlevel.checkpoint()

    async def _wait_drained(self) -> None:
        while self._has_outbound() or (self._pstate is not None and self._pstate.replay_messages):
            if self._state is not State.LIVE or self._conn is None:
                return
            self._drained = trio.Event()
            self._wake()
            await self._drained.wait()

    def _finish(self, error: SessionError) -> None:
        """End the session for good: state CLOSED, wake every waiter."""
        if self._finished.is_set():
            return
        if self._error is None:
            self._error = error
        self._finished.set()
        self._set_state(State.CLOSED)
        if self._conn_scope is not None:
            self._conn_scope.cancel()
        if self._runner_scope is not None:
            self._runner_scope.cancel()
        self._in_send.close()
        # Wake tasks blocked in send() on a full queue: they get the session's error.
        self._out_recv.close()
        self._drained.set()
        lvl = logging.DEBUG if _is_clean_close(self._error) else logging.INFO
        self._log.log(lvl, "session ended: %s", self._error)

    def _final_error(self) -> SessionError:
        """The session's error, to raise from an ``except`` block.

        Not ``raise ... from None``: that would erase the error's own cause (e.g.
        why the supervisor gave up); ``__suppress_context__`` only hides the
        channel exception being handled.
        """
        err = self._error_for_user()
        err.__suppress_context__ = True
        return err

    def _error_for_user(self) -> SessionError:
        err = self._error
        if err is None:
            return SessionClosed("session is closed", code=CloseCode.NORMAL)
        return err

    # -- state ---------------------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        if state is self._state or self._state is State.CLOSED:
            return
        self._log.debug("state %s -> %s", self._state.value, state.value)
        if state is State.STALE:
            self._counters.stale_spells += 1
        if len(self._history) == self._history.maxlen:
            self._history_start += 1
        self._history.append(state)
        self._state = state
        self._state_changed.set()
        self._state_changed = trio.Event()

    def _bind(self, pstate: SessionState) -> None:
        self._pstate = pstate
        self._consume_target = pstate
        self._log = _SessionLog(logger, {"session_id": pstate.session_id.hex()})

    def _reset_to(self, pstate: SessionState) -> None:
        """The participant got a fresh session instead of a resume.

        Messages of the old session still queued are delivered first (and
        credited to the old session); the reset marker then switches over.
        """
        old_target = self._consume_target
        self._bind(pstate)
        self._consume_target = old_target
        self._rx_seq = 0
        self._in_send.send_nowait(_RESET)

    # -- the connection ------------------------------------------------------------------

    async def _run_connection(
        self, transport: Transport, conn: Connection, *, replay_until: int = 0
    ) -> SessionError:
        """Run reader, writer, heartbeat and key rotation until the connection ends.

        Returns the error that ended it (a SessionClosed for a clean close); it
        never raises except Cancelled from an enclosing scope.
        """
        assert conn.session is not None
        self._conn, self._transport = conn, transport
        self._conn_error = None
        self._close_sent = trio.Event()
        self._connection_done = trio.Event()
        self._counters.connections += 1
        self._replay_until = replay_until
        # The venue is LIVE once it verified ClientFinish.  A participant is LIVE
        # only once the venue confirmed the handshake (its first authenticated
        # frame) and its replay has been received; until then the data is stale.
        if self.role is Role.VENUE:
            self._set_state(State.LIVE)
        elif self._state is not State.CONNECTING:
            self._set_state(State.RESUMING)
        self._log.debug("connection up (%s)", transport.remote_address)
        try:
            async with trio.open_nursery() as nursery:
                self._conn_scope = nursery.cancel_scope
                if self._finished.is_set():
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._guard, self._reader, transport, conn, name="reader")
                nursery.start_soon(self._guard, self._writer, transport, conn, name="writer")
                nursery.start_soon(self._guard, self._heartbeat, conn, name="heartbeat")
                nursery.start_soon(self._guard, self._rotation, conn, name="key-rotation")
        finally:
            self._conn_scope = None
            self._conn = None
            self._transport = None
            self._absorb_stats(conn)
            await self._close_transport(transport, conn)
            # Release anyone waiting on this connection's progress.
            self._drained.set()
            self._close_sent.set()
            self._connection_done.set()
        err = self._conn_error
        if err is None:
            err = self._error or ConnectionLost("connection ended")
        return err

    def _caught_up(self, conn: Connection) -> bool:
        s = conn.session
        return conn._rx_authenticated and s is not None and s.next_rx_seq >= self._replay_until

    def _absorb_stats(self, conn: Connection) -> None:
        s, c = conn.stats, self._counters
        c.rekeys += s.rekeys
        c.ratchets += s.ratchets
        c.retransmitted += s.retransmitted
        c.heartbeats_sent += s.heartbeats_sent
        if s.last_rtt is not None:
            c.rtt = s.last_rtt

    async def _close_transport(self, transport: Transport, conn: Connection) -> None:
        err = self._conn_error
        # Cancelled from outside (err is None): the connection simply drops.  A
        # cancelled participant is indistinguishable from a lost one on purpose:
        # the venue keeps the session for resume, then its dead man's switch
        # fires.  A clean logout is aclose() (or leaving ``connect()`` normally).
        with trio.CancelScope(shield=True):
            # Tell the peer why, when we detected the problem and still hold keys.
            if (
                err is not None
                and not err.remote
                and not isinstance(err, (ConnectionLost, SessionClosed))
                and not transport.closed
            ):
                try:
                    conn.close(err.code, type(err).__name__)
                    with trio.move_on_after(min(0.5, self.config.close_timeout)):
                        for frame in conn.data_to_send():
                            await transport.send(frame)
                except SessionError:
                    pass
            if err is None:
                await _close_forcefully(transport)  # cancelled: drop, do not linger
                return
            with trio.move_on_after(self.config.close_timeout) as scope:
                await transport.aclose()
            if scope.cancelled_caught:
                await _close_forcefully(transport)

    def _end_connection(self, error: SessionError) -> None:
        if self._conn_error is None:
            self._conn_error = error
            if not _is_clean_close(error):
                self._log.info("connection ended: %s: %s", type(error).__name__, error)
        if self._conn_scope is not None:
            self._conn_scope.cancel()

    async def _guard(self, fn: Any, *args: Any) -> None:
        try:
            await fn(*args)
        except SessionError as exc:
            self._end_connection(exc)
        except Exception as exc:
            self._log.exception("internal error in the %s task", getattr(fn, "__name__", fn))
            err = SessionError(
                f"internal error: {type(exc).__name__}", code=CloseCode.INTERNAL_ERROR
            )
            err.__cause__ = exc
            self._end_connection(err)

    def _wake(self) -> None:
        self._wake_pending = True
        if self._writer_parked:
            self._writer_parked = False
            self._writer_lot.unpark()

    def _wake_for_data(self) -> None:
        # A running writer takes new data before it parks (no checkpoint between
        # its last look at the queues and parking): only a parked one needs waking.
        if self._writer_parked:
            self._wake()

    def _has_outbound(self) -> bool:
        return bool(
            self._pending
            or self._latest
            or self._lossy
            or self._out_recv.statistics().current_buffer_used
        )

    async def _reader(self, transport: Transport, conn: Connection) -> None:
        in_send = self._in_send
        counters = self._counters
        while True:
            frame = await transport.receive()
            events = conn.receive_data(frame)
            if self._on_confirmed is not None and conn._rx_authenticated:
                confirmed, self._on_confirmed = self._on_confirmed, None
                confirmed()
            if self._state is not State.LIVE and self._caught_up(conn):
                self._set_state(State.LIVE)
            for ev in events:
                if type(ev) is MessagesReceived:
                    try:
                        in_send.send_nowait(_Notices(ev.payloads) if ev.system else ev.payloads)
                        self._in_queued += len(ev.payloads)
                    except (trio.ClosedResourceError, trio.BrokenResourceError):
                        return  # session finished; messages after close are not delivered
                    counters.received += len(ev.payloads)
                    hb = self._hb_sleep
                    if hb is not None:
                        due = conn.heartbeat_deadline()
                        if due < hb.deadline:
                            hb.deadline = due
                    if self._state is not State.LIVE and self._caught_up(conn):
                        self._set_state(State.LIVE)
                elif type(ev) is HeartbeatAcked:
                    counters.rtt = ev.rtt
                elif type(ev) is CloseReceived:
                    await self._on_peer_close(conn, ev)
                    return
            if conn.has_pending_control() or (
                self._writer_waits_for_credit and conn.send_window() > 0
            ):
                self._wake()
            elif self._pstate is not None and not self._pstate.replay_messages:
                self._drained.set()

    async def _on_peer_close(self, conn: Connection, ev: CloseReceived) -> None:
        err = ev.to_error()
        if self._conn_error is None:
            self._conn_error = err
        conn.close(CloseCode.NORMAL if ev.code is CloseCode.NORMAL else ev.code)
        self._wake()
        with trio.move_on_after(self.config.close_timeout):
            await self._close_sent.wait()
        self._end_connection(err)

    def _take(self, window: int, budget: int) -> list[bytes]:
        """Gather up to ``window`` queued messages within the batch and byte budgets."""
        cap = min(self.config.max_batch_bytes, budget)
        msgs: list[bytes] = []
        size = 0
        pending = self._pending
        out_recv = self._out_recv
        while len(msgs) < window:
            if not pending:
                try:
                    self._stage(out_recv.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
                continue
            m = pending[0]
            if type(m) is _OutNotice:
                break  # notices travel in their own frame, in queue order
            lm = len(m)
            if size + lm > cap and (msgs or lm > budget):
                return msgs
            msgs.append(pending.popleft())
            size += lm
        # Then conflated messages (oldest update first), then lossy ones.
        latest, lossy = self._latest, self._lossy
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
        return msgs

    def _stage(self, item: bytes | list[bytes]) -> None:
        """Move one outbound channel item into the writer's pending messages."""
        if isinstance(item, bytes):
            self._pending.append(item)
            self._out_queued -= 1
        else:
            self._pending.extend(item)
            self._out_queued -= len(item)

    async def _writer(self, transport: Transport, conn: Connection) -> None:
        send: Callable[[bytes], Awaitable[None]] = transport.send
        if self.role is Role.VENUE:
            # A participant that stops reading its socket fills TCP buffers and
            # blocks us here rather than in credit: bound every write.
            limit = self.config.slow_consumer_timeout

            async def bounded_send(frame: bytes) -> None:
                with trio.move_on_after(limit) as scope:
                    await transport.send(frame)
                if scope.cancelled_caught:
                    raise SessionError(
                        f"participant did not read for {limit}s", code=CloseCode.SLOW_CONSUMER
                    )

            send = bounded_send

        counters = self._counters
        while True:
            self._wake_pending = False
            rot = self._rot_sleep
            if rot is not None:
                due = conn.rotation_deadline()
                if due < rot.deadline:
                    rot.deadline = due
            frames = conn.data_to_send()
            for frame in frames:
                await send(frame)
            if conn.state is not ConnectionState.OPEN:
                if conn.state in (ConnectionState.CLOSING, ConnectionState.ERROR) and (
                    not conn.has_pending_control()
                ):
                    self._close_sent.set()
                await self._park(wait_for_data=False)
                continue
            window = conn.send_window()
            pending = self._pending
            if window > 0 and pending and type(pending[0]) is _OutNotice:
                notices: list[bytes] = []
                while pending and type(pending[0]) is _OutNotice and len(notices) < window:
                    notices.append(bytes(pending.popleft()))
                await send(conn.send_data(notices, system=True))
                continue
            if window > 0:
                batch = self._take(window, conn.send_bytes_budget())
                if batch:
                    self._stalled_since = None
                    frame = conn.send_data(batch)
                    counters.sent += len(batch)  # now in the replay buffer: sent
                    await send(frame)
                    continue
            if self._has_outbound():
                if self._stalled_since is None:
                    self._stalled_since = trio.current_time()
                    hb = self._hb_sleep
                    if hb is not None and self.role is Role.VENUE:
                        due = self._stalled_since + self.config.slow_consumer_timeout
                        hb.deadline = min(hb.deadline, due)
            else:
                self._stalled_since = None
                if self._pstate is not None and not self._pstate.replay_messages:
                    self._drained.set()
            if self._wake_pending:
                continue
            await self._park(wait_for_data=window > 0 and not self._latest and not self._lossy)

    async def _park(self, *, wait_for_data: bool) -> None:
        """Sleep until woken: by :meth:`_wake`, or by new data of any policy.

        ``wait_for_data=False`` records that only credit (or a control frame) can
        let the writer make progress, so the reader wakes it when credit arrives.
        """
        if self._wake_pending:
            await trio.lowlevel.checkpoint()
            return
        self._writer_waits_for_credit = not wait_for_data
        self._writer_parked = True
        try:
            await self._writer_lot.park()
        finally:
            self._writer_parked = False
            self._writer_waits_for_credit = False

    async def _heartbeat(self, conn: Connection) -> None:
        slow_limit = self.config.slow_consumer_timeout
        while True:
            now = trio.current_time()
            deadline = conn.heartbeat_deadline()
            if self.role is Role.VENUE and self._stalled_since is not None:
                deadline = min(deadline, self._stalled_since + slow_limit)
            # An adjustable sleep: the reader pulls the deadline in when received
            # data makes a (delayed) acknowledgement due sooner.
            with trio.move_on_at(max(deadline, now + MIN_TIMER_STEP)) as sleep:
                self._hb_sleep = sleep
                await trio.sleep_forever()
            self._hb_sleep = None
            conn.handle_heartbeat_timer()
            if conn.has_pending_control():
                self._wake()
            stalled = self._stalled_since
            if (
                self.role is Role.VENUE
                and stalled is not None
                and trio.current_time() - stalled >= slow_limit
            ):
                raise SessionError(
                    f"participant consumed nothing for {slow_limit}s while messages waited",
                    code=CloseCode.SLOW_CONSUMER,
                )

    async def _rotation(self, conn: Connection) -> None:
        while True:
            now = trio.current_time()
            # Adjustable: once a due ratchet step rides on an outgoing frame, the
            # writer pulls this deadline in to the new epoch's schedule.
            with trio.move_on_at(max(conn.rotation_deadline(), now + MIN_TIMER_STEP)) as sleep:
                self._rot_sleep = sleep
                await trio.sleep_forever()
            self._rot_sleep = None
            conn.handle_rotation_timer()
            if conn.has_pending_control():
                self._wake()

    # -- used by the runners -------------------------------------------------------------

    def _preempt(self) -> None:
        """Drop the current connection (a resume on a new one is taking over)."""
        self._end_connection(ConnectionLost("replaced by a resumed connection"))

    def _mark_disconnected(self, state: State) -> None:
        if not self._finished.is_set():
            self._set_state(state)


_CREATE: Final = object()


def _is_clean_close(err: SessionError) -> bool:
    return isinstance(err, SessionClosed) and err.code is CloseCode.NORMAL


def _new_session(role: Role, config: SessionConfig, messages: Any | None, key_id: str) -> Session:
    return Session(role=role, config=config, messages=messages, key_id=key_id, _token=_CREATE)


async def _close_forcefully(transport: Transport) -> None:
    """Like trio.aclose_forcefully, for our Transport protocol."""
    with trio.CancelScope() as scope:
        scope.cancel()
        await transport.aclose()


def _decode_notice_safely(payload: bytes) -> Notice | Exception:
    try:
        return decode_notice(payload)
    except SessionError as exc:
        return exc


def _notice_error(item: Any) -> SessionError:
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


def _session_reset() -> SessionReset:
    return SessionReset(
        "the venue could not resume the session; a new session replaced it "
        "(messages may have been lost: resync and reconcile)"
    )
