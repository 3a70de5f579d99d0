"""``trio-session serve``: the demo venue, for participants run with ``connect``.

It speaks the demo's application messages (``trio_session.demo``), listed in
``--help``; logs each session's lifecycle (login, STALE, resume, logout, the
dead man's switch) as structured lines; shows a live table on a terminal; and
with ``--metrics-port`` exposes Prometheus metrics.  It runs until Ctrl-C
(exit 130) or SIGTERM (exit 143).
"""

from __future__ import annotations

import argparse
import ssl
import typing
from functools import partial

import attrs
import msgspec
import trio

import trio_session as ts

from .. import demo
from . import runtime
from .args import (
    TIMER_FIELDS,
    Parser,
    Subparsers,
    add_mode_option,
    add_store_options,
    add_timer_options,
    config_from,
    load_identity,
    load_registry,
    port,
    server_tls,
    store_from,
)
from .errors import EXIT_OK, EXIT_UNAVAILABLE, CliError, os_reason
from .live import open_view
from .metrics import require_prometheus, serve_metrics
from .monitor import Monitor
from .output import add_output_options, emit_json, progress_stream, start_logging, wants_live

__all__ = ["add_parser", "messages_help"]

DESCRIPTION = """\
Run the demo venue: authenticate participants against a registry file, stream
conflated quotes to them and answer every order with an execution report.
"""


def messages_help() -> str:
    """The demo's application messages, from their definitions (so never out of date)."""
    lines = ["application messages (msgspec Structs in trio_session.demo, tagged msgpack):"]
    for struct, direction in (
        (demo.Subscribe, "participant -> venue"),
        (demo.NewOrder, "participant -> venue"),
        (demo.Quote, "venue -> participant, conflated per instrument"),
        (demo.ExecutionReport, "venue -> participant, one per order"),
    ):
        fields = ", ".join(
            f"{f.name}: {_type_name(f.type)}" for f in msgspec.structs.fields(struct)
        )
        lines.append(f"  {struct.__name__}({fields})")
        lines.append(f"      {direction}")
    lines.append(f"instruments: {', '.join(demo.INSTRUMENTS)}")
    return "\n".join(lines)


def _type_name(t: object) -> str:
    if isinstance(t, type) and typing.get_origin(t) is None:
        return t.__name__
    return str(t).replace("typing.", "")


def add_parser(sub: Subparsers, common: Parser) -> None:
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="run the demo venue",
        description=DESCRIPTION,
        epilog=messages_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--identity", required=True, help="venue identity file (from keygen)")
    p.add_argument("--registry", required=True, help="registry of participant keys (registry add)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=port, default=8765, help="port to listen on, 0..65535 (default 8765)"
    )
    p.add_argument(
        "--tls-cert", metavar="PEM", help="certificate chain: serve wss:// (with --tls-key)"
    )
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    p.add_argument(
        "--metrics-port",
        type=port,
        metavar="N",
        help="serve Prometheus metrics on --host:N (0: any free port; needs the metrics extra)",
    )
    add_timer_options(p, TIMER_FIELDS)
    add_mode_option(p, "to accept")
    add_store_options(p, "the venue's sessions")
    add_output_options(
        p, json_help="print the listening address as one JSON line on stdout (progress on stderr)"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    identity = load_identity(args.identity)
    registry = load_registry(args.registry)
    ssl_context = server_tls(args.tls_cert, args.tls_key)
    config = config_from(args)
    store = store_from(args)
    if args.metrics_port is not None:
        require_prometheus()
    live = wants_live(args)
    start_logging(args, live=live)
    venue = _Venue(args, identity, registry, config, ssl_context, live, store)
    runtime.run(venue.run)  # until a signal: Stopped is reported by main()
    return EXIT_OK


@attrs.frozen
class _Venue:
    """A checked ``serve`` command line, ready to run."""

    args: argparse.Namespace
    identity: ts.Identity
    registry: ts.KeyRegistry
    config: ts.SessionConfig
    ssl_context: ssl.SSLContext | None
    live: bool
    store: ts.SqliteStore | None

    async def run(self) -> None:
        args = self.args
        out = progress_stream(args)
        async with Monitor().running() as monitor:
            server = await self._listen(monitor)
            scheme = "wss" if self.ssl_context else "ws"
            url = f"{scheme}://{_host_for_url(args.host)}:{server.port}/"
            info: dict[str, object] = {
                "event": "listening",
                "url": url,
                "key_id": self.identity.key_id,
                "public_key": self.identity.public_key_hex,
            }
            if args.metrics_port is not None:
                bound = await monitor.start(
                    partial(serve_metrics, monitor, args.host, args.metrics_port, server.stats)
                )
                info["metrics"] = f"http://{_host_for_url(args.host)}:{bound}/metrics"
            if args.json:
                emit_json(info)
            else:
                out.write(f"venue {self.identity.key_id} listening on {url}\n")
                out.write(f"venue public key {self.identity.public_key_hex}\n")
                if "metrics" in info:
                    out.write(f"metrics on {info['metrics']}\n")
                out.flush()
            monitor.log("listening", f"venue listening on {url}", url=url)
            header = partial(_header, server, url)
            monitor.start_soon(
                open_view(monitor, out, live=self.live, header=header, every=10.0).run
            )
            await trio.sleep_forever()

    async def _listen(self, monitor: Monitor) -> ts.VenueServer:
        args = self.args
        try:
            server: ts.VenueServer = await monitor.start(
                partial(
                    ts.serve,
                    monitor.tracking(demo.venue_handler),
                    self.identity,
                    self.registry,
                    args.host,
                    args.port,
                    config=self.config,
                    messages=demo.Message,
                    ssl_context=self.ssl_context,
                    store=self.store,
                    gc_freeze=True,  # this process is only the venue: the GC policy is safe
                )
            )
        except OSError as exc:  # ts.serve raises it as itself, never in a group
            raise CliError(
                f"cannot listen on {args.host}:{args.port}: {os_reason(exc)} (--host/--port)",
                EXIT_UNAVAILABLE,
            ) from None
        return server


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _header(server: ts.VenueServer, url: str) -> str:
    stats = server.stats()
    live = stats.sessions.get("live", 0)
    away = sum(n for state, n in stats.sessions.items() if state != "live")
    refused = sum(stats.handshake_refusals.values())
    return (
        f"venue on {url}: {live} live, {away} away, {stats.logouts} logouts, "
        f"{stats.sessions_lost} lost, {refused} refused handshakes"
    )
