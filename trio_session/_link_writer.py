"""A link's writer task without a durable store: control frames first, then data.

The single owner of sequence numbers and key epochs while it runs (a sender on
the fast path holds the same token while the writer is parked: ``_inline.py``).
Each turn writes every control frame the connection owes, then, if the
connection is open and credit allows, one data frame (notices at the head of
the stream in their own frame, else a batch of queued messages); after a data
frame, a backlog that formed during the write may grow a little more
(:func:`~trio_session._inline.coalesce`).  With nothing to do it parks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._inline import coalesce
from ._link_close import task_failed
from .protocol import ConnectionState

if TYPE_CHECKING:
    from ._link import Link

__all__ = ["plain_writer"]


async def plain_writer(link: Link) -> None:
    """The writer task of ``link`` without a durable store (see the module docstring)."""
    try:
        conn, out = link.conn, link.core.outbound
        send = link.sender()
        while True:
            out.wake_pending = False
            link.pull_rotation_deadline()
            owed = link.owed = conn.data_to_send()
            if owed:  # a heartbeat or ack sealed: the timer's next deadline moved
                link.retime_heartbeat()
            if link.unwritten is not None:  # sealed before all of those
                owed.insert(0, link.unwritten)
                link.unwritten = None
            while owed:
                await send(owed[0])
                del owed[0]
            if conn.state is not ConnectionState.OPEN:
                if conn.state in (ConnectionState.CLOSING, ConnectionState.ERROR) and (
                    not conn.has_pending_control()
                ):
                    link.close_sent.set()
                await out.park(wait_for_data=False)
                continue
            window = conn.send_window()
            data = link.next_data_frame(window)
            if data is not None:
                await link.timed_write(send, data)
                await coalesce(out, conn.send_window())
                continue
            if out.wake_pending:
                continue
            await out.park(wait_for_data=window > 0 and not out.latest and not out.lossy)
    except Exception as exc:  # Cancelled passes: teardown is the nursery's
        task_failed(link, exc, "plain_writer")
