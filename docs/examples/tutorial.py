from decimal import Decimal
from functools import partial
from typing import Literal

import msgspec
import trio

import trio_session as ts


class NewOrder(msgspec.Struct, tag=True, frozen=True):
    client_id: int
    instrument: str
    side: Literal["buy", "sell"]
    qty: int
    price: Decimal


class ExecutionReport(msgspec.Struct, tag=True, frozen=True):
    client_id: int
    order_seq: int  # the order's sequence number in the session
    status: Literal["filled", "rejected"]
    qty: int
    price: Decimal


Message = NewOrder | ExecutionReport


venue_id = ts.Identity.generate()
alice = ts.Identity.generate(key_id="alice")

registry = ts.KeyRegistry()
registry.add(alice.key_id, alice.public_key)


async def handle(session: ts.Session) -> None:
    async for order in session:
        if not isinstance(order, NewOrder):
            continue
        status: Literal["filled", "rejected"] = "filled" if order.qty > 0 else "rejected"
        report = ExecutionReport(order.client_id, session.last_seq, status, order.qty, order.price)
        await session.send(report)


async def start_venue(
    nursery: trio.Nursery, logouts: trio.MemorySendChannel[str]
) -> ts.VenueServer:
    def on_logout(session: ts.Session) -> None:
        logouts.send_nowait(session.key_id)

    server: ts.VenueServer = await nursery.start(
        partial(
            ts.serve,
            handle,
            venue_id,
            registry,
            "127.0.0.1",
            0,
            messages=Message,
            on_logout=on_logout,
        )
    )
    return server


async def trade(url: str) -> list[ExecutionReport]:
    reports: list[ExecutionReport] = []
    async with ts.connect(url, alice, venue_id.public_key, messages=Message) as session:
        print(f"participant: {session.state.name}")
        await session.send(NewOrder(1, "BTC-EUR", "buy", 2, Decimal("64250.50")))
        await session.send(NewOrder(2, "ETH-EUR", "sell", 0, Decimal("3120.25")))
        while len(reports) < 2:
            report = await session.receive()
            assert isinstance(report, ExecutionReport)
            print(
                f"participant: order {report.client_id} (seq {report.order_seq}) "
                f"{report.status} {report.qty} @ {report.price}"
            )
            reports.append(report)
        stats = session.stats
        print(f"participant: sent={stats.sent} received={stats.received} resumes={stats.resumes}")
    print(f"participant: {session.state.name}, error={session.error}")
    return reports


async def main() -> list[ExecutionReport]:
    logouts, logged_out = trio.open_memory_channel[str](10)
    async with trio.open_nursery() as nursery:
        server = await start_venue(nursery, logouts)
        reports = await trade(f"ws://127.0.0.1:{server.port}/")
        print(f"venue: {await logged_out.receive()} logged out")
        nursery.cancel_scope.cancel()  # stop the venue
    return reports


if __name__ == "__main__":
    trio.run(main)
