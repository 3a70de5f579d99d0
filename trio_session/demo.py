"""A reference venue and participant: market data, orders, execution reports.

The venue streams quotes for a few instruments (``send_latest``: conflated, the
freshest price wins) and accepts orders losslessly, answering each with an
:class:`ExecutionReport` bound to the order's data sequence number.  The
participant subscribes, trades, and checks every acknowledgement: each order
acknowledged exactly once, in order; each instrument's quotes never go back.

When the venue cannot resume the session (it restarted and lost it), the
participant's ``receive`` raises :class:`~trio_session.SessionReset`, whose
``in_doubt`` names exactly the orders that were sent and never acknowledged
(the venue may or may not have seen them).  Those, and the orders the venue
acknowledged but whose execution report was lost with it, are *in doubt*: the
participant reports them (reconciling exactly these), subscribes again on the
new session and trades on; they are counted as in doubt, never as lost.

Prices are :class:`decimal.Decimal` (msgspec encodes them as strings), so no
float rounding ever touches a price; quantities are integers.

These are the messages of ``python -m trio_session serve`` and ``connect``;
``python -m trio_session demo`` runs both ends in one process on loopback.
Built on the public API only (``import trio_session as ts``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Literal

import attrs
import msgspec
import trio

import trio_session as ts

__all__ = [
    "DEMO_CONFIG",
    "INSTRUMENTS",
    "DemoResult",
    "ExecutionReport",
    "Message",
    "NewOrder",
    "Quote",
    "Scoreboard",
    "Subscribe",
    "make_router",
    "run_participant",
    "venue_handler",
]

INSTRUMENTS = ("BTC-EUR", "ETH-EUR", "SOL-EUR")

#: Fast timers so a few seconds show heartbeats, ratchets and DH rekeys.
DEMO_CONFIG = ts.SessionConfig(
    heartbeat_interval=0.5,
    heartbeat_timeout=2.0,
    ratchet_interval=0.5,
    rekey_interval=2.0,
    reject_after=4.0,
    rekey_jitter=0.05,
    resume_ttl=30.0,
)


class Subscribe(msgspec.Struct, tag=True, frozen=True):
    """Participant -> venue: stream quotes for these instruments."""

    instruments: list[str]


class Quote(msgspec.Struct, tag=True, frozen=True):
    """Venue -> participant, conflated per instrument (the latest wins)."""

    instrument: str
    bid: Decimal
    ask: Decimal
    #: Per-instrument update number: never decreases (gaps are conflation).
    update: int


class NewOrder(msgspec.Struct, tag=True, frozen=True):
    """Participant -> venue, lossless; answered by one ExecutionReport (or a reject)."""

    client_id: int
    instrument: str
    side: Literal["buy", "sell"]
    qty: int
    price: Decimal


class ExecutionReport(msgspec.Struct, tag=True, frozen=True):
    """Venue -> participant: the order ``client_id`` (data seq ``ref_seq``) was filled."""

    client_id: int
    #: Data sequence number of the order this report answers.
    ref_seq: int
    status: Literal["filled", "rejected"]
    qty: int
    price: Decimal


Message = Subscribe | Quote | NewOrder | ExecutionReport


# -- venue ------------------------------------------------------------------------------


def make_router(subscriptions: set[str]) -> ts.Router[Message]:
    """Routes for one venue session; ``subscriptions`` is that session's quote set."""
    router: ts.Router[Message] = ts.Router()

    @router.route(NewOrder)
    async def on_order(ctx: ts.Context[Message], order: NewOrder) -> None:
        if order.instrument not in INSTRUMENTS or order.qty <= 0:
            ctx.reject("unknown instrument or bad quantity")
            return
        await ctx.reply(ExecutionReport(order.client_id, ctx.seq, "filled", order.qty, order.price))

    @router.route(Subscribe)
    async def on_subscribe(ctx: ts.Context[Message], sub: Subscribe) -> None:
        unknown = [name for name in sub.instruments if name not in INSTRUMENTS]
        if unknown:
            ctx.reject(f"unknown instruments {unknown}")
            return
        subscriptions.update(sub.instruments)

    return router


async def _publish(session: ts.Session[Message], subscriptions: set[str]) -> None:
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
    except ts.SessionError:
        return


async def venue_handler(session: ts.Session[Message]) -> None:
    """The demo venue's session handler: quotes + order acknowledgements.

    When the session ends for good (the participant vanished and the dead man's
    switch fired, or the venue closed it), the router's SessionError is the
    normal end of the handler: it returns, rather than raising that error out of
    its nursery as an exception group the server would log as a failure.
    """
    subscriptions: set[str] = set()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_publish, session, subscriptions)
        try:
            await make_router(subscriptions)(session)
        except ts.SessionError:
            pass  # the session is over; the server's hooks report why
        finally:
            nursery.cancel_scope.cancel()


# -- participant ----------------------------------------------------------------------


@attrs.define
class Scoreboard:
    """What the participant checked.  lost/duplicated/reordered must all be 0.

    An order is *in doubt* when a SessionReset came while it was unanswered:
    the application was told, so it is reconciled, not lost.
    """

    sent: int = 0
    acked: int = 0
    duplicated: int = 0
    reordered: int = 0
    rejected: int = 0
    quotes: int = 0
    quote_regressions: int = 0
    resets: int = 0
    rtts: list[float] = attrs.Factory(list)
    #: Client ids of the orders a reset named as never acknowledged (``in_doubt``).
    unacknowledged: set[int] = attrs.Factory(set)
    _acked_ids: set[int] = attrs.Factory(set)
    _in_doubt: set[int] = attrs.Factory(set)
    _last_ack: int = -1
    _last_ref_seq: int = -1
    _sent_at: dict[int, float] = attrs.Factory(dict)
    _last_update: dict[str, int] = attrs.Factory(dict)

    @property
    def in_doubt(self) -> int:
        return len(self._in_doubt)

    @property
    def lost(self) -> int:
        """Orders never answered, not rejected and not reported in doubt."""
        return max(0, len(self._sent_at.keys() - self._in_doubt) - self.rejected)

    @property
    def settled(self) -> bool:
        return self.lost == 0

    def order_sent(self, client_id: int) -> None:
        self.sent += 1
        self._sent_at[client_id] = trio.current_time()

    def session_reset(self, exc: ts.SessionReset | None = None) -> list[int]:
        """A SessionReset arrived: the unanswered orders are now in doubt (returned).

        ``exc.in_doubt`` says exactly which of them the venue never acknowledged;
        the others unanswered were acknowledged (their reports were lost) or are
        still queued (they go out on the new session and will be answered).  The
        new session numbers its messages from 0 and its venue restarts its quote
        updates, so those order checks start afresh too.
        """
        self.resets += 1
        if exc is not None:
            self.unacknowledged.update(
                d.message.client_id for d in exc.in_doubt if isinstance(d.message, NewOrder)
            )
        doubtful = sorted(self._sent_at.keys() - self._in_doubt)
        self._in_doubt.update(doubtful)
        self._last_ref_seq = -1
        self._last_update.clear()
        return doubtful

    def report(self, rep: ExecutionReport) -> None:
        if rep.client_id in self._acked_ids:
            self.duplicated += 1
            return
        if rep.client_id < self._last_ack or rep.ref_seq <= self._last_ref_seq:
            self.reordered += 1
        self._acked_ids.add(rep.client_id)
        self._in_doubt.discard(rep.client_id)  # it had been queued, not sent: answered after all
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

    def recent_rtt_us(self, n: int = 200) -> float | None:
        recent = self.rtts[-n:]
        return round(statistics.median(recent) * 1e6, 1) if recent else None


#: Called with the SessionReset and the client ids of the orders it left in doubt.
ResetHook = Callable[[ts.SessionReset, list[int]], None]


async def run_participant(
    session: ts.Session[Message],
    seconds: float,
    board: Scoreboard,
    *,
    order_interval: float = 0.0005,
    drain_timeout: float = 15.0,
    on_reset: ResetHook | None = None,
) -> None:
    """Subscribe, send orders for ``seconds``, then wait for every acknowledgement.

    A SessionReset is absorbed (``on_reset`` gets the orders in doubt) and
    trading continues on the new session; any other session error ends the run
    and is raised as itself.
    """
    failure: list[ts.SessionError] = []
    async with trio.open_nursery() as nursery:

        def fail(exc: ts.SessionError) -> None:
            if not failure:
                failure.append(exc)
            nursery.cancel_scope.cancel()

        sending_done = trio.Event()
        all_answered = trio.Event()

        async def receiver() -> None:
            try:
                await _receive(session, board, sending_done, all_answered, on_reset)
            except ts.SessionError as exc:
                fail(exc)

        try:
            await session.send(Subscribe(list(INSTRUMENTS)))
            nursery.start_soon(receiver)
            await _send_orders(session, board, seconds, order_interval)
            sending_done.set()
            if not board.settled:
                with trio.move_on_after(drain_timeout):
                    await all_answered.wait()
        except ts.SessionError as exc:
            fail(exc)
        nursery.cancel_scope.cancel()
    if failure:
        raise failure[0]


async def _send_orders(
    session: ts.Session[Message], board: Scoreboard, seconds: float, order_interval: float
) -> None:
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


async def _receive(
    session: ts.Session[Message],
    board: Scoreboard,
    sending_done: trio.Event,
    all_answered: trio.Event,
    on_reset: ResetHook | None,
) -> None:
    while True:
        try:
            batch = await session.receive_batch()
        except ts.MessageRejected:
            board.rejected += 1
            continue
        except ts.SessionReset as exc:
            doubtful = board.session_reset(exc)
            if on_reset is not None:
                on_reset(exc, doubtful)
            await session.send(Subscribe(list(INSTRUMENTS)))  # the new session knows nothing
            continue
        for msg in batch:
            if isinstance(msg, ExecutionReport):
                board.report(msg)
            elif isinstance(msg, Quote):
                board.quote(msg)
        if sending_done.is_set() and board.settled:
            all_answered.set()
            return


# -- results --------------------------------------------------------------------------


@attrs.define
class DemoResult:
    """What a participant run checked, with its session's final counters."""

    board: Scoreboard
    stats: ts.SessionStats
    faults: int
    seconds: float
    #: (seconds since start, state) for each state the participant's session entered.
    states: list[tuple[float, str]] = attrs.Factory(list)

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
            "in_doubt": b.in_doubt,
            "never_acknowledged": len(b.unacknowledged),
            "resets": b.resets,
            "quotes": b.quotes,
            "resumes": s.resumes,
            "stale_spells": s.stale_spells,
            "rekeys": s.rekeys,
            "ratchets": s.ratchets,
            "rtt_p50_us": b.rtt_p50_us(),
            "states": [{"at": round(at, 3), "state": state} for at, state in self.states],
            "ok": b.ok,
        }

    def summary(self) -> str:
        d = self.to_json()
        verdict = "OK" if d["ok"] else "FAILED"
        doubt = ""
        if d["resets"]:
            doubt = (
                f", {d['in_doubt']} in doubt after {d['resets']} reset(s) (reported; "
                f"{d['never_acknowledged']} never acknowledged by the venue)"
            )
        return (
            f"{verdict}: {d['sent']} orders, {d['received']} acknowledged exactly once in order"
            f"{doubt}, {d['quotes']} quotes; lost={d['lost']} dup={d['duplicated']} "
            f"reordered={d['reordered']}; resumes={d['resumes']} stale={d['stale_spells']} "
            f"resets={d['resets']} rekeys={d['rekeys']} rtt p50={d['rtt_p50_us']}us"
        )
