"""The send fast path and adaptive batching (``_inline.py``), under the mock clock.

Over in-memory transports whose writes are recorded (by task) and can be made
to take virtual time or to hang, so every assertion is about who wrote which
frame in which order, not about timing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
import trio.testing

import trio_session as ts
from trio_session._control import SessionControl
from trio_session._core import SessionCore
from trio_session._inline import COALESCE_MAX, IDLE_GAP, coalesce
from trio_session._queues import Outbound
from trio_session._transport import MemoryTransport

from .runtime_helpers import memory_pair

CONFIG = ts.SessionConfig(heartbeat_interval=100.0, heartbeat_timeout=300.0)


class Wire:
    """Records the participant's writes (task name, frame) and can slow or hold them."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, bytes]] = []
        self.delay = 0.0
        self.gate: trio.Event | None = None
        self.blocked = trio.Event()
        self.writes_blocked: list[trio.CancelScope] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.writes]


@asynccontextmanager
async def pair(
    monkeypatch: pytest.MonkeyPatch, config: ts.SessionConfig = CONFIG
) -> AsyncIterator[tuple[SessionControl, SessionControl, Wire]]:
    wire = Wire()
    original = MemoryTransport.send
    participant_end: list[MemoryTransport] = []

    async def send(self: MemoryTransport, data: bytes) -> None:
        if participant_end and self is participant_end[0]:
            wire.writes.append((trio.lowlevel.current_task().name, data))
            if wire.gate is not None:
                wire.blocked.set()
                # Like a socket write into a full buffer: blocked until the gate
                # opens or the connection is closed under it (then it fails).
                with trio.CancelScope() as blocked:
                    wire.writes_blocked.append(blocked)
                    await wire.gate.wait()
            if wire.delay:
                await trio.sleep(wire.delay)
        await original(self, data)

    original_aclose = MemoryTransport.aclose

    async def aclose(self: MemoryTransport, code: int = 1000, reason: str = "") -> None:
        for blocked in wire.writes_blocked:
            blocked.cancel()
        await original_aclose(self, code, reason)

    monkeypatch.setattr(MemoryTransport, "send", send)
    monkeypatch.setattr(MemoryTransport, "aclose", aclose)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            p, v, p_end, _ = await memory_pair(nursery, config)
            participant_end.append(p_end)
            await p.session.wait_state(ts.State.LIVE)
            await v.session.wait_state(ts.State.LIVE)
            await trio.testing.wait_all_tasks_blocked()
            wire.writes.clear()
            yield p, v, wire
            nursery.cancel_scope.cancel()


def core_of(control: SessionControl) -> SessionCore:
    return control._core


async def test_a_sparse_sender_writes_its_own_frames(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with pair(monkeypatch) as (p, v, wire):
        me = trio.lowlevel.current_task().name
        for i in range(3):
            await p.session.send(b"m%d" % i)
            assert await v.session.receive() == b"m%d" % i
            await trio.sleep(2 * IDLE_GAP)
        # Every data frame was written by the sending task, never by the writer.
        assert wire.names() == [me, me, me]
        assert not core_of(p).outbound.token


async def test_request_response_writes_its_own_frames(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def echo() -> None:
        async for message in v.session:
            await v.session.send(message)

    async with pair(monkeypatch) as (p, v, wire), trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        me = trio.lowlevel.current_task().name
        for i in range(5):  # no pause: the answer is what makes the next send inline
            await p.session.send(b"m%d" % i)
            assert await p.session.receive() == b"m%d" % i
        assert wire.names() == [me] * 5
        nursery.cancel_scope.cancel()


async def test_back_to_back_sends_queue_and_share_frames(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with pair(monkeypatch) as (p, v, wire):
        for i in range(200):
            await p.session.send(b"m%d" % i)
        got = [await v.session.receive() for _ in range(200)]
        assert got == [b"m%d" % i for i in range(200)]
        frames = len(wire.writes)
        assert frames < 50, frames  # coalesced: far fewer frames than messages
        assert "writer" in wire.names()


async def test_sends_queued_behind_an_inline_write_follow_it_in_order(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with pair(monkeypatch) as (p, v, wire):
        wire.gate = trio.Event()
        out = core_of(p).outbound
        async with trio.open_nursery() as nursery:
            nursery.start_soon(p.session.send, b"first")
            await wire.blocked.wait()
            assert out.token and not out.writer_idle()
            for i in range(3):  # the token is held: these queue for the writer
                await p.session.send(b"q%d" % i)
            out.wake()  # e.g. a control frame came due: deferred, not a second writer
            await trio.testing.wait_all_tasks_blocked()
            assert len(wire.writes) == 1
            wire.gate.set()
        got = [await v.session.receive() for _ in range(4)]
        assert got == [b"first", b"q0", b"q1", b"q2"]
        assert wire.names()[1:] == ["writer"] * (len(wire.writes) - 1)
        assert not out.token


async def test_a_send_cancelled_during_its_write_returns_and_the_writer_writes_it(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with pair(monkeypatch) as (p, v, wire):
        wire.gate = trio.Event()  # the write blocks (a full socket)
        me = trio.lowlevel.current_task().name
        outcome: list[str] = []

        async def sender(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
            with trio.CancelScope() as scope:
                task_status.started(scope)
                await p.session.send(b"order")
                outcome.append("returned")  # sealed = accepted: no Cancelled from send()
                await trio.lowlevel.checkpoint()
                outcome.append("not cancelled")
            assert scope.cancelled_caught  # the cancellation lands at the next checkpoint

        async with trio.open_nursery() as nursery:
            scope = await nursery.start(sender, name=me)
            await wire.blocked.wait()
            scope.cancel()
        assert outcome == ["returned"]
        # The sealed frame went to the writer, which writes it before anything else.
        await p.session.send(b"next")  # queued behind it (the writer is not idle)
        await trio.testing.wait_all_tasks_blocked()
        wire.gate.set()
        assert [await v.session.receive() for _ in range(2)] == [b"order", b"next"]
        assert wire.names()[:2] == [me, "writer"]
        assert p.session.state is ts.State.LIVE and p.session.send_count == 2


async def test_a_stuck_inline_write_fails_when_the_connection_ends(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with pair(monkeypatch) as (p, v, wire):
        wire.gate = trio.Event()  # never set: the peer stopped reading
        async with trio.open_nursery() as nursery:
            nursery.start_soon(p.session.send, b"order")
            await wire.blocked.wait()
            await v.session.aclose()  # the connection ends under the stuck write
        # send() returned (nothing leaks, nothing hangs); the session is over.
        assert await p.session.wait_state(ts.State.CLOSED) is ts.State.CLOSED
        assert not core_of(p).outbound.token


async def test_without_credit_sends_queue_until_the_peer_reads(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = attrs.evolve(CONFIG, inbound_capacity=4)
    async with pair(monkeypatch, config) as (p, v, _):
        for i in range(10):
            await p.session.send(b"m%d" % i)
        await trio.testing.wait_all_tasks_blocked()
        assert core_of(p).outbound.depth > 0  # the window closed: the rest waits queued
        got = [await v.session.receive() for _ in range(10)]
        assert got == [b"m%d" % i for i in range(10)]


async def test_the_writer_waits_for_a_backlog_while_it_grows_and_no_longer() -> None:
    out = Outbound(capacity=4096, max_batch_bytes=2**16)
    out.put_nowait(b"0", 1, 1)  # a backlog formed during a write
    done: list[int] = []

    async def writer() -> None:
        await coalesce(out, 4096)
        done.append(out.depth)

    async def producer(n: int) -> None:
        for i in range(n):
            assert not done  # the writer still waits: each pass added a message
            out.put_nowait(b"%d" % (i + 1), 1, 1)
            await trio.lowlevel.checkpoint()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            nursery.start_soon(producer, 10)
    assert done == [11]
    # Capped: a producer that never stops does not hold the frame back for ever.
    out2 = Outbound(capacity=4096, max_batch_bytes=2**16)
    out2.put_nowait(b"0", 1, 1)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(coalesce, out2, 4096)
            for _ in range(COALESCE_MAX):
                out2.put_nowait(b"x", 1, 1)
                await trio.lowlevel.checkpoint()
    assert out2.depth == COALESCE_MAX + 1
