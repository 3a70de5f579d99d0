"""Every way a command can fail ends in one line on stderr and a documented exit code.

The matrix drives each error path through a real ``python -m trio_session`` process
and checks the exact exit code, that stderr is exactly one ``trio-session: error:``
line naming the problem, and that no traceback or exception group is printed.
The report functions are also checked in-process for every SessionError subclass
and for exception groups, which no command may show.
"""

from __future__ import annotations

import errno
import json
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest
import trio

import trio_session as ts
from trio_session.cli import errors

from .cli_helpers import Cli, Keys, assert_clean, keys, serving

# -- fixtures: a venue, a port that never answers ---------------------------------------


@attrs.frozen
class World:
    keys: Keys
    venue_port: int
    silent_port: int
    free_port: int
    venue: Cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A running venue (alice trusted, bob revoked, carol unknown) and a silent port."""
    k = keys(tmp_path_factory.mktemp("keys"))
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel accepts; nobody ever answers
    with serving(k, "--log-level", "info") as (venue, port):
        yield World(k, port, silent.getsockname()[1], _free_port(), venue)
    silent.close()


# -- the matrix ------------------------------------------------------------------------

Argv = Callable[[World], list[str]]


def _connect(
    w: World,
    *extra: str,
    url: str | None = None,
    identity: Path | None = None,
    venue_key: str | None = None,
) -> list[str]:
    return [
        "connect",
        url or f"ws://127.0.0.1:{w.venue_port}/",
        "--identity",
        str(identity or w.keys.alice),
        "--venue-key",
        venue_key or str(w.keys.venue_pub),
        "--log-level",
        "error",
        "--plain",
        "--seconds",
        "0.5",
        *extra,
    ]


def _serve(w: World, *extra: str, identity: Path | None = None) -> list[str]:
    return [
        "serve",
        "--identity",
        str(identity or w.keys.venue),
        "--registry",
        str(w.keys.registry),
        "--log-level",
        "error",
        "--plain",
        *extra,
    ]


@attrs.frozen
class Case:
    argv: Argv
    code: int
    says: tuple[str, ...]


CASES: dict[str, Case] = {
    # arguments and files (exit 2)
    "port out of range": Case(lambda w: _serve(w, "--port", "99999"), 2, ("--port", "0..65535")),
    "port not a number": Case(lambda w: _serve(w, "--port", "http"), 2, ("--port",)),
    "registry as identity": Case(
        lambda w: _serve(w, identity=w.keys.registry),
        2,
        ("--identity", "registry.json", "key registry file", "keygen"),
    ),
    "missing identity": Case(
        lambda w: _connect(w, identity=w.keys.dir / "nope.key"), 2, ("nope.key", "no such file")
    ),
    "identity readable by others": Case(
        lambda w: _connect(w, identity=_open_copy(w.keys.alice)), 2, ("chmod 600",)
    ),
    "identity as registry": Case(
        lambda w: ["serve", "--identity", str(w.keys.venue), "--registry", str(w.keys.alice)],
        2,
        ("--registry", "alice.key", "identity file"),
    ),
    "identity as venue key": Case(
        lambda w: _connect(w, venue_key=str(w.keys.venue)),
        2,
        ("--venue-key", "private key", ".pub"),
    ),
    "short venue key": Case(lambda w: _connect(w, venue_key="abcd"), 2, ("64 hex digits",)),
    "http URL": Case(lambda w: _connect(w, url="http://127.0.0.1:1/"), 2, ("ws://", "wss://")),
    "URL without host": Case(lambda w: _connect(w, url="ws:///x"), 2, ("no host",)),
    "URL port out of range": Case(lambda w: _connect(w, url="ws://127.0.0.1:99999/"), 2, ("port",)),
    "--ca with ws://": Case(
        lambda w: _connect(w, "--ca", str(w.keys.venue_pub)), 2, ("--ca", "wss://")
    ),
    "--ca not a certificate": Case(
        lambda w: _connect(w, "--ca", str(w.keys.venue_pub), url="wss://127.0.0.1:1/"),
        2,
        ("--ca", "PEM"),
    ),
    "--tls-cert without --tls-key": Case(
        lambda w: _serve(w, "--tls-cert", str(w.keys.venue_pub)), 2, ("--tls-key",)
    ),
    "inconsistent timers": Case(
        lambda w: _connect(w, "--heartbeat-timeout", "1"),
        2,
        ("--heartbeat-timeout", "--heartbeat-interval"),
    ),
    "unknown command": Case(lambda w: ["trade"], 2, ("invalid choice",)),
    # cannot listen (exit 3)
    "port in use": Case(
        lambda w: _serve(w, "--port", str(w.venue_port)), 3, ("address already in use",)
    ),
    "host not on this machine": Case(
        lambda w: _serve(w, "--host", "192.0.2.1", "--port", "0"),
        3,
        ("192.0.2.1", "cannot assign requested address"),
    ),
    "metrics port in use": Case(
        lambda w: _serve(w, "--port", "0", "--metrics-port", str(w.venue_port)),
        3,
        ("metrics", "address already in use"),
    ),
    # the session fails (exit 1)
    "venue unreachable": Case(
        lambda w: _connect(w, url=f"ws://127.0.0.1:{w.free_port}/"),
        1,
        ("cannot connect", "connection refused"),
    ),
    "handshake timeout": Case(
        lambda w: _connect(w, "--handshake-timeout", "0.5", url=f"ws://127.0.0.1:{w.silent_port}/"),
        1,
        ("did not answer", "HandshakeTimeout"),
    ),
    "TLS to a ws:// venue": Case(
        lambda w: _connect(w, url=f"wss://127.0.0.1:{w.venue_port}/"), 1, ("TLS",)
    ),
    "unknown key (AuthenticationError UNKNOWN_KEY)": Case(
        lambda w: _connect(w, identity=w.keys.carol),
        1,
        ("does not know key id 'carol'", "trio-session registry add REGISTRY carol "),
    ),
    "revoked key (AuthenticationError KEY_REVOKED)": Case(
        lambda w: _connect(w, identity=w.keys.bob), 1, ("revoked key id 'bob'", "keygen")
    ),
    "wrong venue key (AuthenticationError AUTH_FAILED)": Case(
        lambda w: _connect(w, venue_key=(w.keys.dir / "carol.key.pub").read_text().strip()),
        1,
        ("venue signature does not verify", "--venue-key"),
    ),
}


def _open_copy(identity: Path) -> Path:
    copy = identity.with_name("open-" + identity.name)
    copy.write_bytes(identity.read_bytes())
    copy.chmod(0o644)
    return copy


@pytest.mark.parametrize("name", list(CASES))
def test_error_path(world: World, name: str) -> None:
    case = CASES[name]
    cli = Cli(*case.argv(world), cwd=world.keys.dir)
    code = cli.finish(timeout=20)
    assert_clean(cli.dump())
    assert code == case.code, cli.dump()
    assert len(cli.err) == 1, cli.dump()
    (line,) = cli.err
    assert line.startswith("trio-session: error: "), line
    for text in case.says:
        assert text in line, line
    if case.code != 2:
        return
    assert cli.out == [], cli.dump()  # nothing started


def test_unknown_key_fix_is_the_exact_command(world: World) -> None:
    """The printed fix, run as printed (with the registry path), lets carol in."""
    cli = Cli(*_connect(world, identity=world.keys.carol), cwd=world.keys.dir)
    assert cli.finish() == 1
    fix = cli.err[0].split("on the venue run: ")[1].split(" (then")[0]
    argv = fix.split()[1:]
    assert argv[:3] == ["registry", "add", "REGISTRY"]
    public = ts.Identity.load(world.keys.carol).public_key_hex
    assert argv[3:] == ["carol", public]


# -- signals ---------------------------------------------------------------------------


def _assert_stopped(cli: Cli, code: int, line: str) -> None:
    assert cli.finish() == code, cli.dump()
    assert_clean(cli.dump())
    assert cli.err == [line], cli.dump()


def test_ctrl_c_while_serving(world: World) -> None:
    cli = Cli(*_serve(world, "--port", "0"))
    cli.wait_for("listening on")
    cli.signal(signal.SIGINT)
    _assert_stopped(cli, 130, "trio-session: interrupted (Ctrl-C)")


def test_sigterm_while_serving(world: World) -> None:
    cli = Cli(*_serve(world, "--port", "0"))
    cli.wait_for("listening on")
    cli.signal(signal.SIGTERM)
    _assert_stopped(cli, 143, "trio-session: stopped (SIGTERM)")


def test_ctrl_c_while_connecting() -> None:
    """Ctrl-C while the handshake waits on a venue that accepted and went silent."""
    accepted = threading.Event()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        conns: list[socket.socket] = []

        def accept() -> None:
            conn, _ = server.accept()
            conns.append(conn)
            accepted.set()

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        port = server.getsockname()[1]
        identity = ts.Identity.generate()
        cli = _connect_with_generated(identity, port)
        assert accepted.wait(10), cli.dump()
        cli.signal(signal.SIGINT)
        _assert_stopped(cli, 130, "trio-session: interrupted (Ctrl-C)")
        for conn in conns:
            conn.close()


def _connect_with_generated(identity: ts.Identity, port: int) -> Cli:
    import tempfile

    directory = Path(tempfile.mkdtemp())
    identity.save(directory / "p.key")
    return Cli(
        "connect",
        f"ws://127.0.0.1:{port}/",
        "--identity",
        str(directory / "p.key"),
        "--venue-key",
        ts.Identity.generate().public_key_hex,
        "--handshake-timeout",
        "30",
        "--log-level",
        "error",
    )


def test_ctrl_c_during_the_demo() -> None:
    cli = Cli("demo", "--seconds", "30", "--plain", "--log-level", "error")
    cli.wait_for(r"orders \d+")  # trading
    cli.signal(signal.SIGINT)
    _assert_stopped(cli, 130, "trio-session: interrupted (Ctrl-C)")


def test_ctrl_c_while_trading_logs_out(world: World) -> None:
    """Ctrl-C ends a participant the way leaving ``ts.connect`` does: a logout, so the
    venue's dead man's switch does not fire."""
    mark = len(world.venue.err)
    cli = Cli(*_connect(world)[:-2], "--seconds", "30")
    login = world.venue.wait_for(r"event=login session=(\w+)", stream="stderr", since=mark)
    cli.wait_for("orders", timeout=10)
    cli.signal(signal.SIGINT)
    _assert_stopped(cli, 130, "trio-session: interrupted (Ctrl-C)")
    world.venue.wait_for(rf"event=logout session={login[1]} ", stream="stderr")


# -- the report functions, in-process ---------------------------------------------------


def _every_session_error() -> Iterator[ts.SessionError]:
    yield ts.SessionError("internal", code=ts.CloseCode.INTERNAL_ERROR)
    yield ts.AuthenticationError(
        "peer closed the session: UNKNOWN_KEY", code=ts.CloseCode.UNKNOWN_KEY
    )
    yield ts.LocalProtocolError("sending before the handshake")
    yield ts.RemoteProtocolError("unexpected frame", remote=True)
    yield ts.FrameError("truncated frame", remote=True)
    yield ts.IntegrityError("tag does not verify", remote=True)
    yield ts.SequenceError("gap", remote=True)
    yield ts.HeartbeatTimeout("no heartbeat for 15s")
    yield ts.RekeyTimeout("rekey not completed")
    yield ts.HandshakeTimeout("handshake not completed in 5s")
    yield ts.ConnectionLost(
        "cannot connect to h:1: OSError: all attempts failed <- ConnectionRefusedError: refused"
    )
    yield ts.ResumeRefused("peer closed the session: RESUME_REFUSED")
    yield ts.SessionReset("a new session replaced it")
    yield ts.RateLimited("slow down", retry_after=2.0)
    yield ts.SessionClosed(
        "peer closed the session: SLOW_CONSUMER", code=ts.CloseCode.SLOW_CONSUMER
    )
    yield ts.SlowConsumer("participant consumed nothing for 30s")
    yield ts.SessionExpired("participant did not resume within 60s")
    yield ts.MemoryBudgetExceeded("the venue's buffers reached max_buffered_bytes")
    yield ts.ControlFlood("peer sent HEARTBEAT beyond its control-frame allowance")
    yield ts.TooManySessions("key already has 8 sessions", retry_after=5.0)
    yield ts.MessageRejected("rejected", ref_seq=3, reason_code=ts.RejectCode.REJECTED)
    yield ts.InvalidMessage("bad message", seq=4)
    yield ts.StoreError("store venue.db is in use by another process (pid 7)", path="venue.db")


def _subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    subs: list[type] = cls.__subclasses__()
    for sub in subs:
        found |= {sub} | _subclasses(sub)
    return found


def test_every_session_error_is_one_clean_line() -> None:
    examples = list(_every_session_error())
    covered = {type(e) for e in examples}
    public = {getattr(ts, name) for name in ts.__all__}
    assert _subclasses(ts.SessionError) & public <= covered | {ts.ProtocolError}
    for exc in examples:
        wrapped = BaseExceptionGroup("nursery", [exc, trio.Cancelled._create()])
        for raised in (exc, wrapped):
            lines, code = errors.report(raised)
            # A store file that cannot be used is a bad file (2), like a bad key file.
            expected = errors.EXIT_USAGE if isinstance(exc, ts.StoreError) else errors.EXIT_FAILED
            assert code == expected, exc
            assert len(lines) == 1 and "\n" not in lines[0], lines
            assert_clean(lines[0])
            assert type(exc).__name__ in lines[0]


def test_gave_up_names_the_last_error() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    last = ts.ConnectionLost("connection lost: OSError: all attempts to connect failed")
    last.__cause__ = OSError("all attempts to connect failed")
    last.__cause__.__cause__ = ExceptionGroup("attempts", [refused])
    gave_up = ts.ConnectionLost("no connection for 3.0s; giving up")
    gave_up.__cause__ = last
    (line,), code = errors.report(gave_up)
    assert code == 1
    assert line == (
        "ConnectionLost: no connection for 3.0s; giving up (last error: connection refused "
        "(nothing listens there: is the venue running?))"
    )


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (ExceptionGroup("g", [ValueError("bad URL")]), 2, "bad URL"),
        (
            BaseExceptionGroup("g", [BaseExceptionGroup("h", [KeyboardInterrupt()])]),
            130,
            "interrupted (Ctrl-C)",
        ),
        (errors.Stopped(signal.SIGTERM), 143, "stopped (SIGTERM)"),
        (OSError(errno.EADDRINUSE, "Address in use"), 2, "address already in use"),
        (ExceptionGroup("g", [RuntimeError("boom")]), 70, "internal error: RuntimeError: boom"),
    ],
)
def test_report(exc: BaseException, code: int, line: str) -> None:
    lines, got = errors.report(exc)
    assert got == code
    assert len(lines) == 1 and line in lines[0]


def test_group_of_distinct_causes_gives_one_line_each() -> None:
    group = ExceptionGroup("g", [ValueError("first"), ExceptionGroup("h", [ValueError("second")])])
    assert errors.report(group) == (["first", "second"], 2)


def test_sanitize_joins_lines() -> None:
    assert errors.sanitize("cannot connect:\n  TLS failed\r\n") == "cannot connect: TLS failed"


def test_json_mode_reports_a_failure_as_one_json_object(world: World) -> None:
    cli = Cli(*_connect(world, "--json", url=f"ws://127.0.0.1:{world.free_port}/"))
    assert cli.finish() == 1
    assert_clean(cli.dump())
    (line,) = cli.out
    data = json.loads(line)
    assert data["ok"] is False and data["exit_code"] == 1
    assert "connection refused" in data["error"]
    assert len(cli.err) == 1
