"""Exit codes and one-line error reports.

Why a module of its own: every command must end the same way — one line per real
cause on stderr and a documented exit code — whatever raised.  The library
raises one typed error, but a signal can still reach the command inside a Trio
nursery (as a group), and the transport chains causes; a user needs neither, so
this module flattens groups to their leaves, drops cancellations, and names the
innermost cause in plain words (``connection refused``, ``address already in
use``) instead of a type-name chain.
"""

from __future__ import annotations

import errno
import signal
import socket
import ssl
from collections.abc import Iterator

import trio

import trio_session as ts

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SOFTWARE",
    "EXIT_TERMINATED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CliError",
    "Stopped",
    "describe",
    "leaves",
    "os_reason",
    "report",
    "sanitize",
]

#: The command did what it was asked (the demo's checks passed).
EXIT_OK = 0
#: The session failed (refused, unreachable, gave up) or the demo's checks failed.
EXIT_FAILED = 1
#: Bad command line: an argument, file, key or URL (the message names it and the fix).
EXIT_USAGE = 2
#: Could not listen: port in use, address not on this machine, no permission.
EXIT_UNAVAILABLE = 3
#: A bug in trio_session: please report it (``--log-level debug`` shows the traceback).
EXIT_SOFTWARE = 70
#: Stopped by Ctrl-C (SIGINT) or SIGTERM: 128 + the signal number, as shells do.
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM


class CliError(Exception):
    """A problem reported as one line on stderr, with its exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Stopped(BaseException):
    """The command was stopped by a signal after an orderly shutdown.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on
    the way turns a stop into an error report.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def leaves(exc: BaseException) -> list[BaseException]:
    """The real causes inside ``exc``: groups flattened, Cancelled dropped, no repeats."""
    found: list[BaseException] = []
    seen: set[int] = set()

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for inner in e.exceptions:
                walk(inner)
        elif not isinstance(e, trio.Cancelled) and id(e) not in seen:
            seen.add(id(e))
            found.append(e)

    walk(exc)
    return found


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes, innermost last, groups flattened on the way."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
            continue
        yield current
        nxt = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
        if nxt is not None:
            todo.append(nxt)


def sanitize(text: str) -> str:
    """One line: a message that spans lines (an OS or TLS error may) is joined."""
    return " ".join(text.split())


_ERRNO_HINTS = {
    errno.EADDRINUSE: "address already in use (another process listens there; pick another port)",
    errno.EADDRNOTAVAIL: (
        "cannot assign requested address (the host must be an address of this machine, "
        "e.g. 127.0.0.1, or 0.0.0.0 for all)"
    ),
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
    errno.ECONNREFUSED: "connection refused (nothing listens there: is the venue running?)",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "timed out",
}


def os_reason(exc: BaseException) -> str | None:
    """Plain words for the innermost OS or TLS error in ``exc``'s chain, if any."""
    best: OSError | None = None
    for e in _chain(exc):
        if isinstance(e, OSError):
            best = e  # keep the innermost
    if best is None:
        return None
    if isinstance(best, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({best.verify_message}; pass the venue's CA as --ca)"
    if isinstance(best, ssl.SSLError):
        if best.reason == "WRONG_VERSION_NUMBER":
            return "TLS failed (WRONG_VERSION_NUMBER: does the venue serve ws://, not wss://?)"
        return f"TLS failed ({best.reason or best})"
    if isinstance(best, socket.gaierror):
        return f"cannot resolve the host name ({best.strerror})"
    if best.errno in _ERRNO_HINTS:
        return _ERRNO_HINTS[best.errno]
    return best.strerror or sanitize(str(best)) or type(best).__name__


def describe(exc: BaseException) -> str:
    """One line for one leaf error."""
    if isinstance(exc, CliError):
        return sanitize(str(exc))
    if isinstance(exc, ts.SessionError):
        text = sanitize(str(exc)) or type(exc).__name__
        cause = exc.__cause__
        if isinstance(cause, ts.SessionError) and "last error:" not in text:  # why it gave up
            text = f"{text} (last error: {os_reason(cause) or sanitize(str(cause))})"
        elif isinstance(exc, (ts.ConnectionLost, ts.HandshakeTimeout)):
            why = os_reason(exc)
            if why is not None and why not in text:
                text = f"{text}: {why}"
        return f"{type(exc).__name__}: {text}"
    if isinstance(exc, OSError):
        why = os_reason(exc) or type(exc).__name__
        return f"{exc.filename}: {why}" if exc.filename else why
    text = sanitize(str(exc))
    return text or type(exc).__name__


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, CliError):
        return exc.exit_code
    if isinstance(exc, ts.StoreError):  # a store file that cannot be used: a bad file
        return EXIT_USAGE
    if isinstance(exc, ts.SessionError):
        return EXIT_FAILED
    if isinstance(exc, (ValueError, OSError)):
        return EXIT_USAGE
    return EXIT_SOFTWARE


def report(exc: BaseException) -> tuple[list[str], int]:
    """(the lines to print, the exit code) for whatever ended a command."""
    found = leaves(exc)
    for e in found:
        if isinstance(e, KeyboardInterrupt):
            return ["interrupted (Ctrl-C)"], EXIT_INTERRUPTED
        if isinstance(e, Stopped):
            if e.signum == signal.SIGINT:
                return ["interrupted (Ctrl-C)"], EXIT_INTERRUPTED
            return [f"stopped ({e})"], 128 + e.signum
    lines: list[str] = []
    for e in found:
        line = describe(e)
        if not isinstance(e, (CliError, ts.SessionError, ValueError, OSError)):
            line = f"internal error: {type(e).__name__}: {line} (please report this bug)"
        if line not in lines:
            lines.append(line)
    code = exit_code_for(found[0]) if found else EXIT_SOFTWARE
    return lines or ["internal error (please report this bug)"], code
