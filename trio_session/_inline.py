"""Writes by the task that has the frame: the send fast path and adaptive batching.

The writer task (``_link_writer.plain_writer``) is the single owner of sequence numbers and
key epochs while it runs.  Waking it for every message costs a scheduler hop
on each side of a round trip, so when it is parked with nothing queued, a
``send()`` seals and writes its own frame instead, holding the same
single-writer token (``Outbound.token``): the writer is never woken while a
sender holds it (a wake-up is deferred to :meth:`Outbound.release`), and a
sender never takes it while the writer runs or anything is queued, so frames
are sealed in call order and written in seal order.

Under load the opposite pays.  A sender writes its own frame only when the
peer was heard from since the last data frame went out (request/response: a
round trip) or that frame left :data:`IDLE_GAP` ago (a sparse stream);
back-to-back sends queue instead, and the writer, once a backlog has formed
behind one of its writes, lets the producers add to it while each scheduling
pass does (:func:`coalesce`), so per-message ``send()`` calls share frames
without an idle link paying for it.

Cancellation: a message is accepted once it is sealed (it is in the replay
buffer and ``send_count`` counts it), so ``send()`` never raises Cancelled
after that.  A cancellation delivered during the inline write lands where
trio-websocket yields before it writes a byte (its send lock, the socket's
first try), so the frame goes to the writer (:attr:`Link.unwritten`), which
writes it before anything sealed later, and ``send()`` returns; the caller's
cancel scope, still cancelled, raises at its next checkpoint.  (Only a write
that the socket took in part, then blocked, could have left half a frame:
the peer then fails the connection on the garbled frame and the resume
retransmits it, exactly once.)  A transport error ends the link as the
writer's would.  No cancel scope is opened per write (they are the costliest
part of a send).  A durable store never takes this path: its frames must be
stored before they are written (``_durable_link.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import trio

from ._errors import SessionError
from .protocol import ConnectionState

if TYPE_CHECKING:
    from ._core import SessionCore
    from ._link import Link
    from ._queues import Outbound

__all__ = [
    "COALESCE_MAX",
    "GATHER_WAIT",
    "IDLE_GAP",
    "POLL_PASSES",
    "coalesce",
    "inline_link",
    "seal_inline",
    "write_inline",
]

#: A sender that comes back this long after the last data frame was written
#: writes its own frame even when nothing came in meanwhile (a sparse stream).
IDLE_GAP: Final = 0.001

#: The writer stops waiting for a growing backlog at this many messages (the
#: batch still grows while the write itself yields).
COALESCE_MAX: Final = 64
#: Scheduling passes the writer watches a backlog grow before it counts as a stream.
POLL_PASSES: Final = 4
#: How long the writer waits at most for a streaming backlog to reach COALESCE_MAX.
GATHER_WAIT: Final = 0.0005


def inline_link(core: SessionCore) -> Link | None:
    """The link a ``send()`` may write its own frame on now, or None (queue it)."""
    link = core.link
    if link is None or core.persist is not None:
        return None
    out = core.outbound
    # Cheapest and most often decisive first: a streaming sender stops here.
    if not out.writer_idle() or out.depth or link.error is not None:
        return None
    if not (link.heard or trio.current_time() - link.last_write >= IDLE_GAP):
        return None
    conn = link.conn
    if (
        conn.state is not ConnectionState.OPEN
        or conn.send_window() <= 0
        or conn.has_pending_control()
    ):
        return None
    return link


def seal_inline(link: Link, item: bytes | list[bytes], count: int, nbytes: int) -> bytes | None:
    """Seal the sender's item into one DATA frame now, or None when it does not fit
    the window or the batch and replay byte budgets (then it queues).  Call only
    when :func:`inline_link` found ``link``, with no checkpoint since."""
    conn, core = link.conn, link.core
    if count > conn.send_window() or nbytes > min(
        core.outbound.max_batch_bytes, conn.send_bytes_budget()
    ):
        return None
    core.counters.sent += count  # in the replay buffer from here: sent
    core.stalled_since = None
    core.outbound.lossless_taken += count  # numbered as if the queue had taken it
    frame = conn.send_data([item] if isinstance(item, bytes) else item)
    core.sync_replay()
    return frame


async def write_inline(link: Link, out: Outbound, frame: bytes) -> None:
    """Write ``frame`` (just sealed by :func:`seal_inline`) from the sending task,
    holding the single-writer token."""
    out.token = True
    try:
        link.pull_rotation_deadline()  # a ratchet step may have ridden on this frame
        try:
            await link.timed_write(link.sender(), frame)
        except SessionError as exc:
            link.end(exc)  # the frame is in the replay buffer: sent after the resume
        except trio.Cancelled:
            # Sealed, so accepted: the writer writes it next.  The caller's
            # cancellation takes effect at its next checkpoint (module docstring).
            link.unwritten = frame
            out.wake()
    finally:
        out.release()


async def coalesce(out: Outbound, window: int) -> None:
    """A backlog formed while the writer wrote: while the producers keep adding to
    it, let them, so that it leaves as one frame.

    The first :data:`POLL_PASSES` scheduling passes are watched one by one (a
    short burst ends there, at no cost in latency); a backlog still growing
    after that is a stream, and the writer parks until it holds
    :data:`COALESCE_MAX` messages (the sender that gets it there wakes it) or
    :data:`GATHER_WAIT` has passed.  A control frame wakes it at once.  Never
    beyond what one frame can take: the ``window``, the queue's capacity.
    """
    limit = min(COALESCE_MAX, window, out.capacity)
    depth = out.depth
    idle = 0
    for _ in range(POLL_PASSES):
        if not 0 < depth < limit:
            return
        await trio.lowlevel.cancel_shielded_checkpoint()
        grown = out.depth
        # Trio runs each batch in either order, so a producer that adds one message
        # per pass can skip one of our looks, never two in a row.
        idle = idle + 1 if grown <= depth else 0
        if idle == 2:
            return
        depth = grown
    if 0 < depth < limit:
        out.gather = limit
        try:
            with trio.move_on_after(GATHER_WAIT):
                await out.park(wait_for_data=True)
        finally:
            out.gather = 0
