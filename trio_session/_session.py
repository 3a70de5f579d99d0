"""The public face of one logical session: send, receive, observe, close.

A :class:`Session` is what the application holds, on either side.  It only
moves messages between the application and the session's queues
(``_queues.py``) and reads the session's state; the connections come and go
underneath, run by a :class:`~trio_session._link.Link` that the participant's
supervisor or the venue attaches through their
:class:`~trio_session._control.SessionControl`.  That is why a resume is
invisible here except as a STALE spell, and why everything sent during an
outage is delivered after it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable, Sequence
from typing import Any, Final, final

import trio

from ._core import SessionCore, SessionStats
from ._errors import (
    CloseCode,
    ConnectionLost,
    InvalidMessage,
    LocalProtocolError,
    RejectCode,
    SessionClosed,
    SessionError,
    SessionReset,
    is_clean_close,
)
from ._lifecycle import State
from ._persist import SessionPersistence
from ._queues import notice_error, reject_notice
from .protocol import ConnectionState

__all__ = ["Session", "SessionStats", "State", "new_session"]

_CREATE: Final = object()


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

    def __init__(self, core: SessionCore, *, _token: object = None) -> None:
        if _token is not _CREATE:
            raise TypeError("Session objects are created by trio_session.connect() or serve()")
        self._core = core
        self.role = core.role
        self.config = core.config
        self.key_id = core.key_id
        self._codec = core.codec
        self._out = core.outbound
        self._in = core.inbound
        self._last_seq = -1
        self._send_count = 0
        #: With a durable store: each :meth:`receive` first commits the messages
        #: returned before it.  Set False to commit only with :meth:`commit`.
        self.auto_commit = True

    # -- identity and observation --------------------------------------------------

    def __repr__(self) -> str:
        state = self._core.states.state
        return f"<Session {self.session_id or '-'} {self.role.value} {state.value}>"

    @property
    def session_id(self) -> str | None:
        """Hex session id (None before the first handshake)."""
        record = self._core.record
        return record.session_id.hex() if record else None

    @property
    def state(self) -> State:
        return self._core.states.state

    @property
    def error(self) -> SessionError | None:
        """Why the session ended (None while it runs, or after a clean close)."""
        err = self._core.error
        if err is not None and is_clean_close(err):
            return None
        return err

    def transitions(self) -> AsyncIterator[State]:
        """Every state the session enters from now on, in order, ending with CLOSED.

        Edge-triggered, unlike :meth:`wait_state`: a short LIVE spell between two
        outages is never missed (a consumer more than 1,024 transitions behind
        skips the oldest).  Use it to drive resync logic or metrics::

            async for state in session.transitions():
                if state is ts.State.STALE:
                    mark_market_data_stale()
        """
        return self._core.states.transitions()

    async def wait_state(self, *states: State) -> State:
        """Wait until the session is in one of ``states``; returns that state.

        Returns at once when it already is.  CLOSED always ends the wait (the
        session cannot change any more), so check the return value.
        """
        if not states:
            raise ValueError("wait_state() needs at least one State")
        return await self._core.states.wait(*states)

    @property
    def stats(self) -> SessionStats:
        return self._core.stats()

    # -- sending ---------------------------------------------------------------------

    def _check_can_send(self, payload: bytes) -> None:
        core = self._core
        if core.error is not None:
            raise self._error_for_user()
        if core.closing:
            raise SessionClosed("session is closing", code=CloseCode.NORMAL)
        if len(payload) > self.config.max_message_size:
            raise LocalProtocolError(
                f"message of {len(payload)} bytes exceeds max_message_size "
                f"{self.config.max_message_size}"
            )

    async def send(self, message: Any, *, fail_fast: bool = False, commit: bool = False) -> None:
        """Send one message losslessly (``block`` policy).

        Waits while the outbound queue is full; during an outage the message
        waits and is delivered after the session resumes.  With
        ``fail_fast=True`` it raises :class:`~trio_session.ConnectionLost`
        instead of queueing while the session is not LIVE.

        With a durable store it returns once the message is stored: a crash of
        either side cannot lose it.  ``commit=True`` also commits every message
        :meth:`receive` returned so far, in the same write: after a crash either
        both happened or neither (an answer is never sent twice, nor its
        request forgotten).  Without a durable store ``commit`` changes nothing.
        """
        payload = self._codec.encode(message)
        self._check_can_send(payload)
        await self._enqueue(payload, 1, fail_fast, commit)

    async def send_many(
        self, messages: Sequence[Any], *, fail_fast: bool = False, commit: bool = False
    ) -> None:
        """Send several messages losslessly as one queue item (cheaper per message)."""
        payloads = [self._codec.encode(m) for m in messages]
        if not payloads:
            return
        for p in payloads:
            self._check_can_send(p)
        await self._enqueue(payloads, len(payloads), fail_fast, commit)

    async def _enqueue(
        self, item: bytes | list[bytes], count: int, fail_fast: bool, commit: bool
    ) -> None:
        """The lossless path shared by send() and send_many()."""
        if fail_fast and self._core.states.state is not State.LIVE:
            state = self._core.states.state.value
            raise ConnectionLost(f"session is {state}, not sending (fail_fast)")
        persist = self._core.persist
        if persist is not None:  # durable store: stored before we return
            if commit:
                persist.commit(self._in.rx_seq, self._in.consume_target)
            try:
                await persist.enqueue(item, count)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise self._final_error()  # noqa: B904 - keeps the error's own cause
            return
        # What MemorySendChannel.send does, with the writer woken *before* we
        # yield: it then runs in the same scheduler batch as our caller instead
        # of the next one (one pass less per message on the latency path).
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            if self._out.put_nowait(item, count):
                self._send_count += count
                await trio.lowlevel.cancel_shielded_checkpoint()
            else:  # full: wait like MemorySendChannel.send
                await self._out.put(item, count)
                self._send_count += count
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._final_error()  # noqa: B904 - keeps the error's own cause

    def send_latest(self, key: Hashable, message: Any) -> None:
        """Queue ``message`` as the latest value for ``key`` (``conflate`` policy).

        Never blocks: a message still queued under the same key is replaced
        (counted in ``stats.conflated``).
        """
        payload = self._codec.encode(message)
        self._check_can_send(payload)
        self._out.put_latest(key, payload)

    def send_lossy(self, message: Any) -> None:
        """Queue ``message``, dropping the oldest queued one when the queue is full
        (``drop_oldest`` policy; capacity ``outbound_capacity``).  Never blocks."""
        payload = self._codec.encode(message)
        self._check_can_send(payload)
        self._out.put_lossy(payload)

    # -- receiving ---------------------------------------------------------------------

    async def receive(self) -> Any:
        """The next message, in order.  Raises the session's error once it ended
        and everything received before has been delivered.

        With a durable store (and :attr:`auto_commit`), calling it commits the
        messages it returned before: the peer may then forget them.
        """
        inbound = self._in
        persist = self._core.persist
        if persist is not None and self.auto_commit:
            self._commit_now(persist)
        waited = False
        while True:
            if inbound.reset_pending:
                inbound.reset_pending = False
                raise _session_reset()
            buf = inbound.buf
            if buf:
                seq = inbound.rx_seq
                if seq >= inbound.deliver_limit and persist is not None:
                    await persist.wait_deliverable(seq)
                    waited = True
                    continue
                payload = buf.popleft()
                inbound.rx_seq = seq + 1
                if not waited:  # a receive() is always a checkpoint, once
                    await trio.lowlevel.checkpoint()
                if type(payload) is not bytes:
                    raise notice_error(payload)
                self._last_seq = seq
                if not self._codec.typed:
                    return payload
                try:
                    return self._codec.decode(payload, seq)
                except InvalidMessage as exc:
                    self.reject(seq, str(exc), code=RejectCode.INVALID)
                    raise
            try:
                item = await inbound.get()
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
        inbound = self._in
        buf = inbound.buf
        typed = self._codec.typed
        while len(out) < max_messages and not inbound.reset_pending:
            if inbound.rx_seq >= inbound.deliver_limit:
                persist = self._core.persist
                if persist is not None:  # the store has not recorded these may be delivered
                    persist.bound_hit()
                    self._out.wake()
                break
            if not buf:
                try:
                    item = inbound.get_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
                self._take_inbound(item)
                continue
            head = buf[0]
            if type(head) is not bytes:
                break  # a notice: raised by the next receive()
            if typed:
                try:
                    msg = self._codec.decode(head, inbound.rx_seq)
                except InvalidMessage:
                    break
            else:
                msg = head
            buf.popleft()
            self._last_seq = inbound.rx_seq
            inbound.rx_seq += 1
            out.append(msg)
        return out

    def _take_inbound(self, item: Any) -> None:
        consumed = self._in.take(item)
        if consumed:
            self._core.credit(consumed)

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
                    link.commit_pending()

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
        if self._core.error is not None or self._core.closing:
            return
        self._out.put_notice(reject_notice(seq, reason, code, retry_after))

    def __aiter__(self) -> Session:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except SessionClosed as exc:
            if is_clean_close(exc):
                raise StopAsyncIteration from None
            raise

    # -- closing -------------------------------------------------------------------------

    async def aclose(self, code: CloseCode = CloseCode.NORMAL, reason: str = "") -> None:
        """Close gracefully: flush queued messages, wait (bounded by
        ``close_timeout``) for the peer to acknowledge them, exchange CLOSE, and
        tear everything down.  Idempotent; always closes, even when cancelled."""
        core = self._core
        if core.closing or core.finished.is_set():
            await self._wait_finished()
            return
        core.closing = True
        with trio.CancelScope(shield=True), trio.move_on_after(self.config.close_timeout):
            if core.states.state is State.LIVE and code is CloseCode.NORMAL:
                await self._wait_drained()
            link = core.link
            if link is not None and link.conn.state is ConnectionState.OPEN:
                await link.close(code, reason)
                await core.connection_done.wait()
        core.finish(SessionClosed("session closed", code=code, remote=False, reason=reason))
        await self._wait_finished()

    async def _wait_finished(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(self.config.close_timeout):
            await self._core.connection_done.wait()
        await trio.lowlevel.checkpoint()

    async def _wait_drained(self) -> None:
        core = self._core
        while core.unsent():
            if core.states.state is not State.LIVE or core.link is None:
                return
            core.drained = trio.Event()
            core.outbound.wake()
            await core.drained.wait()

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
        err = self._core.error
        if err is None:
            return SessionClosed("session is closed", code=CloseCode.NORMAL)
        return err


def new_session(core: SessionCore) -> Session:
    """The facade of ``core`` (the only way to create a Session)."""
    return Session(core, _token=_CREATE)


def _session_reset() -> SessionReset:
    return SessionReset(
        "the venue could not resume the session; a new session replaced it "
        "(messages may have been lost: resync and reconcile)"
    )
