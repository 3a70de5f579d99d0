"""Command line: ``python -m trio_session`` (also installed as ``trio-session``).

Commands (one module each)::

    demo      run the demo venue and participant on loopback    (demo.py)
    keygen    write a new identity and its .pub file            (keys.py)
    registry  add, revoke or list participant keys              (keys.py)
    serve     run the demo venue                                (serve.py)
    connect   run the demo participant against a venue URL      (connect.py)
    store     inspect or purge a session store file             (store.py)

Shared: argument checks (args.py), one-line errors and exit codes (errors.py),
logging and JSON output (output.py), signals (runtime.py), the session monitor
(monitor.py) behind the live view (live.py) and the Prometheus metrics
(metrics.py).

Exit codes: 0 success; 1 the session failed or the demo's checks failed; 2 a bad
argument, file, key or URL; 3 could not listen (port in use, address not on this
machine); 70 a bug (please report it); 130 Ctrl-C; 143 SIGTERM.  Errors are one
line on stderr, ``trio-session: error: …``; never a traceback.

This package uses only the public API (``import trio_session as ts`` and
``trio_session.testing``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from .args import Parser
from .errors import EXIT_INTERRUPTED, EXIT_SOFTWARE, EXIT_TERMINATED, EXIT_UNAVAILABLE, report
from .output import LEVELS, emit_json, setup_logging

__all__ = ["EXIT_CODES", "build_parser", "main"]

#: Documented exit codes (also in ``--help`` and docs/howto/cli.md).
EXIT_CODES = """\
exit codes: 0 ok; 1 session failed or demo check failed; 2 bad argument, file,
key or URL; 3 cannot listen (port in use, address not on this machine);
70 internal error; 130 Ctrl-C; 143 SIGTERM
"""


def build_parser() -> argparse.ArgumentParser:
    from . import connect, demo, keys, serve, store

    common = Parser(add_help=False)
    common.add_argument(
        "--log-level",
        choices=LEVELS,
        type=str.lower,
        help="log lines on stderr from this level (default: info; warning under a live view)",
    )
    parser = Parser(
        prog="trio-session",
        description="Authenticated, self-healing WebSocket sessions for Trio.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"trio_session {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.add_parser(sub, common)
    keys.add_keygen_parser(sub, common)
    keys.add_registry_parser(sub, common)
    serve.add_parser(sub, common)
    connect.add_parser(sub, common)
    store.add_parser(sub, common)
    for action in sub.choices.values():
        action.epilog = ((action.epilog or "") + "\n\n" + EXIT_CODES).strip()
        action.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit code (never raise, never print a traceback)."""
    args: argparse.Namespace | None = None
    try:
        args = build_parser().parse_args(argv)
        setup_logging(args.log_level or "info")
        code: int = args.run(args)
        return code
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    except BaseException as exc:
        lines, code = report(exc)
        stopped = code in (EXIT_INTERRUPTED, EXIT_TERMINATED)
        prefix = "trio-session: " if stopped else "trio-session: error: "
        for line in lines:
            print(prefix + line, file=sys.stderr, flush=True)
        if code == EXIT_SOFTWARE:
            logging.getLogger("trio_session.cli").debug("internal error", exc_info=exc)
        if args is not None and getattr(args, "json", False) and code <= EXIT_UNAVAILABLE:
            emit_json({"ok": False, "error": lines[0], "exit_code": code})
        return code
