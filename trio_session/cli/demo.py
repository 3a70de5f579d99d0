"""``trio-session demo``: the demo venue and participant in one process, on loopback.

With ``--faults N`` a fault-injecting proxy (``trio_session.testing.FaultyProxy``)
sits between them and cuts every connection N times; the participant's session
goes STALE, RESUMING and LIVE again each time, and the run still ends with every
order acknowledged exactly once, in order.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from typing import TextIO

import trio

import trio_session as ts
from trio_session.testing import FaultyProxy

from .. import demo
from . import runtime
from .args import Parser, Subparsers, non_negative_int, port, positive_float
from .errors import EXIT_FAILED, EXIT_OK
from .live import open_view
from .metrics import require_prometheus, serve_metrics
from .monitor import Monitor
from .output import add_output_options, emit_json, progress_stream, start_logging, wants_live
from .participant import board_line, reset_reporter

__all__ = ["add_parser", "run_demo"]

DESCRIPTION = """\
Run a demo venue and participant against each other on loopback: quotes stream
(conflated per instrument), orders are acknowledged, keys rotate (fast demo
timers: heartbeat 0.5 s, ratchet 0.5 s, DH rekey 2 s).  The run ends with a
verdict: OK when every order was acknowledged exactly once, in order, and no
instrument's quotes went backwards; FAILED (exit 1) otherwise.
"""


def add_parser(sub: Subparsers, common: Parser) -> None:
    p = sub.add_parser(
        "demo",
        parents=[common],
        help="run a demo venue and participant on loopback",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seconds", type=positive_float, default=5.0, help="trading time (default 5)")
    p.add_argument(
        "--faults",
        type=non_negative_int,
        default=0,
        help="connection cuts to inject, evenly spread (default 0)",
    )
    p.add_argument("--seed", type=int, default=1, help="fault injection seed (default 1)")
    p.add_argument(
        "--metrics-port",
        type=port,
        metavar="N",
        help="serve Prometheus metrics on 127.0.0.1:N (0: any free port; needs the metrics extra)",
    )
    add_output_options(p, json_help="print only one JSON object on stdout (progress on stderr)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.metrics_port is not None:
        require_prometheus()
    live = wants_live(args)
    start_logging(args, live=live)
    result = runtime.run(
        partial(
            run_demo,
            args.seconds,
            args.faults,
            seed=args.seed,
            out=progress_stream(args),
            live=live,
            metrics_port=args.metrics_port,
        )
    )
    if args.json:
        emit_json(result.to_json())
    else:
        print(result.summary(), flush=True)
    return EXIT_OK if result.board.ok else EXIT_FAILED


async def run_demo(
    seconds: float = 5.0,
    faults: int = 0,
    *,
    seed: int = 1,
    out: TextIO | None = None,
    live: bool = False,
    metrics_port: int | None = None,
    every: float = 1.0,
) -> demo.DemoResult:
    """Run the demo; return what the participant checked."""
    out = out or sys.stdout
    venue_id = ts.Identity.generate(key_id="venue")
    alice = ts.Identity.generate(key_id="alice")
    registry = ts.KeyRegistry()
    registry.add(alice.key_id, alice.public_key)
    board = demo.Scoreboard()
    async with Monitor().running() as monitor:
        server: ts.VenueServer = await monitor.start(
            partial(
                ts.serve,
                monitor.tracking(demo.venue_handler),
                venue_id,
                registry,
                "127.0.0.1",
                0,
                config=demo.DEMO_CONFIG,
                messages=demo.Message,
            )
        )
        if metrics_port is not None:
            bound = await monitor.start(
                partial(serve_metrics, monitor, "127.0.0.1", metrics_port, server.stats)
            )
            out.write(f"metrics on http://127.0.0.1:{bound}/metrics\n")
            out.flush()
        target = server.port
        proxy: FaultyProxy | None = None
        if faults:
            proxy = await monitor.start(
                partial(FaultyProxy.serve, "127.0.0.1", server.port, seed=seed)
            )
            target = proxy.port
        monitor.start_soon(
            open_view(monitor, out, live=live, header=partial(board_line, board), every=every).run
        )
        policy = ts.RestartPolicy(base_delay=0.01, max_delay=0.2, max_restarts=max(20, 4 * faults))
        async with ts.connect(
            f"ws://127.0.0.1:{target}/",
            alice,
            venue_id.public_key,
            config=demo.DEMO_CONFIG,
            messages=demo.Message,
            restart=policy,
        ) as session:
            tracked = monitor.track(session, "participant")
            if proxy is not None:
                monitor.start_soon(partial(_inject, proxy, faults, seconds))
            with runtime.stop_here():  # Ctrl-C: stop trading and log out
                await demo.run_participant(
                    session, seconds, board, on_reset=reset_reporter(monitor, tracked)
                )
            stats = session.stats
        history = list(tracked.history)
    return demo.DemoResult(board, stats, faults, seconds, states=history)


async def _inject(proxy: FaultyProxy, faults: int, seconds: float) -> None:
    for _ in range(faults):
        await trio.sleep(seconds / (faults + 1))
        proxy.reset_all()
