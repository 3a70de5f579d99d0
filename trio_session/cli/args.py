"""Checking every argument before anything starts.

Why up front: a venue that starts listening on a random port because ``--port
99999`` overflowed, or a participant that reports "permissions too open" for a
registry passed as ``--identity``, wastes an operator's time.  Each check here
names the option and the value (never file contents: an identity holds a seed)
and says how to fix it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import ssl
import stat
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

import attrs

import trio_session as ts
from trio_session._config import MODES

from .errors import CliError

__all__ = [
    "TIMER_FIELDS",
    "Parser",
    "Subparsers",
    "Url",
    "add_mode_option",
    "add_store_options",
    "add_timer_options",
    "check_file",
    "client_tls",
    "config_from",
    "load_identity",
    "load_registry",
    "non_negative_int",
    "port",
    "positive_float",
    "public_key",
    "server_tls",
    "store_from",
    "venue_url",
]

_IDENTITY = "trio_session.identity"
_REGISTRY = "trio_session.registry"
_KINDS = {
    _IDENTITY: "an identity file (a private key, written by `trio-session keygen`)",
    _REGISTRY: "a key registry file (written by `trio-session registry add`)",
}
#: Bigger files are not sniffed (the library reports them).
_SNIFF_LIMIT = 1 << 20
_HEX_KEY = re.compile(r"^[0-9a-fA-F]{64}$")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``argument --port: … (see trio-session serve --help)``."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see `{self.prog} --help`)")


#: What ``add_subparsers`` returns; each command module adds its parser to it.
Subparsers: TypeAlias = "argparse._SubParsersAction[Parser]"


# -- scalar values -----------------------------------------------------------------------


def port(text: str) -> int:
    """A TCP port, 0..65535 (0: any free port)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0) or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


# -- files -------------------------------------------------------------------------------


def check_file(path: str, option: str, what: str, *, create: str = "") -> Path:
    """``path`` exists, is a regular file and is readable; else a CliError naming it
    (``create``: the command that makes such a file, suggested when it is missing)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        hint = f"; create one with `{create}`" if create else ""
        raise CliError(f"{option} {path}: no such file (expected {what}){hint}") from None
    except OSError as exc:
        raise CliError(f"{option} {path}: cannot read it ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise CliError(f"{option} {path}: is a directory (expected {what})")
    if not stat.S_ISREG(st.st_mode):
        raise CliError(f"{option} {path}: not a regular file (expected {what})")
    if not os.access(p, os.R_OK):
        raise CliError(f"{option} {path}: permission denied (expected {what})")
    return p


def _sniff(path: Path) -> str | None:
    """The ``format`` of a trio_session JSON file, ``"public-key"`` for a bare hex key."""
    try:
        if path.stat().st_size > _SNIFF_LIMIT:
            return None
        raw = path.read_bytes()
    except OSError:
        return None
    text = raw.decode("utf-8", "replace").strip()
    if _HEX_KEY.match(text):
        return "public-key"
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    fmt = doc.get("format") if isinstance(doc, dict) else None
    return fmt if isinstance(fmt, str) else None


def _wrong_kind(option: str, path: str, found: str | None, wanted: str, fix: str) -> CliError:
    if found == "public-key":
        what = "a public key file"
    else:
        what = _KINDS.get(found or "", "not a trio_session file")
    return CliError(f"{option} {path}: this is {what}, not {wanted}; {fix}")


def load_identity(path: str, option: str = "--identity") -> ts.Identity:
    """Load an identity file, telling a wrong kind of file or open permissions apart."""
    wanted = "an identity file"
    p = check_file(path, option, wanted, create=f"trio-session keygen {path}")
    found = _sniff(p)
    if found != _IDENTITY:
        fix = "pass the file written by `trio-session keygen`"
        raise _wrong_kind(option, path, found, wanted, fix)
    mode = stat.S_IMODE(p.stat().st_mode)
    if os.name == "posix" and mode & 0o077:
        raise CliError(
            f"{option} {path}: permissions too open (mode {mode:#o}; others could read the "
            f"private key); fix: chmod 600 {path}"
        )
    try:
        return ts.Identity.load(p)
    except (ValueError, OSError) as exc:
        raise CliError(f"{option} {path}: {_file_problem(exc, path)}") from None


def load_registry(
    path: str, option: str = "--registry", *, missing_ok: bool = False
) -> ts.KeyRegistry:
    """Load a key registry file (``missing_ok``: a missing file is an empty registry)."""
    wanted = "a key registry file"
    if missing_ok and not os.path.lexists(path):
        return ts.KeyRegistry()
    create = f"trio-session registry add {path} KEY_ID PUBLIC_KEY"
    p = check_file(path, option, wanted, create=create)
    found = _sniff(p)
    if found != _REGISTRY:
        fix = "pass the file written by `trio-session registry add`"
        raise _wrong_kind(option, path, found, wanted, fix)
    try:
        return ts.KeyRegistry.load(p)
    except (ValueError, OSError) as exc:
        raise CliError(f"{option} {path}: {_file_problem(exc, path)}") from None


def _file_problem(exc: BaseException, path: str) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    # The library's messages name the file already ("identity file 'x': ..."): keep the problem.
    text = str(exc)
    for prefix in (f"identity file {path!r}", f"key registry file {path!r}"):
        if text.startswith(prefix):
            return text[len(prefix) :].lstrip(": ") or text
    return text


def public_key(text: str, option: str) -> bytes:
    """A 32-byte Ed25519 public key: 64 hex digits, or a file holding them (``.pub``)."""
    candidate = text.strip()
    if _HEX_KEY.match(candidate):
        return bytes.fromhex(candidate)
    if os.path.lexists(text):
        p = check_file(text, option, "a public key file (64 hex digits)")
        found = _sniff(p)
        if found == "public-key":
            return bytes.fromhex(p.read_text(encoding="ascii").strip())
        if found == _IDENTITY:
            raise CliError(
                f"{option} {text}: this is an identity file, which holds a private key; pass "
                f"its public key instead (the {text}.pub file `trio-session keygen` wrote, "
                "or the hex it printed) and never share the identity file"
            )
        raise _wrong_kind(
            option, text, found, "a public key", "pass 64 hex digits or a .pub file from keygen"
        )
    if re.fullmatch(r"[0-9a-fA-F]*", candidate):
        raise CliError(
            f"{option}: a public key is 64 hex digits (32 bytes), got {len(candidate)} digits"
        )
    raise CliError(f"{option} {text}: neither 64 hex digits nor an existing public key file")


# -- URLs and TLS ------------------------------------------------------------------------


@attrs.frozen
class Url:
    text: str
    scheme: str
    host: str
    port: int


def venue_url(text: str) -> Url:
    """A ``ws://`` or ``wss://`` URL with a host and a valid port."""
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("ws", "wss"):
        shown = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise CliError(
            f"URL {text!r}: must start with ws:// or wss:// (got {shown}), "
            "e.g. ws://127.0.0.1:8765/"
        )
    if not parts.hostname:
        raise CliError(f"URL {text!r}: no host, e.g. ws://127.0.0.1:8765/")
    try:
        explicit = parts.port
    except ValueError:
        raise CliError(f"URL {text!r}: the port must be a number 1..65535") from None
    if explicit == 0:
        raise CliError(f"URL {text!r}: port 0 cannot be connected to; use the venue's port")
    default = 443 if parts.scheme == "wss" else 80
    return Url(text, parts.scheme, parts.hostname, explicit or default)


def client_tls(url: Url, ca: str | None) -> ssl.SSLContext | None:
    """The participant's TLS context: only for wss://, trusting ``--ca`` when given."""
    if url.scheme == "ws":
        if ca is not None:
            raise CliError(
                f"--ca {ca}: only used with wss:// URLs, and {url.text} is ws:// "
                "(use wss://… or drop --ca)"
            )
        return None
    if ca is None:
        return ssl.create_default_context()
    check_file(ca, "--ca", "a PEM CA certificate")
    try:
        return ssl.create_default_context(cafile=ca)
    except (ssl.SSLError, ValueError) as exc:
        raise CliError(f"--ca {ca}: not a PEM CA certificate ({exc})") from None


def server_tls(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The venue's TLS context from ``--tls-cert``/``--tls-key`` (both or neither)."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given, missing = ("--tls-cert", "--tls-key") if cert else ("--tls-key", "--tls-cert")
        raise CliError(f"{given} needs {missing} too (a certificate chain and its private key)")
    check_file(cert, "--tls-cert", "a PEM certificate chain")
    check_file(key, "--tls-key", "a PEM private key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise CliError(f"--tls-key {key} is not the private key of --tls-cert {cert}") from None
        raise CliError(
            f"--tls-cert {cert} / --tls-key {key}: not usable PEM files ({exc})"
        ) from None
    return ctx


# -- session timers ----------------------------------------------------------------------

#: Timer options: field of SessionConfig -> help text.
TIMER_FIELDS: dict[str, str] = {
    "heartbeat_interval": "seconds between idle heartbeats; the venue's value is used by both ends",
    "heartbeat_timeout": "declare the peer dead after this many silent seconds",
    "handshake_timeout": "connect + upgrade + authentication deadline, seconds",
    "ratchet_interval": "seconds between sending-key ratchet steps",
    "rekey_interval": "seconds between Diffie-Hellman rekeys (venue-initiated)",
    "resume_ttl": "seconds the venue keeps a lost participant's session before the dead "
    "man's switch ends it",
}


_CONFIG_FIELDS = frozenset(a.name for a in attrs.fields(ts.SessionConfig))


def _option(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_timer_options(parser: argparse.ArgumentParser, fields: Iterable[str]) -> None:
    """``--heartbeat-interval`` etc., defaulting to the library's SessionConfig values."""
    defaults = ts.SessionConfig()
    group = parser.add_argument_group("session timers (seconds)")
    for field in fields:
        group.add_argument(
            _option(field),
            type=positive_float,
            default=None,
            metavar="S",
            help=f"{TIMER_FIELDS[field]} (default {getattr(defaults, field)})",
        )


def add_mode_option(parser: argparse.ArgumentParser, side: str) -> None:
    """``--modes``: the frame protection modes this end accepts, most preferred first."""
    parser.add_argument(
        "--modes",
        type=mode_list,
        default=None,
        metavar="LIST",
        help=f"frame protection modes {side}, most preferred first, comma-separated "
        f"({', '.join(MODES)}); aead also encrypts every frame (default: automatic, "
        "aead over ws:// and either over wss://)",
    )


def mode_list(value: str) -> tuple[str, ...]:
    """``"aead,mac"`` -> ``("aead", "mac")``, each a known mode, none twice."""
    modes = tuple(part.strip() for part in value.split(","))
    unknown = [m for m in modes if m not in MODES]
    if unknown or not all(modes):
        bad = ", ".join(repr(m) for m in unknown) or "an empty name"
        raise argparse.ArgumentTypeError(
            f"{bad} is not a mode; use a comma-separated list of {', '.join(MODES)}"
        )
    if len(set(modes)) != len(modes):
        raise argparse.ArgumentTypeError(f"{value!r} lists a mode twice")
    return modes


def config_from(args: argparse.Namespace, base: ts.SessionConfig | None = None) -> ts.SessionConfig:
    """A SessionConfig from the timer and mode options given; errors name the options."""
    base = base or ts.SessionConfig()
    changes: dict[str, Any] = {
        f: getattr(args, f) for f in TIMER_FIELDS if getattr(args, f, None) is not None
    }
    if getattr(args, "modes", None) is not None:
        changes["modes"] = args.modes
    rekey = changes.get("rekey_interval")
    if rekey is not None and base.reject_after <= 1.5 * rekey:
        # A rekey not completed within 1.5 intervals ends the connection (resumable).
        changes["reject_after"] = 1.5 * rekey
    try:
        return attrs.evolve(base, **changes)
    except (ValueError, TypeError) as exc:
        text = re.sub(r"(?:SessionConfig\.)?\b([a-z]+(?:_[a-z]+)+)\b", _field_to_option, str(exc))
        raise CliError(f"{text}; see --help for the defaults") from None


def _field_to_option(match: re.Match[str]) -> str:
    field = match[1]
    return _option(field) if field in _CONFIG_FIELDS else match[0]


# -- session store ------------------------------------------------------------------------


def add_store_options(parser: argparse.ArgumentParser, what: str) -> None:
    """``--store PATH`` and ``--store-sync``."""
    group = parser.add_argument_group("session store")
    group.add_argument(
        "--store",
        metavar="PATH",
        help=f"keep {what} in this SQLite file (created 0600), so that a restart, even "
        "after kill -9, resumes them and loses no message (default: in memory only)",
    )
    group.add_argument(
        "--store-sync",
        choices=("normal", "full"),
        default="normal",
        help="normal: survives a process crash (default); full: also a power loss, "
        "each write waits for the disk",
    )


def store_from(args: argparse.Namespace) -> ts.SqliteStore | None:
    """The ``--store`` of the command line (checked when the command opens it)."""
    path: str | None = args.store
    if path is None:
        return None
    if os.path.isdir(path):
        raise CliError(f"--store {path}: is a directory (expected a store file)")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CliError(f"--store {path}: directory {directory} does not exist")
    return ts.SqliteStore(path, synchronous=args.store_sync)
