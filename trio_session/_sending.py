"""The sending half of the public session facade: the three policies, the fast path.

A mixin of :class:`~trio_session.Session` (see there for the policies).  A
lossless ``send()`` either writes its own frame (``_inline.py``: the writer is
parked, nothing is queued, and the sender is not streaming back to back) or
puts the message on the outbound queue without blocking, waking a parked
writer *before* its one checkpoint; it waits only while the queue is full.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic

import trio

from ._codec import Codec
from ._config import SessionConfig
from ._core import SessionCore
from ._errors import CloseCode, ConnectionLost, LocalProtocolError, SessionClosed, SessionError
from ._inline import inline_link, seal_inline, write_inline
from ._lifecycle import State
from ._queues import Outbound
from ._typing import M

__all__ = ["SendFacade", "error_for_user", "final_error"]


class SendFacade(Generic[M]):
    """The sending part of the public session facade (see the module docstring)."""

    _core: SessionCore
    _codec: Codec
    _out: Outbound
    _send_count: int
    config: SessionConfig
    #: With a durable store (``DurableFacade``): returns once the item is stored.
    _enqueue_durable: Callable[[bytes | list[bytes], int, int, bool], Awaitable[None]]

    def _check_can_send(self, payload: bytes) -> None:
        core = self._core
        if core.error is not None:
            raise error_for_user(self._core)
        if core.closing:
            raise SessionClosed("session is closing", code=CloseCode.NORMAL)
        if len(payload) > self.config.max_message_size:
            raise LocalProtocolError(
                f"message of {len(payload)} bytes exceeds max_message_size "
                f"{self.config.max_message_size}"
            )

    async def send(self, message: M, *, fail_fast: bool = False, commit: bool = False) -> None:
        """Send one message losslessly (``block`` policy).

        ``message`` is one of the declared ``messages=`` types (``bytes``
        without it).  Waits while the outbound queue is full; during an outage
        the message waits and is delivered after the session resumes, in order.
        With ``fail_fast=True`` it raises :class:`~trio_session.ConnectionLost`
        at once instead while the session is not LIVE (from the moment a lost
        connection is detected): for orders priced off data that is now stale.

        Args:
            message: one message of the declared ``messages=`` type (``bytes``
                without it).
            fail_fast: raise :class:`~trio_session.ConnectionLost` at once when
                the session is not LIVE, instead of queueing the message for
                after the resume.
            commit: with a durable store (which returns once the message is
                stored), commit what :meth:`receive` returned so far in the same
                write: after a crash, both or neither (docs/howto/durable.md).

        Raises the session's error once it ended, :class:`TypeError` for a
        message of the wrong type, and :class:`~trio_session.LocalProtocolError`
        for one over ``max_message_size``.
        """
        payload = self._codec.encode(message)
        core, n = self._core, len(payload)
        if core.error is not None or core.closing or n > self.config.max_message_size:
            self._check_can_send(payload)  # raises the error that applies
        await self._enqueue(payload, 1, n, fail_fast, commit)

    async def send_many(
        self, messages: Sequence[M], *, fail_fast: bool = False, commit: bool = False
    ) -> None:
        """Send several messages losslessly as one queue item (cheaper per message).

        Same order, guarantees and errors as :meth:`send`; all or none are queued.

        Args:
            messages: a sequence of messages of the declared type.
            fail_fast: as for :meth:`send`.
            commit: as for :meth:`send`.
        """
        payloads = [self._codec.encode(m) for m in messages]
        if not payloads:
            return
        for p in payloads:
            self._check_can_send(p)
        await self._enqueue(payloads, len(payloads), sum(map(len, payloads)), fail_fast, commit)

    async def _enqueue(
        self, item: bytes | list[bytes], count: int, nbytes: int, fail_fast: bool, commit: bool
    ) -> None:
        """The lossless path shared by send() and send_many()."""
        core, out = self._core, self._out
        if fail_fast and core.states.state is not State.LIVE:
            raise ConnectionLost(f"session is {core.states.state.value}, not sending (fail_fast)")
        if core.persist is not None:  # durable store: stored before we return
            try:
                await self._enqueue_durable(item, count, nbytes, commit)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise final_error(core)  # noqa: B904 - keeps the error's own cause
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        # The fast path (_inline.py); a streaming sender finds the writer busy.
        if out.writer_idle() and (link := inline_link(core)) is not None:
            frame = seal_inline(link, item, count, nbytes)
            if frame is not None:
                self._send_count += count
                await write_inline(link, out, frame)
                return
        # What MemorySendChannel.send does, with the writer woken *before* we
        # yield: it then runs in the same scheduler batch as our caller instead
        # of the next one (one pass less per message on the latency path).
        try:
            if out.put_nowait(item, count, nbytes):
                self._send_count += count
                await trio.lowlevel.cancel_shielded_checkpoint()
            else:  # full: wait like MemorySendChannel.send
                await out.put(item, count, nbytes)
                self._send_count += count
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise final_error(core)  # noqa: B904 - keeps the error's own cause

    def send_latest(self, key: Hashable, message: M) -> None:
        """Queue ``message`` as the latest value for ``key`` (``conflate`` policy).

        Never blocks: a message still queued under the same key is replaced
        (counted in ``stats.conflated``).

        Args:
            key: any hashable, e.g. the instrument of a quote.
            message: the newest value for ``key``.
        """
        payload = self._codec.encode(message)
        self._check_can_send(payload)
        self._out.put_latest(key, payload)

    def send_lossy(self, message: M) -> None:
        """Queue ``message``, dropping the oldest queued one when the queue is full
        (``drop_oldest`` policy; capacity ``outbound_capacity``, drops counted in
        ``stats.dropped``).  Never blocks."""
        payload = self._codec.encode(message)
        self._check_can_send(payload)
        self._out.put_lossy(payload)


def final_error(core: SessionCore) -> SessionError:
    """The session's error, to raise from an ``except`` block.

    Not ``raise ... from None``: that would erase the error's own cause (e.g.
    why the supervisor gave up); ``__suppress_context__`` only hides the
    channel exception being handled.
    """
    err = error_for_user(core)
    err.__suppress_context__ = True
    return err


def error_for_user(core: SessionCore) -> SessionError:
    err = core.error
    if err is None:
        return SessionClosed("session is closed", code=CloseCode.NORMAL)
    return err
