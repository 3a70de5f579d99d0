"""Helpers for runtime tests: a venue on loopback, task-tree and fd checks, a
session pair over in-memory transports for mock-clock tests, and the venue
handlers, participant and policies the supervisor and queue tests share."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio
import trio.testing

import trio_session as ts
from trio_session._control import SessionControl, open_session
from trio_session._link import MIN_TIMER_STEP
from trio_session._transport import MemoryTransport, Transport, memory_transport_pair
from trio_session.protocol import ClientConnection, Role, VenueConnection
from trio_session.testing import MemoryVenue

from .protocol.helpers import OTHER, PARTICIPANT, VENUE

__all__ = [
    "FAST",
    "NO_RESTART",
    "OTHER",
    "PARTICIPANT",
    "STEP",
    "VENUE",
    "Echo",
    "Gate",
    "Reader",
    "echo_handler",
    "fill_credit",
    "memory_pair",
    "open_fds",
    "participant",
    "policy_configs",
    "registry",
    "state_of",
    "task_names",
    "venue",
]

#: Slack for "the same virtual instant, give or take a timer re-check".
STEP = 2 * MIN_TIMER_STEP
#: One connection: its loss ends the session.
NO_RESTART = ts.RestartPolicy(enabled=False)


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
            partial(
                ts.serve,
                handler,
                VENUE,
                reg if reg is not None else registry(),  # an empty registry is falsy
                "127.0.0.1",
                0,
                **kwargs,
            )
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
) -> tuple[SessionControl, SessionControl, MemoryTransport, MemoryTransport]:
    """Handshake over an in-memory transport pair and attach one connection to a
    participant and a venue session, without supervisor or venue runner: each
    session finishes with the error that ended its connection.

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
    ps = open_session(Role.PARTICIPANT, config_p, None, PARTICIPANT.key_id)
    vs = open_session(Role.VENUE, cfg_v, None, PARTICIPANT.key_id)
    ps.bind(p_conn.session)
    vs.bind(v_conn.session)

    async def run(
        s: SessionControl, t: MemoryTransport, c: ClientConnection | VenueConnection
    ) -> None:
        s.finish(await s.attach(t, c))

    nursery.start_soon(run, ps, tp, p_conn)
    nursery.start_soon(run, vs, tv, v_conn)
    return ps, vs, tp, tv


def state_of(session: ts.Session) -> ts.State:
    """The session's state now (a call, so type checkers do not narrow it)."""
    return session.state


# -- venue handlers and a supervised participant over memory ----------------------------------


class Echo:
    """Venue handler: records what it receives (and echoes it), the sessions it
    was called with, and how its ``async for`` ended (None: cleanly)."""

    def __init__(self, *, echo: bool = True) -> None:
        self.echo = echo
        self.sessions: list[ts.Session] = []
        self.got: list[bytes] = []
        self.ended: list[BaseException | None] = []

    async def __call__(self, session: ts.Session) -> None:
        self.sessions.append(session)
        try:
            async for message in session:
                self.got.append(message)
                if self.echo:
                    await session.send(message)
        except ts.SessionError as exc:
            self.ended.append(exc)
        else:
            self.ended.append(None)


@asynccontextmanager
async def participant(
    venue: MemoryVenue,
    *,
    restart: ts.RestartPolicy | None = None,
    config: ts.SessionConfig | None = None,
    factory: Callable[[trio.Nursery], Awaitable[Transport]] | None = None,
) -> AsyncIterator[ts.Session]:
    async with ts.connect(
        "memory://",
        PARTICIPANT,
        VENUE.public_key,
        config=config,
        restart=restart,
        transport_factory=factory or venue.connector,
    ) as session:
        yield session


FAST = ts.RestartPolicy(
    base_delay=0.05, max_delay=0.2, max_restarts=1_000_000, window=60.0, max_outage=None
)


class Gate:
    """Wraps a transport factory; while closed, connection attempts wait."""

    def __init__(self, factory: Callable[[trio.Nursery], Awaitable[Transport]]) -> None:
        self._factory = factory
        self._open = trio.Event()
        self._open.set()

    def close(self) -> None:
        if self._open.is_set():
            self._open = trio.Event()

    def open(self) -> None:
        self._open.set()

    async def __call__(self, nursery: trio.Nursery) -> Transport:
        await self._open.wait()
        return await self._factory(nursery)


# -- backpressure -------------------------------------------------------------------------------


class Reader:
    """A venue handler that does not read until told to."""

    def __init__(self) -> None:
        self.sessions: list[ts.Session] = []
        self.go = trio.Event()
        self.got: list[bytes] = []
        self._more = trio.Event()

    async def __call__(self, session: ts.Session) -> None:
        self.sessions.append(session)
        await self.go.wait()
        async for message in session:
            self.got.append(message)
            self._more.set()
            self._more = trio.Event()

    async def wait_for(self, n: int) -> list[bytes]:
        while len(self.got) < n:
            await self._more.wait()
        await trio.testing.wait_all_tasks_blocked()
        return self.got


def policy_configs(outbound: int) -> tuple[ts.SessionConfig, ts.SessionConfig]:
    # The venue's inbound capacity is the participant's credit window.
    return ts.SessionConfig(outbound_capacity=outbound), ts.SessionConfig(inbound_capacity=8)


async def fill_credit(session: ts.Session, credit: int) -> list[bytes]:
    first = [b"o%d" % i for i in range(credit)]
    for m in first:
        await session.send(m)
    await trio.testing.wait_all_tasks_blocked()
    assert session.stats.sent == credit  # on the wire; the window is now closed
    assert session.stats.outbound_depth == 0
    return first
