"""Reconciling exactly what is in doubt: ``SessionReset.in_doubt`` and the final error's.

When continuity is lost, the application must learn which of its messages the
venue may or may not have: those sent and never acknowledged, with their
sequence numbers (decoded on a typed session), and the last message it received.
Mock clock, in-memory venue whose handler can be held so that acknowledgements
are the only thing that moves.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import trio_session as ts
from trio_session._transport import Transport
from trio_session.testing import MemoryVenue, memory_venue

from .runtime_helpers import PARTICIPANT, VENUE, registry


class Order(msgspec.Struct, tag=True):
    client_id: int


class Ack(msgspec.Struct, tag=True):
    client_id: int


Msg = Order | Ack
CONFIG = ts.SessionConfig(resume_ttl=5.0)


class Venue:
    """Acknowledges orders at the application level; can be made deaf (the
    transport still delivers and acknowledges nothing new once it is cut)."""

    def __init__(self) -> None:
        self.got: list[int] = []

    async def __call__(self, session: ts.Session[Msg]) -> None:
        try:
            async for message in session:
                assert isinstance(message, Order)
                self.got.append(message.client_id)
                await session.send(Ack(message.client_id))
        except ts.SessionError:
            pass


class Holdable:
    """A client transport whose frames can be made to vanish on the way (a network
    that stops delivering): what is sealed then is in the replay buffer, never
    delivered, never acknowledged.  The write itself completes, as a socket write
    into a kernel buffer does (a send() may write its own frame: docs/architecture.md)."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.holding = False
        self.held: list[bytes] = []

    async def send(self, data: bytes) -> None:
        if self.holding:
            self.held.append(data)
            await trio.lowlevel.checkpoint()
            return
        await self.inner.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Connector:
    """``transport_factory`` for ``ts.connect``: the memory venue's, held on demand."""

    def __init__(self, mv: MemoryVenue) -> None:
        self.mv = mv
        self.last: Holdable | None = None

    async def __call__(self, nursery: trio.Nursery) -> Transport:
        self.last = Holdable(await self.mv.connector(nursery))
        return self.last

    def hold(self) -> None:
        assert self.last is not None
        self.last.holding = True


def connect(mv: MemoryVenue, connector: Connector, **options: Any) -> Any:
    return ts.connect(
        "memory://", PARTICIPANT, VENUE.public_key, transport_factory=connector, **options
    )


async def test_session_reset_names_the_unacknowledged_orders_exactly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    venue = Venue()
    with trio.fail_after(60):
        async with memory_venue(venue, VENUE, registry(), config=CONFIG, messages=Msg) as mv:
            connector = Connector(mv)
            async with connect(mv, connector, config=CONFIG, messages=Msg) as session:
                await _session_reset_exactly(mv, connector, session)
    assert venue.got == [0, 1, 2, 5]


async def _session_reset_exactly(
    mv: MemoryVenue, connector: Connector, session: ts.Session[Msg]
) -> None:
    for i in range(3):
        await session.send(Order(i))
        assert await session.receive() == Ack(i)
    connector.hold()
    await session.send_many([Order(3), Order(4)])  # sealed in one frame, stuck
    await trio.testing.wait_all_tasks_blocked()
    mv.refuse_connections()
    mv.transports[-1].break_()
    await session.wait_state(ts.State.STALE)
    await session.send(Order(5))  # queued during the outage, never sealed
    await trio.sleep(CONFIG.resume_ttl + 1)  # the venue forgets the session
    mv.refuse_connections(False)
    with pytest.raises(ts.SessionReset) as info:
        await session.receive()
    exc = info.value
    assert [(d.seq, d.message) for d in exc.in_doubt] == [(3, Order(3)), (4, Order(4))]
    assert exc.last_delivered_seq == 2  # the three acks were seqs 0, 1, 2
    assert "2 sent messages unacknowledged (seq 3-4): reconcile them" in str(exc)
    # The queued order goes out on the new session; the two in doubt do not.
    assert await session.receive() == Ack(5)


async def test_the_final_error_of_a_session_that_gave_up_carries_the_in_doubt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = ts.RestartPolicy(max_outage=10.0)
    async with memory_venue(Venue(), VENUE, registry(), config=CONFIG, messages=Msg) as mv:
        connector = Connector(mv)
        async with connect(mv, connector, config=CONFIG, messages=Msg, restart=policy) as s:
            await s.send(Order(0))
            assert await s.receive() == Ack(0)
            mv.refuse_connections()
            connector.hold()  # the next order is sealed but never delivered
            await s.send(Order(1))
            await trio.testing.wait_all_tasks_blocked()
            mv.transports[-1].break_()
            with pytest.raises(ts.ConnectionLost) as info:
                await s.receive()
    exc = info.value
    assert "no connection for 10.0s" in str(exc)
    assert [(d.seq, d.message) for d in exc.in_doubt] == [(1, Order(1))]
    assert exc.last_delivered_seq == 0


async def test_untyped_sessions_report_the_raw_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def hold(session: ts.Session) -> None:
        await trio.sleep_forever()

    policy = ts.RestartPolicy(max_outage=5.0)
    async with memory_venue(hold, VENUE, registry()) as mv:
        connector = Connector(mv)
        async with connect(mv, connector, restart=policy) as s:
            connector.hold()
            await s.send_many([b"order a", b"order b"])
            await trio.testing.wait_all_tasks_blocked()
            mv.refuse_connections()
            mv.transports[-1].break_()
            with pytest.raises(ts.ConnectionLost) as info:
                await s.receive()
    doubts = info.value.in_doubt
    assert [d.seq for d in doubts] == [0, 1]
    assert [d.message for d in doubts] == [b"order a", b"order b"]
    assert [d.payload for d in doubts] == [b"order a", b"order b"]
    assert info.value.last_delivered_seq == -1
