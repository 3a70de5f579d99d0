"""FaultyProxy over real loopback sockets, with a trivial Trio echo/record server upstream."""

from __future__ import annotations

import contextlib
import random
import re
import sys
import types
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Literal

import attrs
import pytest
import trio
import trio.testing

import trio_session as ts
import trio_session.testing
from trio_session._faults import Fault, FaultyProxy

from .runtime_helpers import PARTICIPANT, VENUE, open_fds, venue

DOCS_PAGE = Path(__file__).resolve().parent.parent / "docs" / "howto" / "fault-injection.md"


@attrs.define(eq=False)
class Upstream:
    """Connections seen by the upstream server: bytes received and how each ended."""

    mode: Literal["echo", "record"]
    port: int = 0
    conns: list[Conn] = attrs.Factory(list)

    async def conn(self, i: int = 0) -> Conn:
        """The i-th connection, once the server has accepted it."""
        await until(lambda: len(self.conns) > i)
        return self.conns[i]

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = Conn()
        self.conns.append(conn)
        try:
            while chunk := await stream.receive_some(65536):
                conn.data += chunk
                if self.mode == "echo":
                    await stream.send_all(chunk)
            conn.end = "eof"
        except trio.BrokenResourceError as exc:
            conn.end = "reset" if isinstance(exc.__cause__, ConnectionResetError) else repr(exc)
        finally:
            conn.ended.set()


@attrs.define(eq=False)
class Conn:
    data: bytearray = attrs.Factory(bytearray)
    end: str | None = None
    ended: trio.Event = attrs.Factory(trio.Event)


@asynccontextmanager
async def proxy_to(port: int, seed: int = 0) -> AsyncIterator[FaultyProxy]:
    async with trio.open_nursery() as nursery:
        yield await nursery.start(partial(FaultyProxy.serve, "127.0.0.1", port, seed=seed))
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def proxied(
    mode: Literal["echo", "record"] = "echo", seed: int = 0
) -> AsyncIterator[tuple[FaultyProxy, Upstream]]:
    """A proxy in front of a fresh upstream server."""
    up = Upstream(mode)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, up.handle, 0, host="127.0.0.1"))
        up.port = listeners[0].socket.getsockname()[1]
        async with proxy_to(up.port, seed) as proxy:
            yield proxy, up
        nursery.cancel_scope.cancel()


async def dial(proxy: FaultyProxy) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", proxy.port)


async def recv_exactly(stream: trio.SocketStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def roundtrip(stream: trio.SocketStream, data: bytes) -> bytes:
    await stream.send_all(data)
    return await recv_exactly(stream, len(data))


async def until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (state owned by the proxy or the server, with no event to wait on)."""
    while True:
        if condition():
            return
        await trio.sleep(0.002)


async def wait_idle(proxy: FaultyProxy) -> None:
    await until(lambda: proxy.stats.active == 0)


def bit_diff(a: bytes, b: bytes) -> list[int]:
    """Positions of the bits that differ (equal lengths)."""
    assert len(a) == len(b)
    return [
        i * 8 + bit
        for i, (x, y) in enumerate(zip(a, b, strict=True))
        for bit in range(8)
        if (x ^ y) >> bit & 1
    ]


def payload(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


# -- forwarding ------------------------------------------------------------------------------


async def test_forwards_1mb_each_way_intact_and_propagates_eof() -> None:
    data = payload(2**20)
    with trio.fail_after(10):
        async with proxied() as (proxy, up):
            got = bytearray()
            async with await dial(proxy) as client:

                async def send() -> None:
                    for i in range(0, len(data), 10_000):
                        await client.send_all(data[i : i + 10_000])
                    await client.send_eof()  # half-close: the echo still flows back

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send)
                    async for chunk in client:  # ends at the EOF the proxy forwards back
                        got += chunk
            assert got == data
            server = await up.conn(0)
            await server.ended.wait()
            assert server.end == "eof" and server.data == data
            await wait_idle(proxy)
            stats = proxy.stats
            assert (stats.bytes_c2s, stats.bytes_s2c) == (len(data), len(data))
            assert (stats.connections, stats.active, stats.resets) == (1, 0, 0)


async def test_connections_are_independent() -> None:
    with trio.fail_after(5):
        async with proxied() as (proxy, _):
            a, b = await dial(proxy), await dial(proxy)
            async with a, b:
                assert await roundtrip(a, b"a") == b"a" and await roundtrip(b, b"b") == b"b"
                proxy.truncate("c2s")
                await a.send_all(b"x" * 100)  # a's connection dies ...
                with contextlib.suppress(trio.BrokenResourceError):
                    assert await a.receive_some() == b""
                for _ in range(3):  # ... b's carries on
                    assert await roundtrip(b, b"still here") == b"still here"
                assert proxy.stats.active == 1


async def test_upstream_refusing_resets_the_client_and_proxy_survives() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            closed = trio.socket.socket()
            await closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
            closed.close()  # nothing listens there any more
            proxy = await nursery.start(FaultyProxy.serve, "127.0.0.1", port)
            for _ in range(2):
                async with await dial(proxy) as client:
                    with contextlib.suppress(trio.BrokenResourceError):
                        assert await client.receive_some() == b""
            assert proxy.stats.connections == 2
            nursery.cancel_scope.cancel()


# -- faults ----------------------------------------------------------------------------------


async def test_reset_all_makes_both_peers_see_a_reset_promptly() -> None:
    with trio.fail_after(5):
        async with proxied() as (proxy, up):
            async with await dial(proxy) as client:
                assert await roundtrip(client, b"ping") == b"ping"
                with trio.fail_after(1):
                    assert proxy.reset_all() == 1
                    with pytest.raises(trio.BrokenResourceError) as err:
                        await client.receive_some()
                    server = await up.conn(0)
                    await server.ended.wait()
            assert isinstance(err.value.__cause__, ConnectionResetError)
            assert server.end == "reset"
            await wait_idle(proxy)
            assert proxy.stats.resets == 1 and proxy.stats.faults["reset"] == 1
            assert proxy.reset_all() == 0


async def test_reset_one_direction_resets_its_receiver_and_closes_the_other() -> None:
    with trio.fail_after(5):
        async with proxied() as (proxy, up), await dial(proxy) as client:
            assert await roundtrip(client, b"ping") == b"ping"
            proxy.reset("s2c")  # the client is the receiver of s2c
            with pytest.raises(trio.BrokenResourceError) as err:
                await client.receive_some()
            assert isinstance(err.value.__cause__, ConnectionResetError)
            server = await up.conn(0)
            await server.ended.wait()
            assert server.end == "eof"


async def test_black_hole_keeps_the_connection_open_until_restore() -> None:
    with trio.fail_after(5):
        async with proxied() as (proxy, up):
            async with await dial(proxy) as client:
                assert await roundtrip(client, b"ping") == b"ping"
                server = await up.conn(0)
                proxy.black_hole()
                await client.send_all(b"lost")
                with trio.move_on_after(0.2) as waited:
                    await client.receive_some()
                assert waited.cancelled_caught  # nothing came back ...
                assert client.socket.fileno() != -1 and proxy.stats.active == 1
                assert not server.ended.is_set()  # ... and nobody saw a close
                await client.send_all(b"also lost")  # the socket still takes data
                # swallowed, not queued:
                await until(lambda: proxy.stats.dropped_c2s == len(b"lostalso lost"))
                proxy.restore()
                assert await roundtrip(client, b"back") == b"back"
            assert bytes(server.data) == b"pingback"
            assert proxy.stats.dropped_c2s == len(b"lostalso lost")
            assert proxy.stats.faults["black_hole"] == 1


async def test_black_hole_holds_the_fin_until_restore() -> None:
    with trio.fail_after(5):
        async with proxied("record") as (proxy, up), await dial(proxy) as client:
            await client.send_all(b"before")
            server = await up.conn(0)
            await until(lambda: len(server.data) == 6)
            proxy.black_hole("c2s")
            await client.send_eof()
            with trio.move_on_after(0.1):
                await server.ended.wait()
            assert not server.ended.is_set()
            proxy.restore()
            await server.ended.wait()
            assert server.end == "eof" and server.data == b"before"


async def test_delay_holds_each_chunk_and_preserves_order() -> None:
    with trio.fail_after(5):
        async with proxied() as (proxy, _), await dial(proxy) as client:
            proxy.delay(0.05)  # each way: a round trip takes >= 0.1 s
            for i in range(3):
                start = trio.current_time()
                assert await roundtrip(client, b"%d" % i) == b"%d" % i
                assert trio.current_time() - start >= 0.1
            # A delay line, not a queue of sleeps: chunks in flight overlap.
            chunks = [b"<%03d>" % i for i in range(40)]
            start = trio.current_time()
            async with trio.open_nursery() as nursery:

                async def send() -> None:
                    for c in chunks:
                        await client.send_all(c)
                        await trio.sleep(0.002)

                nursery.start_soon(send)
                assert await recv_exactly(client, 200) == b"".join(chunks)
            elapsed = trio.current_time() - start
            assert 0.1 <= elapsed < 40 * 0.1 / 2
            proxy.restore()
            start = trio.current_time()
            assert await roundtrip(client, b"fast") == b"fast"
            assert trio.current_time() - start < 0.05


async def test_delay_follows_the_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(1000):  # virtual seconds
        async with proxied() as (proxy, _), await dial(proxy) as client:
            proxy.delay(30.0, "s2c")
            start = trio.current_time()
            assert await roundtrip(client, b"slow") == b"slow"
            assert 30.0 <= trio.current_time() - start < 100


async def test_throttle_roughly_limits_the_rate() -> None:
    with trio.fail_after(5):
        async with proxied() as (proxy, _), await dial(proxy) as client:
            proxy.throttle(40_000, "s2c")
            data = payload(20_000)
            start = trio.current_time()
            assert await roundtrip(client, data) == data
            elapsed = trio.current_time() - start
            assert 0.4 <= elapsed < 2.0  # ~0.5 s at 40 kB/s
            assert proxy.stats.faults["throttle"] == 1


async def test_truncate_forwards_a_prefix_then_resets() -> None:
    data = payload(1000)
    with trio.fail_after(5):
        async with proxied("record") as (proxy, up):
            async with await dial(proxy) as client:
                proxy.truncate("c2s")  # the server, receiver of c2s, sees the reset
                await client.send_all(data)
                server = await up.conn(0)
                await server.ended.wait()
                with contextlib.suppress(trio.BrokenResourceError):
                    assert await client.receive_some() == b""  # closed
            got = bytes(server.data)
            assert server.end == "reset"
            assert len(got) < len(data) and data.startswith(got)
            stats = proxy.stats
            assert stats.bytes_c2s == len(got) and stats.resets == 1
            assert stats.faults["truncate"] == 1 and proxy.rules == ()


async def test_corrupt_flips_exactly_that_many_bits_of_the_next_chunk() -> None:
    with trio.fail_after(5):
        async with proxied() as (proxy, _), await dial(proxy) as client:
            data = payload(200)
            proxy.corrupt("c2s", flips=3)
            got = await roundtrip(client, data)
            assert len(bit_diff(data, got)) == 3
            assert await roundtrip(client, data) == data  # only the next chunk
            proxy.corrupt("s2c")
            assert len(bit_diff(data, await roundtrip(client, data))) == 1
            assert proxy.stats.faults["corrupt"] == 2


async def test_at_byte_black_hole_fires_exactly_at_that_offset() -> None:
    data = payload(5000)
    with trio.fail_after(5):
        async with proxied("record") as (proxy, up):
            proxy.add_rule(Fault(kind="black_hole", direction="c2s", at_byte=2500))
            async with await dial(proxy) as client:
                for i in range(0, 5000, 700):  # chunks that straddle the offset
                    await client.send_all(data[i : i + 700])
                    await trio.sleep(0.002)
                server = await up.conn(0)
                with trio.move_on_after(0.2):
                    await server.ended.wait()
                assert bytes(server.data) == data[:2500]
                assert proxy.stats.dropped_c2s == 2500


async def test_at_byte_reset_forwards_exactly_n_bytes_and_corrupt_starts_there() -> None:
    data = payload(5000)
    with trio.fail_after(5):
        async with proxied("record") as (proxy, up):
            proxy.add_rule(Fault(kind="reset", direction="c2s", at_byte=1234))
            async with await dial(proxy) as client:
                await client.send_all(data)
                server = await up.conn(0)
                await server.ended.wait()
            assert bytes(server.data) == data[:1234] and server.end == "reset"
            assert proxy.stats.bytes_c2s == 1234 and proxy.stats.resets == 1
            assert proxy.rules == ()  # repeat=1: used up
        async with proxied() as (proxy, _):
            proxy.add_rule(Fault(kind="corrupt", direction="s2c", at_byte=3000, flips=2))
            async with await dial(proxy) as client:
                got = await roundtrip(client, data)
            diff = bit_diff(data, got)
            assert len(diff) == 2 and min(diff) >= 3000 * 8


async def test_after_rule_fires_on_the_trio_clock() -> None:
    with trio.fail_after(5):
        async with proxied() as (proxy, _):
            proxy.add_rule(Fault(kind="reset", after=0.1, repeat=None))
            for _ in range(2):  # once per connection
                async with await dial(proxy) as client:
                    start = trio.current_time()
                    assert await roundtrip(client, b"hi") == b"hi"
                    with pytest.raises(trio.BrokenResourceError):
                        await client.receive_some()
                    assert trio.current_time() - start >= 0.1
            assert proxy.stats.resets == 2


async def _corrupted_echoes(seed: int) -> list[bytes]:
    """Fixed chunks, each acknowledged (echoed) before the next: a fixed chunk sequence."""
    async with proxied(seed=seed) as (proxy, _):
        proxy.add_rule(Fault(kind="corrupt", direction="c2s", probability=0.3, repeat=None))
        async with await dial(proxy) as client:
            echoes = [await roundtrip(client, bytes([i]) * 64) for i in range(40)]
        assert proxy.stats.faults["corrupt"] == sum(
            e != bytes([i]) * 64 for i, e in enumerate(echoes)
        )
        return echoes


async def test_probability_rule_is_reproducible_for_a_seed() -> None:
    with trio.fail_after(5):
        first = await _corrupted_echoes(seed=7)
        assert await _corrupted_echoes(seed=7) == first
        hit = [e != bytes([i]) * 64 for i, e in enumerate(first)]
        assert 0 < sum(hit) < 40
        assert await _corrupted_echoes(seed=8) != first


async def test_stats_count_connections_bytes_and_faults() -> None:
    with trio.fail_after(5):
        async with proxied() as (proxy, _), contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(await dial(proxy)) for _ in range(3)]
            for c in clients:
                assert await roundtrip(c, b"12345") == b"12345"
            await until(lambda: proxy.stats.bytes_s2c == 15)  # counted once sent
            stats = proxy.stats
            assert (stats.connections, stats.active) == (3, 3)
            assert (stats.bytes_c2s, stats.bytes_s2c) == (15, 15)
            proxy.delay(0.01)
            proxy.restore()
            assert proxy.reset_all() == 3
            for c in clients:
                await c.aclose()
            await wait_idle(proxy)
            stats = proxy.stats
            assert (stats.connections, stats.active, stats.resets) == (3, 0, 3)
            assert dict(stats.faults) == {
                "reset": 3,
                "black_hole": 0,
                "delay": 1,
                "throttle": 0,
                "truncate": 0,
                "corrupt": 0,
            }
            with pytest.raises(attrs.exceptions.FrozenInstanceError):
                stats.active = 1  # type: ignore[misc]


async def test_no_fd_leaks_after_20_connections() -> None:
    with trio.fail_after(5):
        before = open_fds()
        async with proxied() as (proxy, up):
            baseline = open_fds()
            for i in range(20):
                async with await dial(proxy) as client:
                    assert await roundtrip(client, b"x") == b"x"
                    if i % 4 == 1:
                        proxy.reset_all()
                    elif i % 4 == 2:
                        proxy.truncate("c2s")
                        await client.send_all(b"y" * 10)
                    elif i % 4 == 3:
                        proxy.black_hole()
                        await client.send_all(b"z")
                        proxy.restore()
                await (await up.conn(i)).ended.wait()
            await wait_idle(proxy)
            assert open_fds() == baseline
        assert open_fds() == before


def test_fault_validation() -> None:
    with pytest.raises(ValueError, match="at most one"):
        Fault(kind="reset", at_byte=1, after=1.0)
    with pytest.raises(ValueError):
        Fault(kind="corrupt", probability=1.5)
    with pytest.raises(ValueError):
        Fault(kind="delay")  # needs seconds
    with pytest.raises(ValueError):
        Fault(kind="explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Fault(kind="reset", direction="sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Fault(kind="corrupt", flips=0)


# -- with trio_session -----------------------------------------------------------------------


async def test_sessions_resume_through_resets_exactly_once_in_order() -> None:
    n = 300
    at_venue: list[bytes] = []
    handled = 0

    async def handler(session: ts.Session) -> None:
        nonlocal handled
        handled += 1
        async for message in session:
            at_venue.append(message)
            await session.send(b"ack " + message)

    config = ts.SessionConfig(heartbeat_interval=0.2, heartbeat_timeout=1.0)
    restart = ts.RestartPolicy(base_delay=0.01, max_delay=0.1)
    with trio.fail_after(10):
        async with (
            venue(handler, config=config) as server,
            proxy_to(server.port) as proxy,
            ts.connect(
                f"ws://127.0.0.1:{proxy.port}/",
                PARTICIPANT,
                VENUE.public_key,
                config=config,
                restart=restart,
            ) as session,
        ):
            resets = 0

            async def send() -> None:
                nonlocal resets
                for i in range(n):
                    if i % 60 == 30:  # 5 resets, each on a LIVE connection
                        await session.wait_state(ts.State.LIVE)
                        resets += proxy.reset_all()
                    await session.send(b"%04d" % i)
                    await trio.sleep(0.001)

            acks: list[bytes] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                while len(acks) < n:
                    acks.append(await session.receive())
            assert acks == [b"ack %04d" % i for i in range(n)]
            assert at_venue == [b"%04d" % i for i in range(n)]
            assert resets >= 3 and session.stats.resumes >= resets
            assert handled == 1 and proxy.stats.resets == resets


# -- the how-to page -------------------------------------------------------------------------


def _docs_program() -> str:
    """The page's ```python blocks, each line at its line number (tracebacks point into it)."""
    text = DOCS_PAGE.read_text(encoding="utf-8")
    lines: list[str] = []
    for match in re.finditer(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL):
        first = text.count("\n", 0, match.start(1))
        lines += [""] * (first - len(lines))
        lines += match.group(1).splitlines()
    return "\n".join(lines) + "\n"


async def test_docs_example(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Until trio_session.testing re-exports them, give the page the names it imports.
    monkeypatch.setattr(trio_session.testing, "FaultyProxy", FaultyProxy, raising=False)
    monkeypatch.setattr(trio_session.testing, "Fault", Fault, raising=False)
    module = types.ModuleType("docs_howto_fault_injection")
    module.__file__ = str(DOCS_PAGE)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(_docs_program(), str(DOCS_PAGE), "exec"), module.__dict__)
    with trio.fail_after(10):
        result = await module.main()
    out = re.search(r"<!-- output -->\n```text\n(.*?)```", DOCS_PAGE.read_text(), re.DOTALL)
    assert out is not None and capsys.readouterr().out == out.group(1)
    assert result["resumes"] >= 4 and result["resets"] == 2 and result["corrupt"] == 2
    # The schedule snippet is valid too.
    with trio.fail_after(5):
        async with proxied() as (proxy, _):
            module.soak_schedule(proxy)
            assert len(proxy.rules) == 4
