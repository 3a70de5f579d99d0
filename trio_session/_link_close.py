"""Ending a link: what the session keeps of the connection, telling the peer why,
and closing the transport within a bound.

Runs once a link's four tasks have ended (:meth:`Link.run`), shielded where the
close must go out whatever happens to the caller.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from ._errors import (
    Category,
    CloseCode,
    ConnectionLost,
    SessionClosed,
    SessionError,
    is_clean_close,
)
from ._transport import Transport, observable_close
from .protocol import CloseReceived, Role

if TYPE_CHECKING:
    from ._core import SessionCore
    from ._link import Link

__all__ = [
    "answer_close",
    "close_forcefully",
    "close_transport",
    "guard",
    "task_failed",
    "tear_down",
]


async def guard(link: Link, task: Callable[[], Awaitable[None]]) -> None:
    """Run one of ``link``'s tasks, turning its failure into the connection's one
    typed error (the durable writer; the other tasks catch their own failure with
    :func:`task_failed`, which saves a coroutine per task and session)."""
    try:
        await task()
    except Exception as exc:
        name = getattr(task, "__name__", None) or getattr(task, "func", task).__name__
        task_failed(link, exc, name)


def task_failed(link: Link, exc: Exception, name: str) -> None:
    """The ``name`` task of ``link`` failed with ``exc``: end the connection with
    it, or with ``INTERNAL_ERROR`` (logged, ``exc`` as the cause) when it is not a
    typed error."""
    if isinstance(exc, SessionError):
        link.end(exc)
        return
    link.core.log.exception("internal error in the %s task", name, exc_info=exc)
    err = SessionError(f"internal error: {type(exc).__name__}", code=CloseCode.INTERNAL_ERROR)
    err.__cause__ = exc
    link.end(err)


async def answer_close(link: Link, ev: CloseReceived) -> None:
    """The peer sent CLOSE: answer it (bounded by ``close_timeout``), then end."""
    err = ev.to_error()
    if link.error is None:
        link.error = err
        if not is_clean_close(err):
            link.mark_lost(f"{type(err).__name__}: {err}")
    link.conn.close(CloseCode.NORMAL if ev.code is CloseCode.NORMAL else ev.code)
    link.core.outbound.wake()
    with trio.move_on_after(link.core.config.close_timeout):
        await link.close_sent.wait()
    link.end(err)


async def tear_down(link: Link) -> None:
    """After ``link``'s tasks ended: detach it, keep its stall and counters, close
    the transport, and release everyone waiting on this connection."""
    core = link.core
    if core.link is link:
        core.link = None
    _keep_stall(link)
    _absorb_stats(link)
    await close_transport(link, core.config.close_timeout)
    core.drained.set()
    link.close_sent.set()
    core.connection_done.set()


def _keep_stall(link: Link) -> None:
    """A write blocked when the connection ended is a stall that goes on while
    the session is detached (the participant still consumes nothing)."""
    started, core = link.send_started, link.core
    if started is not None and (core.stalled_since is None or started < core.stalled_since):
        core.stalled_since = started


def _absorb_stats(link: Link) -> None:
    s, c = link.conn.stats, link.core.counters
    c.bytes_sent += s.bytes_sent
    c.bytes_received += s.bytes_received
    c.rekeys += s.rekeys
    c.ratchets += s.ratchets
    c.retransmitted += s.retransmitted
    c.heartbeats_sent += s.heartbeats_sent
    if s.last_rtt is not None:
        c.rtt = s.last_rtt


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
        if link.unwritten is not None:  # a sender's, cancelled: sealed before all others
            frames.insert(0, link.unwritten)
        with trio.move_on_after(min(0.5, close_timeout)):
            for frame in frames:
                await link.transport.send(frame)
    except SessionError:
        pass


async def close_forcefully(transport: Transport) -> None:
    """Like :func:`trio.aclose_forcefully`, for our Transport protocol."""
    with trio.CancelScope() as scope:
        scope.cancel()
        await transport.aclose()
