"""What a type checker must accept and reject in the typed API (never run, only checked).

``tests/test_typing.py`` runs mypy on this file with ``warn_unused_ignores``:
every ``# type: ignore[code]`` below marks a mistake that mypy must keep
catching (if typing regressed, the ignore would become unused and fail the
test), and every ``assert_type`` pins what an expression's type is.
"""

from __future__ import annotations

from typing import assert_type

import msgspec
import trio

import trio_session as ts
from trio_session.testing import MemoryVenue, identities, memory_venue


class NewOrder(msgspec.Struct, tag=True):
    client_id: int


class Quote(msgspec.Struct, tag=True):
    bid: int


class Fill(msgspec.Struct, tag=True):
    client_id: int


Message = NewOrder | Quote | Fill

VENUE, ALICE, REGISTRY = identities()


async def typed_participant() -> None:
    async with ts.connect("ws://h/", ALICE, VENUE.public_key, messages=Message) as session:
        assert_type(session, ts.Session[NewOrder | Quote | Fill])
        assert_type(await session.receive(), NewOrder | Quote | Fill)
        assert_type(await session.receive_batch(), list[NewOrder | Quote | Fill])
        await session.send(NewOrder(1))
        await session.send_many([NewOrder(2), NewOrder(3)])
        session.send_latest("BTC", Quote(1))
        await session.send(b"raw")  # type: ignore[arg-type]
        await session.send(12345)  # type: ignore[arg-type]
        session.send_lossy("text")  # type: ignore[arg-type]
        async for message in session:
            assert_type(message, NewOrder | Quote | Fill)
        async for item in session.with_rejects():
            assert_type(item, NewOrder | Quote | Fill | ts.Rejected)


async def bytes_participant() -> None:
    async with ts.connect("ws://h/", ALICE, VENUE.public_key) as session:
        assert_type(session, ts.Session[bytes])
        assert_type(await session.receive(), bytes)
        await session.send(b"raw")
        await session.send(NewOrder(1))  # type: ignore[arg-type]


def typed_router() -> ts.Router[Message]:
    router: ts.Router[Message] = ts.Router()

    @router.route(NewOrder)
    async def on_order(ctx: ts.Context[Message], order: NewOrder) -> None:
        assert_type(order, NewOrder)
        await ctx.reply(Fill(order.client_id))
        await ctx.reply(12345)  # type: ignore[arg-type]

    @router.route(NewOrder)  # type: ignore[arg-type]
    async def on_quote(ctx: ts.Context[Message], quote: Quote) -> None: ...

    @router.on_reject
    async def on_reject(session: ts.Session[Message], rejected: ts.Rejected) -> None:
        assert_type(rejected.ref_seq, int)

    return router


async def typed_venue(nursery: trio.Nursery) -> None:
    async def handler(session: ts.Session[Message]) -> None:
        assert_type(await session.receive(), NewOrder | Quote | Fill)

    async def bytes_handler(session: ts.Session[bytes]) -> None: ...

    await ts.serve(handler, VENUE, REGISTRY, "127.0.0.1", 0, messages=Message)
    await ts.serve(bytes_handler, VENUE, REGISTRY, "127.0.0.1", 0)
    await ts.serve(bytes_handler, VENUE, REGISTRY, "127.0.0.1", 0, messages=Message)  # type: ignore[call-overload]
    await ts.serve(typed_router(), VENUE, REGISTRY, "127.0.0.1", 0, messages=Message)


async def memory(venue: MemoryVenue) -> None:
    async def handler(session: ts.Session[Message]) -> None: ...

    async with memory_venue(handler, VENUE, REGISTRY, messages=Message) as typed:
        async with typed.connect(ALICE, messages=Message) as session:
            assert_type(session, ts.Session[NewOrder | Quote | Fill])
        async with typed.connect(ALICE, restart=ts.RestartPolicy(enabled=False)) as raw:
            assert_type(raw, ts.Session[bytes])
        async with typed.connect(ALICE, retsart=None):  # type: ignore[call-overload]
            pass


def errors(exc: ts.SessionReset) -> None:
    for doubt in exc.in_doubt:
        assert_type(doubt.seq, int)
    assert_type(exc.last_delivered_seq, int | None)
