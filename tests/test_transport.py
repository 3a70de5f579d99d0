"""Transport layer: WebSocket transport over real loopback sockets, and the memory pair.

Covers the trio-websocket 0.12.2 defects we work around: our own connect deadline,
no socket leak on a cancelled or failed handshake, a server that one bad client or
handler cannot disturb, and no raw trio-websocket errors or ExceptionGroups reaching
callers.  The venue-side byte-level checks are in test_transport_guard.py, the
pre-authentication limits in test_transport_preauth.py.
"""

from __future__ import annotations

import gc
import logging
import os
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial

import pytest
import trio
import trio.testing
import trio_websocket

from trio_session._errors import ConnectionLost, FrameError, HandshakeTimeout
from trio_session._transport import (
    MemoryTransport,
    Transport,
    TransportServer,
    WebSocketTransport,
    connect_transport,
    memory_transport_pair,
)

from ._certs import tls_contexts
from .transport_helpers import start_serving

MAX_MESSAGE = 2**20
HAS_PROC_FD = os.path.isdir("/proc/self/fd")


# ---------------------------------------------------------------------------
# helpers


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextmanager
def no_resource_warnings() -> Iterator[None]:
    """Record warnings (instead of turning them into unraisable errors) and fail
    if any unclosed socket or stream was collected inside the block."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        gc.collect()
    leaked = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaked, [str(w.message) for w in leaked]


async def echo(transport: Transport) -> None:
    try:
        while True:
            await transport.send(await transport.receive())
    except ConnectionLost:
        pass


async def start_server(
    nursery: trio.Nursery,
    handler: Callable[[Transport], Awaitable[None]],
    *,
    handshake_timeout: float = 5.0,
    ssl: bool = False,
) -> TransportServer:
    return await start_serving(
        nursery, handler, handshake_timeout=handshake_timeout, tls=ssl, max_message_size=MAX_MESSAGE
    )


async def connect(
    port: int,
    nursery: trio.Nursery,
    *,
    connect_timeout: float = 5.0,
    max_message_size: int = MAX_MESSAGE,
) -> WebSocketTransport:
    return await connect_transport(
        f"ws://127.0.0.1:{port}/",
        nursery=nursery,
        connect_timeout=connect_timeout,
        max_message_size=max_message_size,
    )


class RawServer:
    """A plain TCP server scripted per test: records the request bytes, then
    runs ``behaviour`` (default: never answer) and notes when the client's
    side of the connection has gone away."""

    def __init__(self, behaviour: Callable[[trio.SocketStream], Awaitable[None]] | None) -> None:
        self.behaviour = behaviour
        self.port = 0
        self.got_request = trio.Event()
        self.client_gone = trio.Event()
        self.received = b""

    async def start(self, nursery: trio.Nursery) -> RawServer:
        listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]
        return self

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            while b"\r\n\r\n" not in self.received:
                data = await stream.receive_some()
                if not data:
                    break
                self.received += data
            self.got_request.set()
            if self.behaviour is not None:
                await self.behaviour(stream)
            while await stream.receive_some():
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # reset by the client, or closed by ``behaviour``
        finally:
            await trio.aclose_forcefully(stream)
            self.client_gone.set()


async def read_until_eof(stream: trio.SocketStream) -> bytes:
    data = b""
    try:
        while chunk := await stream.receive_some():
            data += chunk
    except trio.BrokenResourceError:
        pass
    return data


async def free_port() -> int:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


# ---------------------------------------------------------------------------
# echo over ws:// and wss://


async def run_echo(client: WebSocketTransport, count: int = 10_000) -> None:
    messages = [i.to_bytes(4, "big") + os.urandom(96) for i in range(count)]

    async def sender() -> None:
        for message in messages:
            await client.send(message)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        for expected in messages:
            got = await client.receive()
            assert got == expected


async def test_echo_ws(nursery: trio.Nursery) -> None:
    peers: list[str] = []

    async def handler(transport: Transport) -> None:
        peers.append(transport.remote_address)
        await echo(transport)

    server = await start_server(nursery, handler)
    with trio.fail_after(30):  # ~2-4 s normally; generous for loaded CI machines
        async with trio.open_nursery() as session_nursery:
            client = await connect(server.port, session_nursery)
            assert client.remote_address == f"127.0.0.1:{server.port}"
            open_before = not client.closed
            await run_echo(client)
            await client.aclose()
            assert open_before
            assert client.closed
    assert len(peers) == 1
    assert peers[0].startswith("127.0.0.1:")
    assert server.host == "127.0.0.1"
    assert len(server.listeners) == 1


async def test_echo_wss(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, echo, ssl=True)
    assert isinstance(server.listeners[0], trio.SSLListener)
    with trio.fail_after(30):  # ~2-4 s normally; generous for loaded CI machines
        async with trio.open_nursery() as session_nursery:
            client = await connect_transport(
                f"wss://127.0.0.1:{server.port}/feed?x=1",
                nursery=session_nursery,
                ssl_context=tls_contexts().client,
                connect_timeout=5,
                max_message_size=MAX_MESSAGE,
            )
            await run_echo(client)
            await client.aclose()


async def test_wss_untrusted_certificate_is_connection_lost(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, echo, ssl=True)
    with trio.fail_after(5), no_resource_warnings():
        async with trio.open_nursery() as session_nursery:
            # The default context does not trust the test CA.
            with pytest.raises(ConnectionLost) as info:
                await connect_transport(
                    f"wss://127.0.0.1:{server.port}/",
                    nursery=session_nursery,
                    connect_timeout=5,
                    max_message_size=MAX_MESSAGE,
                )
    assert isinstance(info.value.__cause__, trio.BrokenResourceError)


async def test_bad_urls_are_value_errors(nursery: trio.Nursery) -> None:
    with pytest.raises(ValueError, match="scheme"):
        await connect_transport(
            "http://127.0.0.1:1/", nursery=nursery, connect_timeout=1, max_message_size=10
        )
    with pytest.raises(ValueError, match="ssl_context"):
        await connect_transport(
            "ws://127.0.0.1:1/",
            nursery=nursery,
            ssl_context=tls_contexts().client,
            connect_timeout=1,
            max_message_size=10,
        )


# ---------------------------------------------------------------------------
# connect failures: our deadline, no leaks, prompt and typed errors


async def test_connect_timeout_against_stalled_handshake(nursery: trio.Nursery) -> None:
    stalled = await RawServer(None).start(nursery)
    with trio.fail_after(5), no_resource_warnings():
        start = time.perf_counter()
        with pytest.raises(HandshakeTimeout):
            await connect(stalled.port, nursery, connect_timeout=0.3)
        elapsed = time.perf_counter() - start
        # The client's socket is closed, not leaked: the server sees it go.
        await stalled.client_gone.wait()
    assert 0.25 <= elapsed < 2.0, elapsed
    assert stalled.received.startswith(b"GET / HTTP/1.1\r\n")


@pytest.mark.skipif(not HAS_PROC_FD, reason="needs /proc/self/fd")
async def test_cancel_mid_handshake_leaves_no_socket(nursery: trio.Nursery) -> None:
    stalled = await RawServer(None).start(nursery)
    before = fd_count()
    with trio.fail_after(5), no_resource_warnings():
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as session_nursery:

                async def cancel_once_upgrade_sent() -> None:
                    await stalled.got_request.wait()
                    scope.cancel()

                session_nursery.start_soon(cancel_once_upgrade_sent)
                await connect(stalled.port, session_nursery, connect_timeout=30)
                pytest.fail("connect_transport returned against a stalled server")
        assert scope.cancelled_caught
        await stalled.client_gone.wait()
    assert fd_count() == before


async def test_connection_refused_is_connection_lost(nursery: trio.Nursery) -> None:
    port = await free_port()
    with trio.fail_after(5), no_resource_warnings(), pytest.raises(ConnectionLost) as info:
        await connect(port, nursery)
    assert isinstance(info.value.__cause__, OSError)


async def test_server_closing_during_upgrade_fails_fast(nursery: trio.Nursery) -> None:
    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.aclose()

    server = await RawServer(hang_up).start(nursery)
    with trio.fail_after(5), no_resource_warnings():
        start = time.perf_counter()
        with pytest.raises(ConnectionLost, match="during the WebSocket upgrade"):
            # trio-websocket alone would wait for the whole connect_timeout here.
            await connect(server.port, nursery, connect_timeout=4)
        elapsed = time.perf_counter() - start
    assert elapsed < 2.0, elapsed


async def test_rejected_upgrade_is_connection_lost_and_spares_the_nursery() -> None:
    async def forbid(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    with trio.fail_after(5), no_resource_warnings():
        async with trio.open_nursery() as server_nursery:
            server = await RawServer(forbid).start(server_nursery)
            # trio-websocket raises ConnectionRejected from its reader task into
            # this nursery; ours must come out of connect_transport instead.
            async with trio.open_nursery() as session_nursery:
                with pytest.raises(ConnectionLost, match="HTTP 403") as info:
                    await connect(server.port, session_nursery)
            await server.client_gone.wait()
            server_nursery.cancel_scope.cancel()
    assert isinstance(info.value.__cause__, trio_websocket.ConnectionRejected)


# ---------------------------------------------------------------------------
# server robustness


async def test_server_survives_garbage_slowloris_and_failing_handler(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_session.transport")
    calls = 0

    async def handler(transport: Transport) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("handler bug")
        await echo(transport)

    server = await start_server(nursery, handler, handshake_timeout=1.5)
    with trio.fail_after(5), no_resource_warnings():
        garbage = await trio.open_tcp_stream("127.0.0.1", server.port)
        await garbage.send_all(b"\x16\x03\x01\x00garbage that is not HTTP\r\n\r\n")
        slowloris = await trio.open_tcp_stream("127.0.0.1", server.port)
        await slowloris.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
        slowloris_dropped = trio.Event()

        async def watch_slowloris() -> None:
            assert await read_until_eof(slowloris) == b""
            slowloris_dropped.set()

        nursery.start_soon(watch_slowloris)

        async with trio.open_nursery() as session_nursery:
            failing = await connect(server.port, session_nursery)
            with pytest.raises(ConnectionLost, match="code 1011") as info:
                await failing.receive()
            assert info.value.remote
            await failing.aclose()

            good = await connect(server.port, session_nursery)
            await good.send(b"still serving")
            assert await good.receive() == b"still serving"
            await good.aclose()
        # The good client was served while the slowloris was still pending.
        assert not slowloris_dropped.is_set()

        await read_until_eof(garbage)  # the server hangs up on garbage
        await slowloris_dropped.wait()  # and on a stalled upgrade, after handshake_timeout
        await garbage.aclose()
        await slowloris.aclose()

    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], RuntimeError)
    assert calls == 2


# ---------------------------------------------------------------------------
# close semantics


@pytest.mark.skipif(not HAS_PROC_FD, reason="needs /proc/self/fd")
async def test_remote_close(nursery: trio.Nursery) -> None:
    server_done = trio.Event()

    async def handler(transport: Transport) -> None:
        await transport.send(b"one")
        await transport.send(b"two")
        await transport.aclose(4000, "bye")
        server_done.set()

    server = await start_server(nursery, handler)
    before = fd_count()
    with trio.fail_after(5), no_resource_warnings():
        async with trio.open_nursery() as session_nursery:
            client = await connect(server.port, session_nursery)
            # Messages sent before the close are delivered first.
            assert await client.receive() == b"one"
            assert await client.receive() == b"two"
            with pytest.raises(ConnectionLost, match="connection closed: code 4000 bye") as info:
                await client.receive()
            assert info.value.remote
            assert isinstance(info.value.__cause__, trio_websocket.ConnectionClosed)
            assert client.closed
        # The reader ended on its own and nothing is left open, although the
        # client never called aclose() (trio-websocket alone keeps the socket).
        await server_done.wait()
        assert fd_count() == before

        await client.aclose()
        await client.aclose()  # idempotent
        with pytest.raises(ConnectionLost):
            await client.send(b"after close")
        with pytest.raises(ConnectionLost):
            await client.receive()


async def test_local_close_then_send_and_receive_raise(nursery: trio.Nursery) -> None:
    server_saw_close = trio.Event()
    server_errors: list[str] = []

    async def handler(transport: Transport) -> None:
        try:
            await transport.receive()
        except ConnectionLost as exc:
            server_errors.append(str(exc))
            server_saw_close.set()

    server = await start_server(nursery, handler)
    with trio.fail_after(5), no_resource_warnings():
        async with trio.open_nursery() as session_nursery:
            client = await connect(server.port, session_nursery)
            await client.aclose(4001, "logout")
            assert client.closed
            await client.aclose()
            with pytest.raises(ConnectionLost, match="closed locally"):
                await client.send(b"x")
            with pytest.raises(ConnectionLost):
                await client.receive()
        await server_saw_close.wait()
    assert server_errors == ["connection closed: code 4001 logout"]


async def test_invalid_close_code_still_closes(nursery: trio.Nursery) -> None:
    server = await start_server(nursery, echo)
    with trio.fail_after(5), no_resource_warnings():
        async with trio.open_nursery() as session_nursery:
            client = await connect(server.port, session_nursery)
            with pytest.raises(ValueError, match="close code"):
                await client.aclose(5000)
            assert client.closed
            with pytest.raises(ConnectionLost):
                await client.send(b"x")


async def test_cancelling_the_session_nursery_closes_the_connection(
    nursery: trio.Nursery,
) -> None:
    server_lost = trio.Event()

    async def handler(transport: Transport) -> None:
        with pytest.raises(ConnectionLost):
            await transport.receive()
        server_lost.set()

    server = await start_server(nursery, handler)
    with trio.fail_after(5), no_resource_warnings():
        async with trio.open_nursery() as session_nursery:
            client = await connect(server.port, session_nursery)
            session_nursery.cancel_scope.cancel()
        await server_lost.wait()
        assert client.closed
        with pytest.raises(ConnectionLost):
            await client.receive()
        with pytest.raises(ConnectionLost):
            await client.send(b"x")
        await client.aclose()


async def test_text_message_is_frame_error(nursery: trio.Nursery) -> None:
    async def raw_handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.send_message("text is not allowed")
        with suppress(trio_websocket.ConnectionClosed):
            await ws.get_message()

    raw: trio_websocket.WebSocketServer = await nursery.start(
        partial(trio_websocket.serve_websocket, raw_handler, "127.0.0.1", 0, ssl_context=None)
    )
    with trio.fail_after(5), no_resource_warnings():
        async with trio.open_nursery() as session_nursery:
            client = await connect(raw.port, session_nursery)
            with pytest.raises(FrameError) as info:
                await client.receive()
            assert info.value.remote
            await client.aclose()


async def test_oversized_message_is_connection_lost(nursery: trio.Nursery) -> None:
    server_done = trio.Event()

    async def handler(transport: Transport) -> None:
        await transport.send(b"x" * 2000)
        await echo(transport)
        await transport.aclose()
        server_done.set()

    server = await start_server(nursery, handler)
    before = fd_count() if HAS_PROC_FD else 0
    with trio.fail_after(5), no_resource_warnings():
        async with trio.open_nursery() as session_nursery:
            client = await connect(server.port, session_nursery, max_message_size=1000)
            with pytest.raises(ConnectionLost, match="code 1009"):
                await client.receive()
        assert client.closed
        await server_done.wait()
        if HAS_PROC_FD:
            # trio-websocket's reader stops without closing the socket after a
            # 1009; ours closed it although aclose() was never called.
            assert fd_count() == before
        await client.aclose()


# ---------------------------------------------------------------------------
# fd growth


@pytest.mark.skipif(not HAS_PROC_FD, reason="needs /proc/self/fd")
async def test_fd_count_returns_to_baseline_after_50_connections(nursery: trio.Nursery) -> None:
    finished = 0
    all_finished = trio.Event()
    total = 51  # one warm-up connection, then 50 measured ones

    async def handler(transport: Transport) -> None:
        nonlocal finished
        await echo(transport)
        await transport.aclose()
        finished += 1
        if finished == total:
            all_finished.set()

    server = await start_server(nursery, handler)

    async def one_connection() -> None:
        async with trio.open_nursery() as session_nursery:
            client = await connect(server.port, session_nursery)
            await client.send(b"hello")
            assert await client.receive() == b"hello"
            await client.aclose()

    with trio.fail_after(10), no_resource_warnings():
        await one_connection()  # warm-up: lazily opened fds are not leaks
        baseline = fd_count()
        for _ in range(total - 1):
            await one_connection()
        await all_finished.wait()
        gc.collect()
        assert abs(fd_count() - baseline) <= 2


# ---------------------------------------------------------------------------
# memory pair


async def test_memory_pair_both_ways() -> None:
    a, b = memory_transport_pair()
    with trio.fail_after(1):
        await a.send(b"ping")
        assert await b.receive() == b"ping"
        await b.send(b"pong")
        assert await a.receive() == b"pong"
    both: list[Transport] = [a, b]  # mypy checks that the pair satisfies the protocol
    assert [t.remote_address for t in both] == ["memory:b", "memory:a"]
    assert a.remote_address == "memory:b"
    assert b.remote_address == "memory:a"
    assert not a.closed and not b.closed
    await a.aclose()
    await b.aclose()


async def test_memory_pair_close_one_side_ends_the_other() -> None:
    a, b = memory_transport_pair()
    with trio.fail_after(1):
        await a.send(b"last words")
        await a.aclose(4001, "done")
        assert a.closed and b.closed
        # What was sent before the close is still delivered ...
        assert await b.receive() == b"last words"
        # ... then the close, with its code.
        with pytest.raises(ConnectionLost, match="code 4001 done") as info:
            await b.receive()
        assert info.value.remote
        with pytest.raises(ConnectionLost):
            await b.send(b"x")
        with pytest.raises(ConnectionLost, match="closed locally"):
            await a.send(b"x")
        with pytest.raises(ConnectionLost):
            await a.receive()
        await a.aclose()  # idempotent
        await b.aclose()


async def test_memory_pair_break_fails_both_ends() -> None:
    a, b = memory_transport_pair()
    errors: list[ConnectionLost] = []

    async def blocked_receiver() -> None:
        try:
            await b.receive()
        except ConnectionLost as exc:
            errors.append(exc)

    with trio.fail_after(1):
        await b.send(b"undelivered")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked_receiver)
            await trio.testing.wait_all_tasks_blocked()
            assert errors == []
            a.break_()
        assert len(errors) == 1
        assert "broken" in str(errors[0])
        assert a.closed and b.closed
        for end in (a, b):
            with pytest.raises(ConnectionLost):
                await end.send(b"x")
            with pytest.raises(ConnectionLost):
                await end.receive()  # undelivered messages are gone, as after a reset


async def test_memory_pair_backpressure() -> None:
    a, b = memory_transport_pair(capacity=2)
    sent = 0

    async def sender() -> None:
        nonlocal sent
        for i in range(3):
            await a.send(bytes([i]))
            sent += 1

    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            assert sent == 2
            assert await b.receive() == b"\x00"
            await trio.testing.wait_all_tasks_blocked()
            assert sent == 3
        assert [await b.receive(), await b.receive()] == [b"\x01", b"\x02"]


async def test_memory_pair_is_deterministic_under_mock_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = memory_transport_pair()
    start = trio.current_time()
    with trio.move_on_after(30) as scope:
        await b.receive()
    assert scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(30)
    assert isinstance(a, MemoryTransport)
