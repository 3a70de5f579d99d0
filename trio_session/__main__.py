"""Command line: ``python -m trio_session`` (also installed as ``trio-session``).

Subcommands::

    demo      run the demo venue and participant on loopback (default 5 s)
    keygen    write a new identity file (mode 0600) and print its public key
    registry  add a participant's public key to a registry file
    serve     run the demo venue
    connect   run the demo participant against a venue URL

Errors (bad arguments, missing or unreadable files, refused connections) are
reported as one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import ssl
import sys
from collections.abc import Sequence
from functools import partial

import trio

from . import __version__
from ._errors import SessionError
from ._identity import Identity, KeyRegistry

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2


class _CliError(Exception):
    """A problem to report as one line."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trio-session",
        description="Authenticated, self-healing WebSocket sessions for Trio.",
    )
    p.add_argument("--version", action="version", version=f"trio_session {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run a demo venue and participant on loopback")
    demo.add_argument("--seconds", type=_positive_float, default=5.0, help="trading time (5)")
    demo.add_argument("--faults", type=_non_negative_int, default=0, help="abrupt drops to inject")
    demo.add_argument("--seed", type=int, default=1, help="fault injection seed")
    demo.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    kg = sub.add_parser("keygen", help="write a new identity file and print its public key")
    kg.add_argument("path", help="identity file to create (mode 0600)")
    kg.add_argument("--key-id", help="key id to use (default: derived from the public key)")
    kg.add_argument("--force", action="store_true", help="overwrite an existing file")

    reg = sub.add_parser("registry", help="add a participant key to a registry file")
    reg.add_argument("path", help="registry file (created if missing)")
    reg.add_argument("key_id")
    reg.add_argument("public_key", help="hex Ed25519 public key (from keygen)")

    sv = sub.add_parser("serve", help="run the demo venue")
    sv.add_argument("--identity", required=True, help="venue identity file")
    sv.add_argument("--registry", required=True, help="registry file of participant keys")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8765)
    sv.add_argument("--tls-cert", help="PEM certificate chain (enables wss://)")
    sv.add_argument("--tls-key", help="PEM private key for --tls-cert")

    cn = sub.add_parser("connect", help="run the demo participant against a venue")
    cn.add_argument("url", help="ws:// or wss:// URL of the venue")
    cn.add_argument("--identity", required=True, help="participant identity file")
    cn.add_argument("--venue-key", required=True, help="the venue's hex Ed25519 public key")
    cn.add_argument("--seconds", type=_positive_float, default=5.0)
    cn.add_argument("--ca", help="PEM CA bundle to trust for wss://")
    cn.add_argument("--json", action="store_true")
    return p


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _hex_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise _CliError(f"not a hex public key: {text!r}") from None
    if len(key) != 32:
        raise _CliError(f"public key must be 32 bytes (64 hex digits), got {len(key)}")
    return key


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import print_summary, run_demo

    result = trio.run(partial(run_demo, args.seconds, args.faults, seed=args.seed))
    print_summary(result, sys.stdout, as_json=args.json)
    return EXIT_OK if result.board.ok else EXIT_CHECK_FAILED


def cmd_keygen(args: argparse.Namespace) -> int:
    if os.path.exists(args.path) and not args.force:
        raise _CliError(f"{args.path} exists (use --force to overwrite)")
    ident = Identity.generate(key_id=args.key_id)
    ident.save(args.path)
    print(f"key_id     {ident.key_id}")
    print(f"public_key {ident.public_key_hex}")
    return EXIT_OK


def cmd_registry(args: argparse.Namespace) -> int:
    registry = KeyRegistry.load(args.path) if os.path.exists(args.path) else KeyRegistry()
    registry.add(args.key_id, _hex_key(args.public_key))
    registry.save(args.path)
    print(f"{args.key_id} added to {args.path} ({len(registry)} active keys)")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from . import demo
    from ._server import serve

    ident = Identity.load(args.identity)
    registry = KeyRegistry.load(args.registry)
    ctx = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise _CliError("--tls-cert and --tls-key go together")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(
                    serve,
                    demo.venue_handler,
                    ident,
                    registry,
                    args.host,
                    args.port,
                    config=demo.DEMO_CONFIG,
                    messages=demo.Message,
                    ssl_context=ctx,
                )
            )
            scheme = "wss" if ctx else "ws"
            print(f"venue {ident.key_id} listening on {scheme}://{args.host}:{server.port}/")
            print(f"venue public key {ident.public_key_hex}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a venue stops
        trio.run(main)
    return EXIT_OK


def cmd_connect(args: argparse.Namespace) -> int:
    from . import demo
    from ._client import connect

    ident = Identity.load(args.identity)
    venue_key = _hex_key(args.venue_key)
    ctx = None
    if args.url.startswith("wss://"):
        ctx = (
            ssl.create_default_context(cafile=args.ca) if args.ca else ssl.create_default_context()
        )

    async def main() -> demo.DemoResult:
        board = demo.Scoreboard()
        async with connect(
            args.url,
            ident,
            venue_key,
            config=demo.DEMO_CONFIG,
            messages=demo.Message,
            ssl_context=ctx,
        ) as session:
            await demo.run_participant(session, args.seconds, board)
            stats = session.stats
        return demo.DemoResult(board, stats, 0, args.seconds)

    result = trio.run(main)
    demo.print_summary(result, sys.stdout, as_json=args.json)
    return EXIT_OK if result.board.ok else EXIT_CHECK_FAILED


COMMANDS = {
    "demo": cmd_demo,
    "keygen": cmd_keygen,
    "registry": cmd_registry,
    "serve": cmd_serve,
    "connect": cmd_connect,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (_CliError, ValueError, OSError, SessionError) as exc:
        message = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in message:
            message = f"{message}: {exc.filename}"
        print(f"trio-session: error: {message}", file=sys.stderr)
        return EXIT_CHECK_FAILED if isinstance(exc, SessionError) else EXIT_USAGE
    except KeyboardInterrupt:
        print("trio-session: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
