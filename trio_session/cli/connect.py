"""``trio-session connect``: the demo participant against a venue URL.

It trades for ``--seconds`` over one supervised session and survives what the
library survives: a dropped connection is resumed (reported STALE, RESUMING,
LIVE); a venue that restarted and lost the session is reported as a reset, with
the orders in doubt, and trading continues on the new session; a venue that
stays down is reported every few seconds while the session retries, until
``--max-outage`` ends it with the reason (exit 1).
"""

from __future__ import annotations

import argparse
import ssl
from functools import partial
from typing import TextIO

import attrs

import trio_session as ts

from .. import demo
from . import runtime
from .args import (
    Parser,
    Subparsers,
    Url,
    add_mode_option,
    add_store_options,
    add_timer_options,
    client_tls,
    config_from,
    load_identity,
    positive_float,
    public_key,
    store_from,
    venue_url,
)
from .errors import EXIT_FAILED, EXIT_OK
from .live import open_view
from .monitor import Monitor
from .output import add_output_options, emit_json, progress_stream, start_logging, wants_live
from .participant import board_line, connect_failure, reset_reporter

__all__ = ["add_parser"]

DESCRIPTION = """\
Run the demo participant against a venue started with `trio-session serve`:
subscribe to quotes, send orders for --seconds, check every execution report.
Ends with OK (exit 0) or FAILED (exit 1), or one error line (exit 1: the
session failed; exit 2: a bad argument).
"""

_RESTART_DEFAULTS = ts.RestartPolicy()


def add_parser(sub: Subparsers, common: Parser) -> None:
    p = sub.add_parser(
        "connect",
        parents=[common],
        help="run the demo participant against a venue",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("url", help="the venue's ws:// or wss:// URL, e.g. ws://127.0.0.1:8765/")
    p.add_argument("--identity", required=True, help="participant identity file (from keygen)")
    p.add_argument(
        "--venue-key",
        required=True,
        help="the venue's public key: 64 hex digits, or the .pub file keygen wrote",
    )
    p.add_argument("--ca", help="PEM CA certificate to trust for a wss:// venue")
    p.add_argument("--seconds", type=positive_float, default=5.0, help="trading time (default 5)")
    sup = p.add_argument_group("supervision")
    sup.add_argument(
        "--max-outage",
        type=positive_float,
        default=_RESTART_DEFAULTS.max_outage,
        metavar="S",
        help="give up when not LIVE for this long (default %(default)s)",
    )
    sup.add_argument(
        "--max-delay",
        type=positive_float,
        default=_RESTART_DEFAULTS.max_delay,
        metavar="S",
        help="longest wait between reconnection attempts (default %(default)s)",
    )
    add_timer_options(
        p, ("heartbeat_interval", "heartbeat_timeout", "handshake_timeout", "ratchet_interval")
    )
    add_mode_option(p, "to offer")
    add_store_options(p, "the session")
    add_output_options(p, json_help="print only one JSON object on stdout (progress on stderr)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    url = venue_url(args.url)
    ssl_context = client_tls(url, args.ca)
    identity = load_identity(args.identity)
    venue_key = public_key(args.venue_key, "--venue-key")
    config = config_from(args)
    policy = ts.RestartPolicy(max_outage=args.max_outage, max_delay=args.max_delay)
    store = store_from(args)
    live = wants_live(args)
    start_logging(args, live=live)
    participant = _Participant(url, identity, venue_key, config, policy, ssl_context, store)
    result = runtime.run(partial(participant.run, args.seconds, progress_stream(args), live))
    if args.json:
        emit_json(result.to_json())
    else:
        print(result.summary(), flush=True)
    return EXIT_OK if result.board.ok else EXIT_FAILED


@attrs.frozen
class _Participant:
    """A checked ``connect`` command line, ready to run."""

    url: Url
    identity: ts.Identity
    venue_key: bytes
    config: ts.SessionConfig
    policy: ts.RestartPolicy
    ssl_context: ssl.SSLContext | None
    store: ts.SqliteStore | None

    async def run(self, seconds: float, out: TextIO, live: bool) -> demo.DemoResult:
        board = demo.Scoreboard()
        connected = False
        async with Monitor().running() as monitor:
            monitor.start_soon(
                open_view(monitor, out, live=live, header=partial(board_line, board)).run
            )
            monitor.log("connecting", f"connecting to {self.url.text} as {self.identity.key_id}")
            try:
                async with ts.connect(
                    self.url.text,
                    self.identity,
                    self.venue_key,
                    config=self.config,
                    messages=demo.Message,
                    ssl_context=self.ssl_context,
                    restart=self.policy,
                    store=self.store,
                ) as session:
                    connected = True
                    tracked = monitor.track(session, "participant")
                    with runtime.stop_here():  # Ctrl-C: stop trading and log out
                        await demo.run_participant(
                            session, seconds, board, on_reset=reset_reporter(monitor, tracked)
                        )
                    stats = session.stats
            except ts.SessionError as exc:
                raise connect_failure(
                    exc, self.url.text, self.identity, connected=connected
                ) from None
            history = list(tracked.history)
        return demo.DemoResult(board, stats, 0, seconds, states=history)
