"""A link's writer with a durable store: nothing is on the wire that a crash could forget.

The plain writer (``_link_writer.plain_writer``) writes each frame as soon as it is built.
With a durable store (``_persist.py``) the writer builds what it will write
first (control frames, then data frames up to :data:`DURABLE_BATCH_BYTES`),
has everything those frames depend on stored in one group commit (new DATA
frames, a new session, a new resume secret generation, the application's
commits), and only then writes them.  Kept apart so that the plain writer, the
hot path without a store, pays nothing for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from .protocol import ConnectionState

if TYPE_CHECKING:
    from ._link import Link

__all__ = ["DURABLE_BATCH_BYTES", "commit_pending", "durable_writer", "stable_advanced"]

#: The writer stores up to this many bytes of frames in one group commit.
DURABLE_BATCH_BYTES: Final = 256 * 1024


async def durable_writer(link: Link) -> None:
    """The writer task of ``link`` with a durable store (see the module docstring)."""
    conn, core = link.conn, link.core
    out, persist = core.outbound, core.persist
    assert persist is not None
    send = link.sender()
    while True:
        out.wake_pending = False
        link.pull_rotation_deadline()
        if persist.commits_owed() and (
            persist.commits_due() or (not out.has_data() and conn.has_pending_control())
        ):
            await persist.runtime.sync()  # so that the ACK going out acknowledges them
        frames = conn.data_to_send()
        if frames:  # a heartbeat or ack sealed: the timer's next deadline moved
            link.retime_heartbeat()
        is_open = conn.state is ConnectionState.OPEN
        if is_open:
            _gather_data(link, frames)
        if frames and persist.write_ahead_owed():
            await persist.store_ahead()
        link.owed = frames
        while frames:
            await send(frames[0])
            del frames[0]
        if not is_open:
            if conn.state in (ConnectionState.CLOSING, ConnectionState.ERROR) and (
                not conn.has_pending_control()
            ):
                link.close_sent.set()
            await out.park(wait_for_data=False)
        elif not frames and not out.wake_pending:
            window = conn.send_window()
            await out.park(wait_for_data=window > 0 and not out.latest and not out.lossy)


def _gather_data(link: Link, frames: list[bytes]) -> None:
    """Append data frames while credit, data and the batch size allow."""
    size = 0
    while size < DURABLE_BATCH_BYTES:
        data = link.next_data_frame(link.conn.send_window())
        if data is None:
            return
        frames.append(data)
        size += len(data)


def commit_pending(link: Link) -> None:
    """The application committed messages not yet stored: have the delayed ack
    (which stores them first) come due."""
    if link.conn.ack_soon():
        link.pull_heartbeat_deadline()


def stable_advanced(link: Link, stable: int) -> None:
    """The application's commits up to ``stable`` are stored: acknowledge them now,
    or with the delayed ack."""
    if link.conn.messages_committed(stable):
        link.core.outbound.wake()
    link.pull_heartbeat_deadline()
