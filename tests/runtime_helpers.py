"""Helpers for runtime tests: a venue on loopback, task-tree and fd checks,
and a session pair over in-memory transports for mock-clock tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio

import trio_session as ts
from trio_session._session import Session, _new_session
from trio_session._transport import MemoryTransport, memory_transport_pair
from trio_session.protocol import ClientConnection, Role, VenueConnection

from .protocol.helpers import OTHER, PARTICIPANT, VENUE

__all__ = [
    "OTHER",
    "PARTICIPANT",
    "VENUE",
    "echo_handler",
    "memory_pair",
    "open_fds",
    "registry",
    "task_names",
    "venue",
]


def registry() -> ts.KeyRegistry:
    reg = ts.KeyRegistry()
    reg.add(PARTICIPANT.key_id, PARTICIPANT.public_key)
    return reg


async def echo_handler(session: ts.Session) -> None:
    async for message in session:
        await session.send(message)


@asynccontextmanager
async def venue(
    handler: Callable[[ts.Session], Awaitable[None]] = echo_handler,
    reg: ts.KeyRegistry | None = None,
    **kwargs: Any,
) -> AsyncIterator[ts.VenueServer]:
    """A venue on 127.0.0.1 for the duration of the block."""
    async with trio.open_nursery() as nursery:
        server: ts.VenueServer = await nursery.start(
            partial(ts.serve, handler, VENUE, reg or registry(), "127.0.0.1", 0, **kwargs)
        )
        yield server
        nursery.cancel_scope.cancel()


def url(server: ts.VenueServer, scheme: str = "ws") -> str:
    return f"{scheme}://127.0.0.1:{server.port}/"


def task_names() -> list[str]:
    """Names of every task alive in this trio run (except the system ones)."""
    names: list[str] = []

    def walk(task: trio.lowlevel.Task) -> None:
        names.append(task.name)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    walk(root)
    return [n for n in names if not n.startswith(("<init>", "<TrioToken", "trio."))]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def memory_pair(
    nursery: trio.Nursery,
    config_p: ts.SessionConfig,
    config_v: ts.SessionConfig | None = None,
) -> tuple[Session, Session, MemoryTransport, MemoryTransport]:
    """Handshake over an in-memory transport pair and run both sessions in ``nursery``.

    Deterministic under MockClock: no sockets, no real time.
    """
    cfg_v = config_v or config_p
    tp, tv = memory_transport_pair(capacity=1024)
    p_conn = ClientConnection(PARTICIPANT, VENUE.public_key, config_p, clock=trio.current_time)
    v_conn = VenueConnection(VENUE, cfg_v, clock=trio.current_time)
    for frame in p_conn.data_to_send():
        await tp.send(frame)
    v_conn.receive_data(await tv.receive())
    v_conn.accept(PARTICIPANT.public_key)
    for frame in v_conn.data_to_send():
        await tv.send(frame)
    p_conn.receive_data(await tp.receive())
    for frame in p_conn.data_to_send():
        await tp.send(frame)
    v_conn.receive_data(await tv.receive())
    assert p_conn.session is not None and v_conn.session is not None
    ps = _new_session(Role.PARTICIPANT, config_p, None, PARTICIPANT.key_id)
    vs = _new_session(Role.VENUE, cfg_v, None, PARTICIPANT.key_id)
    ps._bind(p_conn.session)
    vs._bind(v_conn.session)

    async def run(s: Session, t: MemoryTransport, c: ClientConnection | VenueConnection) -> None:
        err = await s._run_connection(t, c)
        s._finish(err)

    nursery.start_soon(run, ps, tp, p_conn)
    nursery.start_soon(run, vs, tv, v_conn)
    return ps, vs, tp, tv
