"""STALE as soon as a connection is known lost, and the timers behind it (mock clock).

* A silent link is STALE after ``stale_after`` (2.5 s by default), on both ends,
  while the connection is kept: when the link comes back (the frames were only
  held, as TCP holds them through a short black hole) the session is LIVE again
  on the same connection, nothing lost, no reconnect.
* A silence longer than ``heartbeat_timeout`` ends the connection; the session
  resumes on a new one, still one STALE spell.
* A detected failure (here a bad tag) turns the session STALE at once, not after
  the close handshake that ``close_timeout`` bounds.
* ``send(fail_fast=True)`` fails from the moment the session is STALE.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trio_session as ts
from trio_session._link import MIN_TIMER_STEP
from trio_session._transport import Transport
from trio_session.testing import MemoryVenue, memory_venue

from .runtime_helpers import PARTICIPANT, VENUE, Echo, registry
from .test_public_errors import Hostile, hostile_session

DEFAULT = ts.SessionConfig()


class Pausable:
    """A client transport whose traffic, both ways, can be held (not dropped): a
    black hole as TCP lives through it, delivered in order once it closes."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.open = trio.Event()
        self.open.set()

    def hold(self) -> None:
        self.open = trio.Event()

    def release(self) -> None:
        self.open.set()

    async def send(self, data: bytes) -> None:
        await self.open.wait()
        await self.inner.send(data)

    async def receive(self) -> bytes:
        data = await self.inner.receive()
        await self.open.wait()
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Connector:
    def __init__(self, mv: MemoryVenue) -> None:
        self.mv = mv
        self.transports: list[Pausable] = []

    async def __call__(self, nursery: trio.Nursery) -> Transport:
        transport = Pausable(await self.mv.connector(nursery))
        self.transports.append(transport)
        return transport


def connect(connector: Connector, **options: Any) -> Any:
    return ts.connect(
        "memory://", PARTICIPANT, VENUE.public_key, transport_factory=connector, **options
    )


def test_the_defaults_signal_a_silent_link_within_3_seconds() -> None:
    assert DEFAULT.heartbeat_interval == 1.0
    assert DEFAULT.stale_after == 2.5 < 3.0
    assert DEFAULT.heartbeat_timeout == 10.0


async def test_a_short_black_hole_is_stale_then_live_on_the_same_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = Echo()
    with trio.fail_after(60):
        async with memory_venue(handler, VENUE, registry()) as mv:
            connector = Connector(mv)
            async with connect(connector) as session:
                await session.send(b"before")
                assert await session.receive() == b"before"
                (venue_side,) = mv.sessions
                await trio.sleep(0.3)
                opened = trio.current_time()
                connector.transports[-1].hold()
                assert await session.wait_state(ts.State.STALE) is ts.State.STALE
                stale_after = trio.current_time() - opened
                # No frame arrives from the moment the hole opens; the last one may
                # have arrived up to one heartbeat interval before.
                assert DEFAULT.stale_after - DEFAULT.heartbeat_interval <= stale_after
                assert stale_after <= DEFAULT.stale_after + 2 * MIN_TIMER_STEP
                with trio.fail_after(DEFAULT.heartbeat_interval):  # the venue heard nothing either
                    await venue_side.wait_state(ts.State.STALE)
                with pytest.raises(ts.ConnectionLost, match="fail_fast"):
                    await session.send(b"priced off stale data", fail_fast=True)
                await session.send(b"during")  # queued, delivered after the hole
                await trio.sleep(4.0)  # 6.5 s in all: short of heartbeat_timeout
                assert session.state is ts.State.STALE
                closed = trio.current_time()
                connector.transports[-1].release()
                assert await session.wait_state(ts.State.LIVE) is ts.State.LIVE
                # Within a quarter interval: the participant beats faster while silent.
                assert trio.current_time() - closed <= DEFAULT.heartbeat_interval / 4 + 0.01
                assert await session.receive() == b"during"
                stats = session.stats
                assert stats.connections == 1 and stats.resumes == 0
                assert stats.stale_spells == 1
                assert venue_side.state is ts.State.LIVE
    assert handler.got == [b"before", b"during"]


async def test_a_long_silence_ends_the_connection_and_the_session_resumes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with memory_venue(Echo(), VENUE, registry()) as mv:
            connector = Connector(mv)
            async with connect(connector) as session:
                await session.send(b"before")
                await session.receive()
                connector.transports[-1].hold()
                opened = trio.current_time()
                await session.wait_state(ts.State.STALE)
                await session.wait_state(ts.State.RESUMING)
                dropped = trio.current_time() - opened
                assert DEFAULT.heartbeat_timeout - DEFAULT.heartbeat_interval <= dropped
                assert dropped <= DEFAULT.heartbeat_timeout + 2 * MIN_TIMER_STEP
                await session.wait_state(ts.State.LIVE)
                await session.send(b"after")
                assert await session.receive() == b"after"
                stats = session.stats
                assert stats.connections == 2 and stats.resumes == 1
                assert stats.stale_spells == 1


class SlowClose:
    """A client transport whose close never completes (the peer does not answer)."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        await trio.sleep_forever()  # bounded by close_timeout, then closed by force

    async def fail(self, code: int, reason: str = "") -> None:
        await self.aclose(code, reason)  # a client's fail() is a close handshake too

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_detected_failure_is_stale_at_once_not_after_close_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hostile = Hostile()
    config = ts.SessionConfig(close_timeout=2.0)

    async def factory(nursery: trio.Nursery) -> Transport:
        return SlowClose(await hostile.factory(nursery))

    states: list[tuple[float, ts.State]] = []
    with trio.fail_after(60):
        async with hostile_session(hostile, config, factory) as session:

            async def watch() -> None:
                async for state in session.transitions():
                    states.append((trio.current_time(), state))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                await trio.testing.wait_all_tasks_blocked()
                bad = bytearray(hostile.conn.send_data([b"tampered"]))
                bad[-1] ^= 1
                sent_at = trio.current_time()
                await hostile.send(bytes(bad))
                with pytest.raises(ts.IntegrityError):
                    await session.receive()
                nursery.cancel_scope.cancel()
    (stale_at, stale), (closed_at, closed) = states
    assert stale is ts.State.STALE and stale_at == sent_at  # at detection
    assert closed is ts.State.CLOSED and closed_at >= sent_at + config.close_timeout
