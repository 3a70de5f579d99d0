"""The link's two timer tasks: heartbeat and key rotation.

Each sleeps once, on a deadline that other tasks move when a frame changes what
is due (``Link.retime_heartbeat``, ``Link.pull_rotation_deadline``): an idle
session's timers wake only when something is due, and no cancel scope is opened
per write.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import trio
from trio.lowlevel import wait_task_rescheduled

from ._core import SessionCore
from ._errors import SlowConsumer
from ._lifecycle import State
from ._link_close import task_failed
from .protocol import Role

if TYPE_CHECKING:
    from ._link import Link

__all__ = ["MIN_TIMER_STEP", "heartbeat_task", "rotation_task", "slow_consumer"]

#: Timer tasks never re-check more often than this when a deadline is already
#: due but waits on another task (e.g. the writer is blocked on a full socket).
MIN_TIMER_STEP: Final = 0.005


async def heartbeat_task(link: Link) -> None:
    """The heartbeat task: beats, probes, STALE and the heartbeat timeout; on the
    venue also the slow-consumer deadlines (the write in progress, queued data)."""
    try:
        conn, core = link.conn, link.core
        venue = core.role is Role.VENUE
        slow_limit = core.config.slow_consumer_timeout
        while True:
            now = link.now()
            # An adjustable sleep: see timer_due and the module docstring.
            with trio.move_on_at(max(link.timer_due(), now + MIN_TIMER_STEP)) as sleep:
                link.hb_sleep = sleep
                await wait_task_rescheduled(_abort_sleep)
            link.hb_sleep = None
            if conn.handle_heartbeat_timer() and core.states.state is State.LIVE:
                # Silent for stale_after: STALE now; the connection is kept (and
                # probed) until heartbeat_timeout, so a link that recovers is LIVE
                # again at its next frame, without a reconnect.
                core.set_state(State.STALE, f"no frame from the peer for {conn.stale_after}s")
            if conn.has_pending_control():
                core.outbound.wake()
            if not venue:
                continue
            now = link.now()
            write = link.send_deadline
            if write is not None and now >= write:
                raise slow_consumer(core, f"participant did not read for {slow_limit}s")
            stalled = core.stalled_since
            if stalled is not None and now - stalled >= slow_limit:
                raise slow_consumer(
                    link.core,
                    f"participant consumed nothing for {slow_limit}s while messages waited",
                )
    except Exception as exc:  # Cancelled passes: teardown is the nursery's
        task_failed(link, exc, "_heartbeat")


async def rotation_task(link: Link) -> None:
    """The key-rotation task: ratchet steps and DH rekeys when they are due."""
    try:
        conn, log = link.conn, link.core.log
        rekeys = conn.stats.rekeys
        while True:
            now = link.now()
            # Adjustable: once a due ratchet step rides on an outgoing frame, the
            # writer pulls this deadline in to the new epoch's schedule.
            with trio.move_on_at(max(conn.rotation_deadline(), now + MIN_TIMER_STEP)) as sleep:
                link.rot_sleep = sleep
                await wait_task_rescheduled(_abort_sleep)
            link.rot_sleep = None
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
                link.core.outbound.wake()
    except Exception as exc:  # Cancelled passes: teardown is the nursery's
        task_failed(link, exc, "_rotation")


def _abort_sleep(_: object) -> trio.lowlevel.Abort:
    """A timer task's sleep ends only by its scope's deadline (``trio.sleep_forever``
    without its lambda and coroutine, kept alive per sleeping task)."""
    return trio.lowlevel.Abort.SUCCEEDED


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
