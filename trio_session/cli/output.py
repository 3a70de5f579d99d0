"""Where output goes: logging (structured lines on stderr) and JSON on stdout.

Why logfmt: one line per event, ``key=value`` pairs that a human can read and
a log shipper can parse (``event=stale session=…``), with no extra dependency.
Library records carry the session id as ``record.session_id``; the CLI's own
lifecycle events add ``event`` and their fields.  Messages pass through
:func:`~trio_session.cli.errors.sanitize`, and an exception attached to a record
is shown as one ``error=`` field: no traceback reaches the terminal unless
``--log-level debug`` asked for it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from .errors import leaves, sanitize

__all__ = [
    "LEVELS",
    "EventLog",
    "LogfmtFormatter",
    "emit_json",
    "event_log",
    "is_cli_record",
    "is_reported_by_cli",
    "setup_logging",
]

LEVELS = ("debug", "info", "warning", "error")

#: The CLI's own lifecycle events (login, stale, resuming, live, reset, ...).
event_log = logging.getLogger("trio_session.cli")


def _quote(value: object) -> str:
    text = sanitize(str(value))
    if text and not any(c in text for c in ' "=\\'):
        return text
    return json.dumps(text)


class LogfmtFormatter(logging.Formatter):
    """``time=… level=… event=… session=… key=value … msg="…"``."""

    def __init__(self, *, tracebacks: bool = False) -> None:
        super().__init__()
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        pairs: list[tuple[str, object]] = [
            ("time", f"{stamp}.{int(record.msecs):03d}"),
            ("level", record.levelname.lower()),
        ]
        event = getattr(record, "event", None)
        if event is not None:
            pairs.append(("event", event))
        else:
            pairs.append(("logger", record.name))
        sid = getattr(record, "session_id", None)
        message = record.getMessage()
        if sid is not None:
            message = message.removeprefix(f"[session {sid}] ")
            if sid != "-":
                pairs.append(("session", sid))
        fields: Mapping[str, object] = getattr(record, "fields", None) or {}
        pairs.extend((k, v) for k, v in fields.items() if v is not None)
        if message:
            pairs.append(("msg", message))
        if record.exc_info and record.exc_info[1] is not None:
            causes = leaves(record.exc_info[1])  # never "ExceptionGroup: …"
            pairs.append(("error", "; ".join(f"{type(e).__name__}: {e}" for e in causes)))
        line = " ".join(f"{k}={_quote(v)}" for k, v in pairs)
        if self.tracebacks and record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is *now*, so a live view that redirects
    stderr (to print log lines above itself) receives them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


_handler: _StderrHandler | None = None


def setup_logging(level: str) -> None:
    """Route log records at ``level`` and above to stderr, as logfmt.

    ``level`` applies to lifecycle events: the library's structured records
    (login, stale, resuming, live, logout, the dead man's switch, refused
    handshakes, ...) and the CLI's own (outage reports, resets as the
    application saw them).  The library's other records show from WARNING up,
    and all of them at ``debug``.  The library's loggers stay at INFO or below
    whatever ``level`` says, so that the live view lists the lifecycle events
    even under ``--log-level warning``; only the terminal handler filters.
    """
    global _handler
    numeric = getattr(logging, level.upper())
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = _StderrHandler()
    _handler.setFormatter(LogfmtFormatter(tracebacks=numeric <= logging.DEBUG))
    _handler.setLevel(numeric)
    if numeric > logging.DEBUG:
        _handler.addFilter(_LibraryFromWarning())
    root.addHandler(_handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("trio_session").setLevel(min(numeric, logging.INFO))
    event_log.setLevel(numeric)


class _LibraryFromWarning(logging.Filter):
    """Lifecycle events at the chosen level, the library's other records from WARNING;
    not the participant's reset, which the command reports itself (with the orders)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if is_reported_by_cli(record):
            return False
        return getattr(record, "event", None) is not None or record.levelno >= logging.WARNING


def is_cli_record(record: logging.LogRecord) -> bool:
    """A record of the CLI's own lifecycle logger."""
    name = record.name
    return name == event_log.name or name.startswith(event_log.name + ".")


def is_reported_by_cli(record: logging.LogRecord) -> bool:
    """The library's record of a participant's reset: the command reports that reset
    itself, with the application's view (the orders in doubt)."""
    if getattr(record, "event", None) != "reset" or is_cli_record(record):
        return False
    fields = getattr(record, "fields", None) or {}
    return fields.get("role") == "participant"


class EventLog:
    """Emit one lifecycle event as a structured record on ``trio_session.cli``."""

    def __call__(
        self,
        event: str,
        message: str = "",
        *,
        level: int = logging.INFO,
        session_id: str | None = None,
        **fields: Any,
    ) -> None:
        extra = {"event": event, "session_id": session_id or "-", "fields": fields}
        event_log.log(level, "%s", message, extra=extra)


def emit_json(data: Mapping[str, Any], stream: TextIO | None = None) -> None:
    """Write one JSON object as one line (the only thing ``--json`` puts on stdout)."""
    out = stream or sys.stdout
    out.write(json.dumps(data, sort_keys=False) + "\n")
    out.flush()


def add_output_options(parser: Any, *, json_help: str, live: bool = True) -> None:
    """``--json`` (and ``--plain`` for commands with a live view)."""
    parser.add_argument("--json", action="store_true", help=json_help)
    if live:
        parser.add_argument(
            "--plain",
            action="store_true",
            help="plain status lines even on a terminal (no live view)",
        )


def progress_stream(args: Any) -> TextIO:
    """Where progress goes: stdout, or stderr when stdout carries ``--json``."""
    return sys.stderr if getattr(args, "json", False) else sys.stdout


def wants_live(args: Any) -> bool:
    """A live view it is: not ``--plain``, progress goes to a terminal, rich is installed."""
    from .live import rich_available

    return not getattr(args, "plain", False) and progress_stream(args).isatty() and rich_available()


def start_logging(args: Any, *, live: bool) -> None:
    """Apply ``--log-level``; by default ``info``, or ``warning`` under a live view
    (which lists the lifecycle events itself)."""
    setup_logging(args.log_level or ("warning" if live else "info"))
