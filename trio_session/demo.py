"""A reference venue and participant: market data, orders, execution reports.

The venue streams quotes for a few instruments (``send_latest``: conflated, the
freshest price wins) and accepts orders losslessly, answering each with an
:class:`ExecutionReport` bound to the order's data sequence number.  The
participant subscribes, trades, and checks every acknowledgement: each order
acknowledged exactly once, in order; each instrument's quotes never go back.

Prices are :class:`decimal.Decimal` (msgspec encodes them as strings), so no
float rounding ever touches a price; quantities are integers.

``python -m trio_session demo`` runs both in one process on loopback, with an
optional fault-injecting proxy between them (``--faults N`` abrupt drops).
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from typing import Any, Literal, TextIO

import attrs
import msgspec
import trio

from ._app import Context, Router
from ._client import RestartPolicy, connect
from ._config import SessionConfig
from ._errors import MessageRejected, SessionError
from ._identity import Identity, KeyRegistry
from ._server import VenueServer, serve
from ._session import Session, State

__all__ = [
    "DEMO_CONFIG",
    "INSTRUMENTS",
    "ExecutionReport",
    "Message",
    "NewOrder",
    "Quote",
    "Scoreboard",
    "Subscribe",
    "run_demo",
    "run_participant",
    "venue_handler",
]

INSTRUMENTS = ("BTC-EUR", "ETH-EUR", "SOL-EUR")

#: Fast timers so a few seconds show heartbeats, ratchets and DH rekeys.
DEMO_CONFIG = SessionConfig(
    heartbeat_interval=0.5,
    heartbeat_timeout=2.0,
    ratchet_interval=0.5,
    rekey_interval=2.0,
    reject_after=4.0,
    rekey_jitter=0.05,
    resume_ttl=30.0,
)


class Subscribe(msgspec.Struct, tag=True, frozen=True):
    instruments: list[str]


class Quote(msgspec.Struct, tag=True, frozen=True):
    instrument: str
    bid: Decimal
    ask: Decimal
    #: Per-instrument update number: never decreases (gaps are conflation).
    update: int


class NewOrder(msgspec.Struct, tag=True, frozen=True):
    client_id: int
    instrument: str
    side: Literal["buy", "sell"]
    qty: int
    price: Decimal


class ExecutionReport(msgspec.Struct, tag=True, frozen=True):
    client_id: int
    #: Data sequence number of the order this report answers.
    ref_seq: int
    status: Literal["filled", "rejected"]
    qty: int
    price: Decimal


Message = Subscribe | Quote | NewOrder | ExecutionReport


# -- venue ------------------------------------------------------------------------------


def make_router(subscriptions: set[str]) -> Router:
    """Routes for one venue session; ``subscriptions`` is that session's quote set."""
    router = Router()

    @router.route(NewOrder)
    async def on_order(ctx: Context, order: NewOrder) -> None:
        if order.instrument not in INSTRUMENTS or order.qty <= 0:
            ctx.reject("unknown instrument or bad quantity")
            return
        await ctx.reply(ExecutionReport(order.client_id, ctx.seq, "filled", order.qty, order.price))

    @router.route(Subscribe)
    async def on_subscribe(ctx: Context, sub: Subscribe) -> None:
        unknown = [name for name in sub.instruments if name not in INSTRUMENTS]
        if unknown:
            ctx.reject(f"unknown instruments {unknown}")
            return
        subscriptions.update(sub.instruments)

    return router


async def _publish(session: Session, subscriptions: set[str]) -> None:
    """Stream quotes for subscribed instruments, conflated per instrument."""
    update = 0
    base = {name: Decimal(10_000 + 1_000 * i) for i, name in enumerate(INSTRUMENTS)}
    try:
        while True:
            update += 1
            for name in sorted(subscriptions):
                mid = base[name] + Decimal(update % 200) / 100
                session.send_latest(
                    name, Quote(name, mid - Decimal("0.05"), mid + Decimal("0.05"), update)
                )
            await trio.sleep(0.001)
    except SessionError:
        return


async def venue_handler(session: Session) -> None:
    """The demo venue's session handler: quotes + order acknowledgements."""
    subscriptions: set[str] = set()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_publish, session, subscriptions)
        try:
            await make_router(subscriptions)(session)
        finally:
            nursery.cancel_scope.cancel()


# -- participant ----------------------------------------------------------------------


@attrs.define
class Scoreboard:
    """What the participant checked.  lost/duplicated/reordered must all be 0."""

    sent: int = 0
    acked: int = 0
    duplicated: int = 0
    reordered: int = 0
    rejected: int = 0
    quotes: int = 0
    quote_regressions: int = 0
    rtts: list[float] = attrs.Factory(list)
    _acked_ids: set[int] = attrs.Factory(set)
    _last_ack: int = -1
    _last_ref_seq: int = -1
    _sent_at: dict[int, float] = attrs.Factory(dict)
    _last_update: dict[str, int] = attrs.Factory(dict)

    @property
    def lost(self) -> int:
        return self.sent - self.acked - self.rejected

    def order_sent(self, client_id: int) -> None:
        self.sent += 1
        self._sent_at[client_id] = trio.current_time()

    def report(self, rep: ExecutionReport) -> None:
        if rep.client_id in self._acked_ids:
            self.duplicated += 1
            return
        if rep.client_id < self._last_ack or rep.ref_seq <= self._last_ref_seq:
            self.reordered += 1
        self._acked_ids.add(rep.client_id)
        self._last_ack = max(self._last_ack, rep.client_id)
        self._last_ref_seq = max(self._last_ref_seq, rep.ref_seq)
        self.acked += 1
        sent = self._sent_at.pop(rep.client_id, None)
        if sent is not None:
            self.rtts.append(trio.current_time() - sent)

    def quote(self, q: Quote) -> None:
        self.quotes += 1
        if q.update < self._last_update.get(q.instrument, -1):
            self.quote_regressions += 1
        self._last_update[q.instrument] = q.update

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0 and self.duplicated == 0 and self.reordered + self.quote_regressions == 0
        )

    def rtt_p50_us(self) -> float | None:
        return round(statistics.median(self.rtts) * 1e6, 1) if self.rtts else None


async def run_participant(
    session: Session,
    seconds: float,
    board: Scoreboard,
    *,
    order_interval: float = 0.0005,
    drain_timeout: float = 15.0,
) -> None:
    """Subscribe, send orders for ``seconds``, then wait for every acknowledgement."""
    await session.send(Subscribe(list(INSTRUMENTS)))
    sending_done = trio.Event()
    all_answered = trio.Event()

    async def receiver() -> None:
        while True:
            try:
                batch = await session.receive_batch()
            except MessageRejected:
                board.rejected += 1
                continue
            for msg in batch:
                if isinstance(msg, ExecutionReport):
                    board.report(msg)
                elif isinstance(msg, Quote):
                    board.quote(msg)
            if sending_done.is_set() and board.acked + board.rejected >= board.sent:
                all_answered.set()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        deadline = trio.current_time() + seconds
        client_id = 0
        while trio.current_time() < deadline:
            name = INSTRUMENTS[client_id % len(INSTRUMENTS)]
            order = NewOrder(
                client_id,
                name,
                "buy" if client_id % 2 else "sell",
                1 + client_id % 5,
                Decimal("100.25"),
            )
            board.order_sent(client_id)
            await session.send(order)
            client_id += 1
            await trio.sleep(order_interval)
        sending_done.set()
        with trio.move_on_after(drain_timeout):
            await all_answered.wait()
        nursery.cancel_scope.cancel()


# -- the whole demo in one process ---------------------------------------------------


@attrs.define
class DemoResult:
    board: Scoreboard
    stats: Any
    faults: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        b, s = self.board, self.stats
        return {
            "seconds": self.seconds,
            "faults": self.faults,
            "sent": b.sent,
            "received": b.acked,
            "lost": b.lost,
            "duplicated": b.duplicated,
            "reordered": b.reordered + b.quote_regressions,
            "rejected": b.rejected,
            "quotes": b.quotes,
            "resumes": s.resumes,
            "rekeys": s.rekeys,
            "ratchets": s.ratchets,
            "rtt_p50_us": b.rtt_p50_us(),
            "ok": b.ok,
        }


def _status_line(session: Session, board: Scoreboard, rate: float) -> str:
    s = session.stats
    recent = board.rtts[-200:]
    rtt = f"{statistics.median(recent) * 1e6:.0f}us" if recent else "-"
    return (
        f"{session.state.value:<8} orders {board.sent:>6} acked {board.acked:>6} "
        f"({rate:>6.0f}/s)  quotes {board.quotes:>6}  rtt {rtt:>7}  "
        f"rekeys {s.rekeys:>3}  resumes {s.resumes:>2}  "
        f"pending={board.lost} dup={board.duplicated} "
        f"reord={board.reordered + board.quote_regressions}"
    )


async def run_demo(
    seconds: float = 5.0,
    faults: int = 0,
    *,
    seed: int = 1,
    out: TextIO | None = None,
    live: bool | None = None,
    proxy_factory: Callable[..., Any] | None = None,
) -> DemoResult:
    """Run the demo venue and participant on loopback; return what was checked."""
    out = out or sys.stdout
    live = out.isatty() if live is None else live
    venue_id = Identity.generate()
    alice = Identity.generate()
    registry = KeyRegistry()
    registry.add(alice.key_id, alice.public_key)
    board = Scoreboard()
    async with trio.open_nursery() as nursery:
        server: VenueServer = await nursery.start(
            partial(
                serve,
                venue_handler,
                venue_id,
                registry,
                "127.0.0.1",
                0,
                config=DEMO_CONFIG,
                messages=Message,
            )
        )
        port = server.port
        proxy = None
        if faults:
            if proxy_factory is None:
                from ._faults import FaultyProxy

                proxy_factory = FaultyProxy.serve
            proxy = await nursery.start(partial(proxy_factory, "127.0.0.1", server.port, seed=seed))
            port = proxy.port
        url = f"ws://127.0.0.1:{port}/"
        policy = RestartPolicy(base_delay=0.01, max_delay=0.2, max_restarts=max(20, 4 * faults))
        async with connect(
            url, alice, venue_id.public_key, config=DEMO_CONFIG, messages=Message, restart=policy
        ) as session:
            async with trio.open_nursery() as inner:
                inner.start_soon(_show, session, board, out, live)
                if proxy is not None:
                    inner.start_soon(_inject, proxy, faults, seconds)
                await run_participant(session, seconds, board)
                inner.cancel_scope.cancel()
            stats = session.stats
        nursery.cancel_scope.cancel()
    if live:
        out.write("\n")
    return DemoResult(board, stats, faults, seconds)


async def _inject(proxy: Any, faults: int, seconds: float) -> None:
    for _ in range(faults):
        await trio.sleep(seconds / (faults + 1))
        proxy.reset_all()


async def _show(session: Session, board: Scoreboard, out: TextIO, live: bool) -> None:
    last_acked, last_t = 0, trio.current_time()
    while True:
        await trio.sleep(0.25 if live else 1.0)
        now = trio.current_time()
        rate = (board.acked - last_acked) / max(now - last_t, 1e-9)
        last_acked, last_t = board.acked, now
        line = _status_line(session, board, rate)
        if live:
            out.write("\r\x1b[2K" + line)
        else:
            out.write(line + "\n")
        out.flush()
        if session.state is State.CLOSED:
            return


def print_summary(result: DemoResult, out: TextIO, *, as_json: bool) -> None:
    data = result.to_json()
    if as_json:
        out.write(json.dumps(data) + "\n")
        return
    verdict = "OK" if data["ok"] else "FAILED"
    out.write(
        f"{verdict}: {data['sent']} orders, {data['received']} acknowledged exactly once in order, "
        f"{data['quotes']} quotes; lost={data['lost']} dup={data['duplicated']} "
        f"reordered={data['reordered']}; resumes={data['resumes']} rekeys={data['rekeys']} "
        f"rtt p50={data['rtt_p50_us']}us\n"
    )
