"""The library's error paths through the public API: one exact type, one line, never a group.

Each case drives one failure through ``connect``, ``serve``, a ``Session``
method or ``MemoryVenue`` and returns what the application caught.  The test
asserts the exact type (not a subclass), that it is not a ``BaseExceptionGroup``,
and that its message is one line without exception-group text; cases also
check the error's code and the detail that tells the user what happened.

Every public ``SessionError`` subclass appears (``ProtocolError`` is abstract).
Real-socket cases exercise the transport's errors; the others run over memory
under ``MockClock``, some against a *hostile venue*: the public sans-IO
``VenueConnection`` driven by hand, so it can send what a correct venue never
sends (a bad tag, a gap, a malformed notice, data beyond the credit window).
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import trio_session as ts
from trio_session._transport import MemoryTransport, Transport, memory_transport_pair
from trio_session.protocol import VenueConnection
from trio_session.protocol._wire import FrameType, Heartbeat, encode_body
from trio_session.testing import FaultyProxy, memory_venue

from . import forge
from ._certs import tls_contexts
from .runtime_helpers import NO_RESTART, OTHER, PARTICIPANT, VENUE, Echo, registry, url, venue

Case = Callable[[], Awaitable[BaseException]]
CASES: dict[str, tuple[type[BaseException], Case, bool]] = {}


def case(expected: type[BaseException], *, mock_clock: bool = False) -> Callable[[Case], Case]:
    """Register a case: ``expected`` is the exact type the application must catch."""

    def register(fn: Case) -> Case:
        CASES[fn.__name__] = (expected, fn, mock_clock)
        return fn

    return register


async def caught(fn: Callable[[], Awaitable[object]]) -> BaseException:
    try:
        await fn()
    except BaseException as exc:  # the point: whatever it is, it is returned as itself
        return exc
    raise AssertionError("no error was raised")


async def connect_once(target: str, identity: ts.Identity = PARTICIPANT, **options: Any) -> None:
    async with ts.connect(target, identity, VENUE.public_key, **options):
        pass


# -- connect() ---------------------------------------------------------------------------------


@case(ValueError)
async def connect_http_url() -> BaseException:
    exc = await caught(partial(connect_once, "http://127.0.0.1:1/"))
    assert "'http://127.0.0.1:1/'" in str(exc) and "ws://" in str(exc)
    return exc


@case(ValueError)
async def connect_malformed_url() -> BaseException:
    exc = await caught(partial(connect_once, "ws://[::1:80/"))
    assert "'ws://[::1:80/'" in str(exc)
    return exc


@case(ValueError)
async def connect_port_out_of_range() -> BaseException:
    return await caught(partial(connect_once, "ws://127.0.0.1:99999/"))


@case(ValueError)
async def connect_ssl_context_with_ws() -> BaseException:
    ctx = tls_contexts().client
    exc = await caught(partial(connect_once, "ws://127.0.0.1:1/", ssl_context=ctx))
    assert "wss://" in str(exc)
    return exc


@case(ValueError)
async def connect_short_venue_key() -> BaseException:
    async def short() -> None:
        async with ts.connect("ws://127.0.0.1:1/", PARTICIPANT, b"short"):
            pass

    exc = await caught(short)
    assert "32-byte" in str(exc) and "got 5 bytes" in str(exc)
    return exc


@case(ts.ConnectionLost)
async def connect_refused() -> BaseException:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exc = await caught(partial(connect_once, f"ws://127.0.0.1:{port}/"))
    assert f"cannot connect to 127.0.0.1:{port}" in str(exc)
    assert "ConnectionRefusedError" in str(exc)
    return exc


@case(ts.HandshakeTimeout)
async def connect_to_a_silent_server() -> BaseException:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, _hold_open, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        config = ts.SessionConfig(handshake_timeout=0.3)
        exc = await caught(partial(connect_once, f"ws://127.0.0.1:{port}/", config=config))
        nursery.cancel_scope.cancel()
    assert "0.3s" in str(exc)
    return exc


async def _hold_open(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


@case(ts.AuthenticationError)
async def connect_unknown_key() -> BaseException:
    async with venue() as server:
        exc = await caught(partial(connect_once, url(server), OTHER))
    assert isinstance(exc, ts.AuthenticationError) and exc.code is ts.CloseCode.UNKNOWN_KEY
    return exc


@case(ts.AuthenticationError)
async def connect_revoked_key() -> BaseException:
    reg = registry()
    reg.revoke(PARTICIPANT.key_id)
    async with venue(reg=reg) as server:
        exc = await caught(partial(connect_once, url(server)))
    assert isinstance(exc, ts.AuthenticationError) and exc.code is ts.CloseCode.KEY_REVOKED
    return exc


@case(ts.AuthenticationError)
async def connect_wrong_venue_key() -> BaseException:
    async with venue() as server:

        async def pinned_wrong() -> None:
            async with ts.connect(url(server), PARTICIPANT, OTHER.public_key):
                pass

        exc = await caught(pinned_wrong)
    assert isinstance(exc, ts.AuthenticationError) and exc.code is ts.CloseCode.AUTH_FAILED
    return exc


@case(ts.RateLimited)
async def connect_rate_limited() -> BaseException:
    config = ts.SessionConfig(handshake_rate_per_key=0.01)  # one login, then wait 100 s
    async with venue(config=config) as server:
        await connect_once(url(server))
        exc = await caught(partial(connect_once, url(server)))
    assert isinstance(exc, ts.RateLimited) and exc.retry_after > 10
    return exc


@case(ts.ConnectionLost)
async def connect_untrusted_certificate() -> BaseException:
    tls = tls_contexts()
    async with venue(ssl_context=tls.server) as server:
        exc = await caught(partial(connect_once, url(server, "wss")))  # default trust store
    assert "CERTIFICATE_VERIFY_FAILED" in str(exc)
    return exc


@case(ts.ConnectionLost)
async def connect_wss_to_a_ws_venue() -> BaseException:
    async with venue() as server:
        exc = await caught(
            partial(connect_once, url(server, "wss"), ssl_context=tls_contexts().client)
        )
    assert "SSL" in str(exc)
    return exc


# -- serve() -----------------------------------------------------------------------------------


async def start_serve(host: str, port: int) -> BaseException:
    async with trio.open_nursery() as nursery:
        exc = await caught(
            partial(nursery.start, partial(ts.serve, Echo(), VENUE, registry(), host, port))
        )
        nursery.cancel_scope.cancel()
    return exc


@case(OSError)
async def serve_port_in_use() -> BaseException:
    async with venue() as server:
        exc = await start_serve("127.0.0.1", server.port)
    assert f"cannot listen on 127.0.0.1:{server.port}" in str(exc)
    assert isinstance(exc, OSError) and exc.errno is not None
    return exc


@case(OSError)
async def serve_address_not_on_this_machine() -> BaseException:
    exc = await start_serve("192.0.2.1", 0)  # TEST-NET-1: never a local address
    assert "cannot listen on 192.0.2.1:0" in str(exc)
    return exc


@case(ValueError)
async def serve_port_out_of_range() -> BaseException:
    exc = await start_serve("127.0.0.1", 99999)
    assert "99999" in str(exc)
    return exc


# -- Session methods over real sockets ------------------------------------------------------


@case(ts.SessionClosed)
async def send_after_close() -> BaseException:
    async with venue() as server:
        async with ts.connect(url(server), PARTICIPANT, VENUE.public_key) as session:
            pass
        return await caught(partial(session.send, b"late"))


@case(ts.LocalProtocolError)
async def send_oversized() -> BaseException:
    async with (
        venue() as server,
        ts.connect(url(server), PARTICIPANT, VENUE.public_key) as session,
    ):
        exc = await caught(partial(session.send, b"x" * (session.config.max_message_size + 1)))
    assert "max_message_size" in str(exc)
    return exc


@case(TypeError)
async def send_wrong_type() -> BaseException:
    async with (
        venue() as server,
        ts.connect(url(server), PARTICIPANT, VENUE.public_key) as session,
    ):
        return await caught(partial(session.send, "text"))  # type: ignore[arg-type]


@case(ts.ConnectionLost)
async def send_fail_fast_while_stale() -> BaseException:
    async with venue() as server, trio.open_nursery() as nursery:
        proxy = await nursery.start(partial(FaultyProxy.serve, "127.0.0.1", server.port))
        target = f"ws://127.0.0.1:{proxy.port}/"
        async with ts.connect(target, PARTICIPANT, VENUE.public_key) as session:
            proxy.reset_all()
            await session.wait_state(ts.State.STALE)
            exc = await caught(partial(session.send, b"order", fail_fast=True))
        nursery.cancel_scope.cancel()
    assert "fail_fast" in str(exc)
    return exc


# -- over memory, under the mock clock: the session's own errors ----------------------------


class Order(msgspec.Struct, tag=True):
    qty: int


async def _reject_everything(session: ts.Session) -> None:
    async for _ in session:
        session.reject(session.last_seq, "no", code=ts.RejectCode.REJECTED)


@case(ts.MessageRejected, mock_clock=True)
async def receive_a_reject() -> BaseException:
    async with (
        memory_venue(_reject_everything, VENUE, registry()) as mv,
        mv.connect(PARTICIPANT) as session,
    ):
        await session.send(b"order")
        exc = await caught(session.receive)
        assert session.state is ts.State.LIVE  # per message: the session goes on
    assert isinstance(exc, ts.MessageRejected) and exc.ref_seq == 0 and exc.reason == "no"
    return exc


@case(ts.InvalidMessage, mock_clock=True)
async def receive_an_invalid_message() -> BaseException:
    async def send_garbage(session: ts.Session) -> None:
        await session.send(b"\xc1 not msgpack")
        await trio.sleep_forever()

    async with (
        memory_venue(send_garbage, VENUE, registry()) as mv,
        mv.connect(PARTICIPANT, messages=Order) as session,
    ):
        exc = await caught(session.receive)
    assert isinstance(exc, ts.InvalidMessage) and exc.seq == 0
    return exc


@case(ts.SessionReset, mock_clock=True)
async def receive_after_the_venue_lost_the_session() -> BaseException:
    config = ts.SessionConfig(resume_ttl=5.0)
    hold = Echo(echo=False)
    async with (
        memory_venue(hold, VENUE, registry(), config=config) as mv,
        mv.connect(PARTICIPANT, config=config) as session,
    ):
        await session.send(b"order 0")
        await trio.testing.wait_all_tasks_blocked()
        mv.break_all()
        mv.refuse_connections()
        await session.send(b"order 1")  # queued: goes out on the new session
        await trio.sleep(config.resume_ttl + 1)
        mv.refuse_connections(False)
        exc = await caught(session.receive)
    assert isinstance(exc, ts.SessionReset) and exc.last_delivered_seq == -1
    return exc


@case(ts.SlowConsumer, mock_clock=True)
async def participant_that_stops_reading() -> BaseException:
    config = ts.SessionConfig(slow_consumer_timeout=2.0, inbound_capacity=8, outbound_capacity=8)

    async def flood(session: ts.Session) -> None:
        for i in range(1000):
            await session.send(b"%d" % i)

    async with (
        memory_venue(flood, VENUE, registry(), config=config) as mv,
        mv.connect(PARTICIPANT, config=config, restart=NO_RESTART) as session,
    ):
        await trio.sleep(5)  # reads nothing for longer than slow_consumer_timeout
        while True:  # what was received before the close is still delivered, then the error
            try:
                await session.receive()
            except ts.SessionError as exc:
                return exc


@case(ts.SessionExpired, mock_clock=True)
async def venue_handler_after_the_dead_mans_switch() -> BaseException:
    config = ts.SessionConfig(resume_ttl=3.0)
    handler = Echo()
    async with memory_venue(handler, VENUE, registry(), config=config) as mv:
        with trio.CancelScope() as scope:
            async with mv.connect(PARTICIPANT, config=config) as session:
                await session.send(b"x")
                await session.receive()
                scope.cancel()  # vanish without a logout
        await trio.sleep(config.resume_ttl + 1)
    (exc,) = handler.ended
    assert exc is not None
    return exc


@case(ts.ConnectionLost, mock_clock=True)
async def supervisor_gives_up_after_max_outage() -> BaseException:
    policy = ts.RestartPolicy(max_outage=10.0)
    async with (
        memory_venue(Echo(), VENUE, registry()) as mv,
        mv.connect(PARTICIPANT, restart=policy) as session,
    ):
        await session.send(b"echoed")
        assert await session.receive() == b"echoed"
        mv.break_all()
        mv.refuse_connections()
        await session.send(b"never sent")
        exc = await caught(session.receive)
    assert "no connection for 10.0s" in str(exc)
    assert isinstance(exc.__cause__, ts.ConnectionLost)  # the last attempt's error
    return exc


@case(ts.SessionError, mock_clock=True)
async def transport_factory_that_breaks_on_a_reconnect() -> BaseException:
    # A bug below the session (here: the factory raises something untyped) ends the
    # session with one typed INTERNAL_ERROR, the original as its cause.
    async with memory_venue(Echo(), VENUE, registry()) as mv:
        calls = 0

        async def factory(nursery: trio.Nursery) -> Transport:
            nonlocal calls
            calls += 1
            if calls > 1:
                raise RuntimeError("factory bug")
            return await mv.connector(nursery)

        async with ts.connect(
            "memory://", PARTICIPANT, VENUE.public_key, transport_factory=factory
        ) as session:
            mv.break_all()
            exc = await caught(session.receive)
    assert isinstance(exc, ts.SessionError) and exc.code is ts.CloseCode.INTERNAL_ERROR
    assert isinstance(exc.__cause__, RuntimeError)
    return exc


# -- against a hostile venue: the peer's protocol errors ---------------------------------------


class Hostile:
    """A venue that completes the handshake correctly, then sends what the test says."""

    def __init__(self, config: ts.SessionConfig | None = None) -> None:
        self.config = config or ts.SessionConfig()
        self.conn = VenueConnection(VENUE, self.config, clock=trio.current_time)
        self.transport: MemoryTransport | None = None
        self.ready = trio.Event()

    async def factory(self, nursery: trio.Nursery) -> MemoryTransport:
        client, server = memory_transport_pair(capacity=256)
        self.transport = server
        nursery.start_soon(self._handshake, server)
        return client

    async def _handshake(self, server: MemoryTransport) -> None:
        conn = self.conn
        conn.receive_data(await server.receive())  # ClientHello
        conn.accept(PARTICIPANT.public_key)
        for frame in conn.data_to_send():
            await server.send(frame)
        conn.receive_data(await server.receive())  # ClientFinish
        for frame in conn.data_to_send():
            await server.send(frame)
        await server.send(conn.send_data([b"welcome"]))  # confirms the handshake
        self.ready.set()
        while True:  # read what the participant sends, answer nothing
            try:
                conn.receive_data(await server.receive())
            except (ts.SessionError, trio.EndOfChannel, trio.BrokenResourceError):
                return

    async def send(self, frame: bytes) -> None:
        assert self.transport is not None
        await self.transport.send(frame)


@asynccontextmanager
async def hostile_session(
    hostile: Hostile,
    config: ts.SessionConfig | None = None,
    factory: Callable[[trio.Nursery], Awaitable[Transport]] | None = None,
) -> AsyncIterator[ts.Session]:
    """A participant session to ``hostile``, past its welcome; ``factory`` may wrap
    ``hostile.factory``'s transport."""
    async with ts.connect(
        "memory://",
        PARTICIPANT,
        VENUE.public_key,
        config=config,
        restart=NO_RESTART,
        transport_factory=factory or hostile.factory,
    ) as session:
        await hostile.ready.wait()
        assert await session.receive() == b"welcome"
        yield session


def _next_data_seq(hostile: Hostile) -> int:
    record = hostile.conn.session
    assert record is not None
    return record.next_tx_seq


@case(ts.IntegrityError, mock_clock=True)
async def venue_frame_with_a_bad_tag() -> BaseException:
    hostile = Hostile()
    async with hostile_session(hostile) as session:
        frame = bytearray(hostile.conn.send_data([b"tampered"]))
        frame[-1] ^= 1
        await hostile.send(bytes(frame))
        return await caught(session.receive)


@case(ts.SequenceError, mock_clock=True)
async def venue_frame_after_a_gap() -> BaseException:
    hostile = Hostile()
    async with hostile_session(hostile) as session:
        hostile.conn.send_data([b"lost on the way"])  # sealed, never sent
        await hostile.send(hostile.conn.send_data([b"after the gap"]))
        return await caught(session.receive)


@case(ts.FrameError, mock_clock=True)
async def venue_notice_that_does_not_decode() -> BaseException:
    hostile = Hostile()
    async with hostile_session(hostile) as session:
        await hostile.send(hostile.conn.send_data([b"\xc1 garbage"], system=True))
        await hostile.send(hostile.conn.send_data([b"next"]))
        exc = await caught(session.receive)
        assert await session.receive() == b"next"  # per message: the session goes on
    return exc


@case(ts.RemoteProtocolError, mock_clock=True)
async def venue_data_beyond_the_credit_window() -> BaseException:
    hostile = Hostile()
    config = ts.SessionConfig(inbound_capacity=4)
    async with hostile_session(hostile, config) as session:
        seq = _next_data_seq(hostile)
        body = forge.data_body(0, 0, [b"m"] * 8)
        await hostile.send(forge.seal(hostile.conn, FrameType.DATA, body, seq=seq))
        exc = await caught(session.receive)
    assert "window" in str(exc)
    return exc


async def _venue_closes(code: ts.CloseCode, reason: str) -> BaseException:
    hostile = Hostile()
    async with hostile_session(hostile) as session:
        hostile.conn.close(code, reason)
        for frame in hostile.conn.data_to_send():
            await hostile.send(frame)
        exc = await caught(session.receive)
    assert isinstance(exc, ts.SessionError) and exc.code is code and exc.remote
    return exc


@case(ts.ResumeRefused, mock_clock=True)
async def venue_closes_with_resume_refused() -> BaseException:
    return await _venue_closes(ts.CloseCode.RESUME_REFUSED, "gone")


@case(ts.SessionClosed, mock_clock=True)
async def venue_closes_with_handler_error() -> BaseException:
    return await _venue_closes(ts.CloseCode.HANDLER_ERROR, "handler failed")


@case(ts.MemoryBudgetExceeded, mock_clock=True)
async def venue_sheds_the_session_for_memory() -> BaseException:
    return await _venue_closes(ts.CloseCode.MEMORY_BUDGET, "the venue's buffers are full")


@case(ts.ControlFlood, mock_clock=True)
async def venue_floods_control_frames() -> BaseException:
    """A hostile venue sends heartbeat answers nobody asked for, faster than
    ``control_frame_rate``: the participant ends the session itself."""
    hostile = Hostile()
    async with hostile_session(hostile) as session:
        assert hostile.conn.session is not None
        with suppress(ts.ConnectionLost):  # it hangs up mid-flood
            for i in range(1000):
                body = encode_body(Heartbeat(i, 0, 64, hostile.conn.session.next_tx_seq))
                frame = forge.seal_control(hostile.conn, FrameType.HEARTBEAT_ACK, body)
                await hostile.send(frame)
        exc = await caught(session.receive)
    assert isinstance(exc, ts.ControlFlood) and not exc.remote
    return exc


@case(ts.TooManySessions, mock_clock=True)
async def connect_beyond_the_key_session_cap() -> BaseException:
    config = ts.SessionConfig(max_sessions_per_key=1, session_rate_per_key=100.0)
    async with (
        memory_venue(Echo(), VENUE, registry(), config=config) as mv,
        mv.connect(PARTICIPANT, restart=NO_RESTART),
    ):
        await trio.sleep(1.0)  # the new-session rate budget (a burst of 1) refills
        exc = await caught(partial(_connect_and_close, mv))
    assert isinstance(exc, ts.TooManySessions) and exc.code is ts.CloseCode.SESSION_LIMIT
    return exc


async def _connect_and_close(mv: Any) -> None:
    async with mv.connect(PARTICIPANT, restart=NO_RESTART):
        pass


@case(ts.HeartbeatTimeout, mock_clock=True)
async def venue_that_falls_silent() -> BaseException:
    hostile = Hostile()
    async with hostile_session(hostile) as session:
        started = trio.current_time()
        state = await session.wait_state(ts.State.STALE)
        stale_after = trio.current_time() - started
        exc = await caught(session.receive)
    assert state is ts.State.STALE and stale_after <= session.config.stale_after + 0.05
    return exc


@case(ts.RekeyTimeout, mock_clock=True)
async def venue_that_never_rekeys() -> BaseException:
    hostile = Hostile()
    config = ts.SessionConfig(rekey_interval=1.0, reject_after=2.0, heartbeat_timeout=30.0)
    async with hostile_session(hostile, config) as session:
        return await caught(session.receive)


# -- session stores ------------------------------------------------------------------------------


@case(ts.StoreError)
async def serve_on_a_store_another_venue_holds() -> BaseException:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "venue.db"
        held = ts.SqliteStore(path)
        await held.open()
        try:
            async with trio.open_nursery() as nursery:
                serve = partial(
                    ts.serve, Echo(), VENUE, registry(), "127.0.0.1", 0, store=ts.SqliteStore(path)
                )
                exc = await caught(partial(nursery.start, serve))
        finally:
            await held.aclose()
    assert "in use by another process" in str(exc) and str(path) in str(exc)
    return exc


@case(ts.StoreError)
async def connect_with_a_damaged_store() -> BaseException:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "alice.db"
        await trio.Path(path).write_bytes(b"not a database" * 100)
        await trio.Path(path).chmod(0o600)
        async with memory_venue(Echo(), VENUE, registry()) as mv:

            async def with_store() -> None:
                async with mv.connect(PARTICIPANT, store=ts.SqliteStore(path)):
                    pass

            exc = await caught(with_store)
    assert "is not a trio_session store or is damaged" in str(exc)
    return exc


# -- the matrix --------------------------------------------------------------------------------


def test_every_public_session_error_has_a_case() -> None:
    public = {getattr(ts, name) for name in ts.__all__}
    errors = {c for c in public if isinstance(c, type) and issubclass(c, ts.SessionError)}
    covered = {expected for expected, _, _ in CASES.values()}
    assert errors - {ts.ProtocolError} <= covered, errors - covered


@pytest.mark.parametrize("name", [n for n, (_, _, mock) in CASES.items() if not mock])
async def test_error_path_over_sockets(name: str) -> None:
    expected, fn, _ = CASES[name]
    with trio.fail_after(30):
        exc = await fn()
    _assert_clean(exc, expected)


@pytest.mark.parametrize("name", [n for n, (_, _, mock) in CASES.items() if mock])
async def test_error_path_over_memory(name: str, autojump_clock: trio.testing.MockClock) -> None:
    expected, fn, _ = CASES[name]
    with trio.fail_after(600):
        exc = await fn()
    _assert_clean(exc, expected)


def _assert_clean(exc: BaseException, expected: type[BaseException]) -> None:
    assert not isinstance(exc, BaseExceptionGroup), repr(exc)
    assert type(exc) is expected, repr(exc)
    text = str(exc)
    assert text and "\n" not in text, repr(text)
    assert "ExceptionGroup" not in text and "sub-exception" not in text, text
    if isinstance(exc, ts.SessionError):
        assert exc.code is exc.code.__class__(exc.code)  # a real CloseCode
