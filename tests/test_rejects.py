"""Rejections as values on the participant side: the message loop goes on.

``Session.with_rejects()`` yields a :class:`ts.Rejected` where ``receive()``
raises :class:`ts.MessageRejected`; a participant's :class:`ts.Router` hands
them to its ``on_reject`` handler.  Mock clock, in-memory venue.
"""

from __future__ import annotations

import msgspec
import pytest
import trio
import trio.testing

import trio_session as ts
from trio_session.testing import memory_venue

from .runtime_helpers import PARTICIPANT, VENUE, registry


class Order(msgspec.Struct, tag=True):
    client_id: int
    qty: int


class Fill(msgspec.Struct, tag=True):
    client_id: int


Msg = Order | Fill


async def venue_handler(session: ts.Session[Msg]) -> None:
    """Fills orders of a positive quantity, rejects the others."""
    async for message in session:
        assert isinstance(message, Order)
        if message.qty <= 0:
            session.reject(session.last_seq, f"bad quantity {message.qty}")
        else:
            await session.send(Fill(message.client_id))


async def test_with_rejects_yields_rejects_in_stream_order_and_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Msg | ts.Rejected] = []
    with trio.fail_after(30):
        async with (
            memory_venue(venue_handler, VENUE, registry(), messages=Msg) as mv,
            mv.connect(PARTICIPANT, messages=Msg) as session,
        ):
            for i, qty in enumerate([1, 0, 2, -1, 3]):
                await session.send(Order(i, qty))
            async for item in session.with_rejects():
                seen.append(item)
                if len(seen) == 5:
                    break
            # A plain receive() still raises: the option is the iterator, not a mode.
            await session.send(Order(5, 0))
            with pytest.raises(ts.MessageRejected) as info:
                await session.receive()
    assert seen == [
        Fill(0),
        ts.Rejected(1, ts.RejectCode.REJECTED, "bad quantity 0"),
        Fill(2),
        ts.Rejected(3, ts.RejectCode.REJECTED, "bad quantity -1"),
        Fill(4),
    ]
    assert info.value.rejected == ts.Rejected(5, ts.RejectCode.REJECTED, "bad quantity 0")


async def test_with_rejects_ends_after_a_clean_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def reject_then_close(session: ts.Session[Msg]) -> None:
        async for _ in session:
            session.reject(session.last_seq, "closed for trading")
            return  # the venue closes the session gracefully

    items = []
    async with (
        memory_venue(reject_then_close, VENUE, registry(), messages=Msg) as mv,
        mv.connect(PARTICIPANT, messages=Msg) as session,
    ):
        await session.send(Order(0, 1))
        async for item in session.with_rejects():
            items.append(item)
    assert items == [ts.Rejected(0, ts.RejectCode.REJECTED, "closed for trading")]


async def test_a_participant_router_dispatches_rejects_to_its_handler(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router: ts.Router[Msg] = ts.Router()
    fills: list[int] = []
    rejects: list[ts.Rejected] = []

    @router.route(Fill)
    async def on_fill(ctx: ts.Context[Msg], fill: Fill) -> None:
        fills.append(fill.client_id)

    @router.on_reject
    async def on_reject(session: ts.Session[Msg], rejected: ts.Rejected) -> None:
        rejects.append(rejected)
        if rejected.ref_seq == 1:
            raise RuntimeError("a bug in the reject handler")  # logged; the loop goes on

    async with (
        memory_venue(venue_handler, VENUE, registry(), messages=Msg) as mv,
        mv.connect(PARTICIPANT, messages=Msg) as session,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(router, session)
        for i, qty in enumerate([0, 0, 7, 0]):
            await session.send(Order(i, qty))
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert [r.ref_seq for r in rejects] == [0, 1, 3]
    assert all(r.reason == "bad quantity 0" for r in rejects)
    assert fills == [2]
