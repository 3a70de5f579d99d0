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

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final, Generic, final

import trio

from ._core import SessionCore, SessionStats
from ._durable_session import DurableFacade
from ._errors import (
    CloseCode,
    InDoubt,
    InvalidMessage,
    MessageRejected,
    RejectCode,
    Rejected,
    SessionClosed,
    SessionError,
    SessionReset,
    is_clean_close,
)
from ._flag import Flag
from ._lifecycle import State
from ._queues import notice_error, reject_notice
from ._sending import SendFacade, final_error
from ._typing import M
from .protocol import ConnectionState

__all__ = ["Session", "SessionStats", "State", "new_session"]

logger = logging.getLogger("trio_session.session")

_CREATE: Final = object()


@final
class Session(DurableFacade, SendFacade[M], Generic[M]):
    """One logical session, on either side.  Created by ``ts.connect`` / ``ts.serve``.

    Generic in its message type: ``Session[Order | Fill]`` with
    ``messages=Order | Fill``, ``Session[bytes]`` without, so that a type
    checker rejects a wrong :meth:`send` and knows what :meth:`receive` returns.

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
        #: Durable store: :meth:`receive` commits what it returned before (else only
        #: :meth:`commit` and ``send(commit=True)`` do).
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
    def mode(self) -> str | None:
        """How the current connection protects its frames: ``"mac"`` (authenticated) or
        ``"aead"`` (also encrypted); None while no connection is attached.  Each
        connection negotiates it (``SessionConfig.modes``)."""
        link = self._core.link
        return link.conn.mode if link is not None else None

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

        Args:
            states: one or more :class:`State` values.
        """
        if not states:
            raise ValueError("wait_state() needs at least one State")
        return await self._core.states.wait(*states)

    @property
    def stats(self) -> SessionStats:
        """A snapshot of the session's counters, taken when read."""
        return self._core.stats()

    # -- receiving ---------------------------------------------------------------------

    async def receive(self) -> M:
        """The next message, in order (a ``messages=`` type, or ``bytes``).

        Raises, in stream order: :class:`~trio_session.MessageRejected` when
        the peer refused one of our messages and
        :class:`~trio_session.InvalidMessage` for a peer's message that does
        not match the schema (both per message: the session continues; see
        :meth:`with_rejects` to get rejects as values);
        :class:`~trio_session.SessionReset` once when the session was
        replaced; the session's error once it ended and everything received
        before has been delivered.  With a durable store (and :attr:`auto_commit`)
        it first commits the messages it returned before.
        """
        inbound = self._in
        persist = self._core.persist
        if persist is not None and self.auto_commit:
            self._commit_now(persist)
        waited = False
        while True:
            if inbound.reset_pending:
                inbound.reset_pending = False
                raise _session_reset(*inbound.reset_info)
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
                    return payload  # type: ignore[return-value]  # untyped: M is bytes
                try:
                    return self._codec.decode(payload, seq)  # type: ignore[no-any-return]
                except InvalidMessage as exc:
                    self.reject(seq, str(exc), code=RejectCode.INVALID)
                    raise
            try:
                item = await inbound.get()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise final_error(self._core)  # noqa: B904 - keeps the error's own cause
            waited = True
            self._take_inbound(item)

    async def receive_batch(self, max_messages: int = 1024) -> list[M]:
        """Up to ``max_messages`` messages at once (at least 1; waits for the first).

        Cheaper per message than :meth:`receive` under load.  A reject, a reset
        or a message that fails validation ends the batch early; the next call
        raises it.

        Args:
            max_messages: at most this many messages (at least 1).
        """
        if max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        out: list[Any] = [await self.receive()]
        inbound = self._in
        buf = inbound.buf
        typed = self._codec.typed
        # A durable store records how far messages may be handed out (NO_LIMIT without).
        limit = min(max_messages, 1 + inbound.deliver_limit - inbound.rx_seq)
        while len(out) < limit and not inbound.reset_pending:
            if not buf:
                try:
                    item = inbound.get_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
                self._take_inbound(item)
                buf = inbound.buf  # its own deque, if it was the shared empty one
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
        if len(out) == limit < max_messages and (persist := self._core.persist) is not None:
            persist.bound_hit()  # stopped at the recorded bound: record it further ahead
            self._out.wake()
        return out

    def _take_inbound(self, item: object) -> None:
        consumed = self._in.take(item)
        if consumed:
            self._core.credit(consumed)

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
        (or :meth:`with_rejects` yields a :class:`~trio_session.Rejected`) in
        stream order; the session continues.  Never blocks; notices are
        sequenced and replayed across reconnects like messages.

        Args:
            seq: the data sequence number of the peer's message (:attr:`last_seq`
                after receiving it).
            reason: text for the peer (its first 200 characters).
            code: a :class:`~trio_session.RejectCode`: ``INVALID``,
                ``RATE_LIMITED`` or ``REJECTED``.
            retry_after: seconds after which the peer may try again (with
                ``RATE_LIMITED``).
        """
        if self._core.error is not None or self._core.closing:
            return
        self._out.put_notice(reject_notice(seq, reason, code, retry_after))

    def __aiter__(self) -> Session[M]:
        return self

    async def __anext__(self) -> M:
        try:
            return await self.receive()
        except SessionClosed as exc:
            if is_clean_close(exc):
                raise StopAsyncIteration from None
            raise

    def with_rejects(self) -> AsyncIterator[M | Rejected]:
        """Messages and rejects in one loop: ``async for item in session.with_rejects()``.

        Like ``async for message in session``, except that a refusal of one of
        our messages by the peer is yielded as a :class:`~trio_session.Rejected`
        value (with the refused message's ``ref_seq``) in stream order instead
        of raising :class:`~trio_session.MessageRejected`, so the loop goes on.
        A peer's message that does not match the schema was already rejected
        back to the peer; it is logged and skipped.  Ends after a clean close;
        raises :class:`~trio_session.SessionReset` and the session's error as
        :meth:`receive` does.  Breaking out of the loop is safe (no generator
        is left to finalize).
        """
        return _WithRejects(self)

    # -- closing -------------------------------------------------------------------------

    async def aclose(self, code: CloseCode = CloseCode.NORMAL, reason: str = "") -> None:
        """Close gracefully: flush queued messages, wait (bounded by
        ``close_timeout``) for the peer to acknowledge them, exchange CLOSE, and
        tear everything down.  Idempotent; always closes, even when cancelled.

        Args:
            code: the :class:`~trio_session.CloseCode` sent to the peer: ``NORMAL``
                is a logout; another code ends the session with that reason.
            reason: text sent with the close.
        """
        await close_session(self._core, code, reason)


@final
class _WithRejects(Generic[M]):
    """The iterator of :meth:`Session.with_rejects` (a class, not an async generator:
    nothing to finalize when the caller breaks out)."""

    __slots__ = ("_session",)

    def __init__(self, session: Session[M]) -> None:
        self._session = session

    def __aiter__(self) -> _WithRejects[M]:
        return self

    async def __anext__(self) -> M | Rejected:
        session = self._session
        while True:
            try:
                return await session.receive()
            except MessageRejected as exc:
                return exc.rejected
            except InvalidMessage as exc:
                logger.warning("[session %s] %s (rejected back)", session.session_id, exc)
            except SessionClosed as exc:
                if is_clean_close(exc):
                    raise StopAsyncIteration from None
                raise


async def close_session(core: SessionCore, code: CloseCode, reason: str) -> None:
    """What :meth:`Session.aclose` does (see there)."""
    if core.closing or core.finished.is_set():
        await _wait_finished(core)
        return
    core.closing = True
    with trio.CancelScope(shield=True), trio.move_on_after(core.config.close_timeout):
        if core.states.state is State.LIVE and code is CloseCode.NORMAL:
            await _wait_drained(core)
        link = core.link
        if link is not None and link.conn.state is ConnectionState.OPEN:
            await link.close(code, reason)
            await core.connection_done.wait()
    core.finish(SessionClosed("session closed", code=code, remote=False, reason=reason))
    await _wait_finished(core)


async def _wait_finished(core: SessionCore) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(core.config.close_timeout):
        await core.connection_done.wait()
    await trio.lowlevel.checkpoint()


async def _wait_drained(core: SessionCore) -> None:
    while core.unsent():
        if core.states.state is not State.LIVE or core.link is None:
            return
        core.drained = Flag()
        core.outbound.wake()
        await core.drained.wait()


def new_session(core: SessionCore) -> Session[Any]:
    """The facade of ``core`` (the only way to create a Session)."""
    return Session(core, _token=_CREATE)


def _session_reset(in_doubt: tuple[InDoubt, ...], last_delivered_seq: int) -> SessionReset:
    if in_doubt:
        seqs = describe_seqs([m.seq for m in in_doubt])
        doubt = f"{len(in_doubt)} sent messages unacknowledged (seq {seqs}): reconcile them"
    else:
        doubt = "every sent message was acknowledged"
    return SessionReset(
        "the venue could not resume the session; a new session replaced it: "
        f"{doubt}; last message received: seq {last_delivered_seq}; resync",
        in_doubt=in_doubt,
        last_delivered_seq=last_delivered_seq,
    )


def describe_seqs(seqs: Sequence[int], limit: int = 6) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5,9"`` (at most ``limit`` ranges, then ``,…``)."""
    spans: list[list[int]] = []
    for seq in sorted(seqs):
        if spans and seq == spans[-1][1] + 1:
            spans[-1][1] = seq
        else:
            spans.append([seq, seq])
    text = ",".join(f"{a}-{b}" if a != b else str(a) for a, b in spans[:limit])
    return text + (",…" if len(spans) > limit else "")
