"""Application layer: router, middleware, plugins (entry points) and the demo application.

The command line has its own tests (tests/test_cli_*.py)."""

from __future__ import annotations

import io
import textwrap
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest
import trio

import trio_session as ts
from trio_session import demo
from trio_session.cli.demo import run_demo

from .runtime_helpers import PARTICIPANT, VENUE, url, venue


class Order(msgspec.Struct, tag=True):
    qty: int


class Cancel(msgspec.Struct, tag=True):
    order_seq: int


class Ack(msgspec.Struct, tag=True):
    ref_seq: int


Messages = Order | Cancel | Ack


class Recorder(ts.Plugin):
    name = "recorder"

    def __init__(self) -> None:
        self.events: list[str] = []
        self.closed = trio.Event()

    async def on_open(self, session: ts.Session) -> None:
        self.events.append("open")

    async def on_message(self, session: ts.Session, context: ts.Context, message: object) -> None:
        self.events.append(f"message:{type(message).__name__}:{context.seq}")

    async def on_close(self, session: ts.Session, error: ts.SessionError | None) -> None:
        self.events.append(f"close:{error is None}")
        self.closed.set()


class Broken(ts.Plugin):
    name = "broken"

    async def on_message(self, session: ts.Session, context: ts.Context, message: object) -> None:
        raise RuntimeError("plugin bug")


def _router(*plugins: ts.Plugin) -> ts.Router:
    router = ts.Router(plugins=plugins)

    @router.route(Order)
    async def on_order(ctx: ts.Context, order: Order) -> None:
        if order.qty == 13:
            raise ValueError("unlucky")
        await ctx.reply(Ack(ctx.seq))

    @router.route(Cancel)
    async def on_cancel(ctx: ts.Context, cancel: Cancel) -> None:
        await ctx.reply(Ack(ctx.seq))

    return router


async def test_router_dispatches_by_type_and_isolates_failures() -> None:
    recorder = Recorder()
    router = _router(recorder, Broken())
    with trio.fail_after(20):
        async with (
            venue(router, messages=Messages) as server,
            ts.connect(url(server), PARTICIPANT, VENUE.public_key, messages=Messages) as session,
        ):
            await session.send(Order(1))
            await session.send(Order(13))  # the handler raises: rejected, session continues
            await session.send(Cancel(0))
            assert await session.receive() == Ack(0)
            with pytest.raises(ts.MessageRejected) as info:
                await session.receive()
            assert info.value.ref_seq == 1 and info.value.reason == "handler error"
            assert await session.receive() == Ack(2)
    with trio.fail_after(5):
        await recorder.closed.wait()
    # The broken plugin never stopped the recorder or the routing.
    assert recorder.events == [
        "open",
        "message:Order:0",
        "message:Order:1",  # its handler raised: rejected, plugins still told
        "message:Cancel:2",
        "close:True",
    ]


async def test_rate_limit_middleware_rejects_with_retry_after_and_session_stays_up() -> None:
    limit = ts.RateLimit(rate=5, burst=3, only=(Order,))
    router = _router()
    router.use(limit)
    with trio.fail_after(20):
        async with (
            venue(router, messages=Messages) as server,
            ts.connect(url(server), PARTICIPANT, VENUE.public_key, messages=Messages) as session,
        ):
            for _ in range(6):
                await session.send(Order(1))
            await session.send(Cancel(0))  # not rate limited
            acks: list[object] = []
            rejects: list[ts.MessageRejected] = []
            while len(acks) + len(rejects) < 7:
                try:
                    acks.append(await session.receive())
                except ts.MessageRejected as exc:
                    rejects.append(exc)
            assert len(acks) == 4 and len(rejects) == 3
            assert all(r.reason_code is ts.RejectCode.RATE_LIMITED for r in rejects)
            assert all(r.retry_after is not None and 0 < r.retry_after <= 1.0 for r in rejects)
            assert acks[-1] == Ack(6)
            assert session.state is ts.State.LIVE
            await trio.sleep(max(r.retry_after or 0 for r in rejects))
            await session.send(Order(2))  # allowed again after retry_after
            assert await session.receive() == Ack(7)
    assert limit.rejected == 3


async def test_validate_and_metrics_middleware() -> None:
    metrics = ts.Metrics()
    router = _router()
    router.use(metrics)
    router.use(
        ts.Validate(
            lambda m: "qty must be positive" if isinstance(m, Order) and m.qty <= 0 else None
        )
    )
    with trio.fail_after(20):
        async with (
            venue(router, messages=Messages) as server,
            ts.connect(url(server), PARTICIPANT, VENUE.public_key, messages=Messages) as session,
        ):
            await session.send(Order(0))
            await session.send(Order(2))
            with pytest.raises(ts.MessageRejected, match="qty must be positive"):
                await session.receive()
            assert await session.receive() == Ack(1)
    assert metrics.counts["Order"] == 2


def _install_plugin_package(root: Path) -> Path:
    """A tiny separately-packaged plugin, 'installed' as a distribution on sys.path."""
    site = root / "site"
    pkg = site / "tiny_audit_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            """
            import trio_session as ts

            SEEN = []

            class AuditPlugin(ts.Plugin):
                async def on_message(self, session, context, message):
                    SEEN.append((context.seq, message))
            """
        )
    )
    dist = site / "tiny_audit_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-audit-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[trio_session.plugins]\naudit = tiny_audit_plugin:AuditPlugin\n"
    )
    return site


async def test_plugin_discovered_through_entry_point_receives_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = _install_plugin_package(tmp_path)
    monkeypatch.syspath_prepend(str(site))
    plugins = ts.load_plugins()
    names = [p.name for p in plugins]
    assert "audit" in names
    router = _router(*plugins)
    with trio.fail_after(20):
        async with (
            venue(router, messages=Messages) as server,
            ts.connect(url(server), PARTICIPANT, VENUE.public_key, messages=Messages) as session,
        ):
            await session.send(Order(7))
            assert await session.receive() == Ack(0)
    import tiny_audit_plugin  # type: ignore[import-not-found]

    assert [(0, Order(7))] == tiny_audit_plugin.SEEN


def test_broken_entry_point_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    dist = site / "broken_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[trio_session.plugins]\nbroken = no_such_module:X\n")
    monkeypatch.syspath_prepend(str(site))
    assert all(p.name != "broken" for p in ts.load_plugins())


async def test_demo_runs_clean_without_faults() -> None:
    with trio.fail_after(60):
        result = await run_demo(1.5, 0, live=False, out=io.StringIO())
    data = result.to_json()
    assert data["ok"] and data["lost"] == 0 and data["duplicated"] == 0 and data["reordered"] == 0
    assert data["sent"] > 100 and data["received"] == data["sent"] and data["quotes"] > 100
    assert data["in_doubt"] == 0 and data["resets"] == 0


def test_scoreboard_counts_orders_a_reset_left_in_doubt() -> None:
    """Unanswered orders at a reset are in doubt, not lost; answered later, they are acked."""

    async def scenario() -> demo.Scoreboard:
        board = demo.Scoreboard()
        for i in range(4):
            board.order_sent(i)
        board.report(demo.ExecutionReport(0, 1, "filled", 1, Decimal("1")))
        assert (board.lost, board.settled) == (3, False)
        assert board.session_reset() == [1, 2, 3]
        assert (board.lost, board.settled, board.in_doubt) == (0, True, 3)
        # Order 3 had been queued, not sent: the new session answers it (seq from 0 again).
        board.report(demo.ExecutionReport(3, 0, "filled", 1, Decimal("1")))
        board.order_sent(4)
        assert (board.lost, board.settled) == (1, False)
        board.report(demo.ExecutionReport(4, 1, "filled", 1, Decimal("1")))
        return board

    board = trio.run(scenario)
    assert (board.acked, board.in_doubt, board.lost, board.reordered) == (3, 2, 0, 0)
    assert board.ok and board.resets == 1


async def test_memory_venue_reraises_user_errors_unwrapped() -> None:
    from trio_session.testing import identities, memory_venue

    venue_id, alice, reg = identities()

    async def handler(session: ts.Session) -> None:
        async for _ in session:
            pass

    with trio.fail_after(10), pytest.raises(ValueError, match="user error"):
        async with memory_venue(handler, venue_id, reg) as venue, venue.connect(alice):
            raise ValueError("user error")
