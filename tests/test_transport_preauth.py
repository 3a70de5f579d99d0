"""Pre-authentication limits of the venue's accept path, over real sockets.

A connection counts as *pre-authentication* from accept until the session layer has
verified the peer (``Transport.mark_authenticated``) or the connection ends.  Beyond
``max_preauth_connections`` in all, or ``max_preauth_per_address`` from one IP, a new
connection is refused at accept (HTTP 503; a bare close under TLS).  Connections that
never finish are expired by the gate's reaper, paced so that thousands timing out
together do not stall the event loop: the flood tests measure a participant's
round-trip time while 2,000 (default run) or 5,000 (``--soak``) connections are held
and expire, against its baseline before and after.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_session as ts
from trio_session import _server
from trio_session._transport import (
    PreAuthStatistics,
    Transport,
    TransportLimits,
    TransportServer,
    connect_transport,
    serve_transport,
)

from ._certs import tls_contexts
from .runtime_helpers import PARTICIPANT, VENUE, echo_handler, registry, url
from .transport_helpers import serving
from .ws_raw import UPGRADE_REQUEST, RawClient, raw_clients

HERE = Path(__file__).resolve().parent


def _can_bind(address: str) -> bool:
    with socket.socket() as s:
        try:
            s.bind((address, 0))
        except OSError:
            return False
    return True


#: Linux routes all of 127/8 to loopback; elsewhere only 127.0.0.1 may exist.
MANY_LOOPBACKS = _can_bind("127.0.1.2")
needs_many_loopbacks = pytest.mark.skipif(
    not MANY_LOOPBACKS, reason="needs loopback addresses beyond 127.0.0.1 (Linux)"
)


async def echo_authenticated(transport: Transport) -> None:
    """Stands in for the session layer: the first message authenticates the peer."""
    first = True
    try:
        while True:
            message = await transport.receive()
            if first:
                transport.mark_authenticated()
                first = False
            await transport.send(message)
    except ts.ConnectionLost:
        pass


async def wait_for(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` (a counter of the server's, which no event announces)."""
    while not condition():  # noqa: ASYNC110 - no event to wait on
        await trio.sleep(0.01)


@asynccontextmanager
async def live_venue(
    config: ts.SessionConfig,
) -> AsyncIterator[tuple[ts.VenueServer, Callable[[], PreAuthStatistics]]]:
    """A ``ts.serve`` venue, and a function returning its transport's statistics
    (captured from the ``serve_transport`` call ``ts.serve`` makes)."""
    servers: list[TransportServer] = []

    async def capturing(
        *args: Any,
        task_status: trio.TaskStatus[TransportServer] = trio.TASK_STATUS_IGNORED,
        **kwargs: Any,
    ) -> None:
        async with trio.open_nursery() as inner:
            server: TransportServer = await inner.start(partial(serve_transport, *args, **kwargs))
            servers.append(server)
            task_status.started(server)

    async with trio.open_nursery() as nursery:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_server, "serve_transport", capturing)
            venue: ts.VenueServer = await nursery.start(
                partial(ts.serve, echo_handler, VENUE, registry(), "127.0.0.1", 0, config=config)
            )
        yield venue, servers[0].statistics
        nursery.cancel_scope.cancel()


async def expect_refused(raw: RawClient) -> None:
    """Refused at accept: an HTTP 503 before the request was even read, then EOF."""
    response = await raw.read_response()
    assert response.startswith(b"HTTP/1.1 503 Service Unavailable"), response
    assert b"Retry-After: 1" in response
    await raw.wait_eof()


async def expect_admitted(raw: RawClient) -> None:
    await raw.stream.send_all(UPGRADE_REQUEST)
    assert (await raw.read_response()).startswith(b"HTTP/1.1 101")


# -- the caps --------------------------------------------------------------------------


async def test_per_address_cap_refuses_with_503_and_frees_on_close() -> None:
    limits = TransportLimits(max_preauth_connections=100, max_preauth_per_address=3)
    with trio.fail_after(10):
        async with (
            serving(echo_authenticated, limits=limits) as server,
            raw_clients(server.port) as raw,
        ):
            held = [await raw() for _ in range(3)]
            await held[0].stream.send_all(UPGRADE_REQUEST[:30])  # slowloris: still counts
            await expect_admitted(held[1])  # upgraded, not authenticated: still counts
            start = trio.current_time()
            await expect_refused(await raw())
            assert trio.current_time() - start < 0.5  # at once, not at any deadline
            assert server.statistics() == PreAuthStatistics(
                pending=3, admitted=3, refused=1, expired=0
            )
            if MANY_LOOPBACKS:  # another address has its own count
                await expect_admitted(await raw(source="127.0.0.2"))
            await held[2].stream.aclose()  # a slot is freed when its connection ends
            await wait_for(lambda: server.statistics().pending == 2 + MANY_LOOPBACKS)
            await expect_admitted(await raw())


@needs_many_loopbacks
async def test_global_cap_refuses_across_addresses() -> None:
    limits = TransportLimits(max_preauth_connections=6, max_preauth_per_address=2)
    with trio.fail_after(10):
        async with (
            serving(echo_authenticated, limits=limits) as server,
            raw_clients(server.port) as raw,
        ):
            for i in range(6):
                await raw(source=f"127.0.0.{2 + i // 2}")
            await wait_for(lambda: server.statistics().admitted == 6)
            await expect_refused(await raw(source="127.0.0.50"))
            assert server.statistics() == PreAuthStatistics(
                pending=6, admitted=6, refused=1, expired=0
            )


async def test_authenticated_connections_leave_the_count() -> None:
    limits = TransportLimits(max_preauth_connections=10, max_preauth_per_address=2)
    with trio.fail_after(10):
        async with (
            serving(echo_authenticated, limits=limits) as server,
            trio.open_nursery() as nursery,
        ):
            clients = []
            for i in range(5):  # more than the per-address cap, all open at the end
                client = await connect_transport(
                    f"ws://127.0.0.1:{server.port}/",
                    nursery=nursery,
                    connect_timeout=5,
                    max_message_size=2**20,
                )
                await client.send(b"hello %d" % i)  # "authenticates"
                assert await client.receive() == b"hello %d" % i
                clients.append(client)
            assert server.statistics() == PreAuthStatistics(
                pending=0, admitted=5, refused=0, expired=0
            )
            for client in clients:
                await client.aclose()


async def test_tls_refusal_is_a_plain_close() -> None:
    limits = TransportLimits(max_preauth_connections=10, max_preauth_per_address=1)
    with trio.fail_after(10):
        async with (
            serving(echo_authenticated, limits=limits, tls=True) as server,
            raw_clients(server.port) as raw,
        ):
            await raw()  # no TLS handshake yet: counts
            await wait_for(lambda: server.statistics().pending == 1)
            refused = await raw()
            # Answering would cost a TLS handshake: the connection just ends.
            assert await refused.read_response() == b""
            assert refused.eof
            async with trio.open_nursery() as nursery:
                # A TLS client beyond the cap sees the connection lost, never a hang.
                with pytest.raises(ts.ConnectionLost):
                    await connect_transport(
                        f"wss://127.0.0.1:{server.port}/",
                        nursery=nursery,
                        ssl_context=tls_contexts().client,
                        connect_timeout=5,
                        max_message_size=2**20,
                    )
            assert server.statistics().refused == 2


# -- the reaper ------------------------------------------------------------------------


async def test_reaper_expires_stalled_connections_at_their_deadline() -> None:
    limits = TransportLimits(max_preauth_connections=200, max_preauth_per_address=200)
    timeout = 0.5
    ended: list[float] = []
    with trio.fail_after(10):
        async with (
            serving(echo_authenticated, limits=limits, handshake_timeout=timeout) as server,
            raw_clients(server.port) as raw,
        ):
            start = trio.current_time()
            raws = [await raw() for _ in range(60)]
            for client in raws[::2]:
                await client.stream.send_all(UPGRADE_REQUEST[:40])  # half a request

            async def watch(client: RawClient) -> None:
                assert await client.read_response() == b""  # never answered
                ended.append(trio.current_time() - start)

            async with trio.open_nursery() as nursery:
                for client in raws:
                    nursery.start_soon(watch, client)
            # Not before the deadline; 60 expiries paced ~1 ms apart end soon after.
            assert min(ended) >= timeout - 0.05, min(ended)
            assert max(ended) < timeout + 0.5, max(ended)
            await wait_for(lambda: server.statistics().pending == 0)
            assert server.statistics() == PreAuthStatistics(
                pending=0, admitted=60, refused=0, expired=60
            )


async def test_session_handshake_deadline_is_paced_by_the_reaper() -> None:
    """Upgraded connections that never send ClientHello: the venue's handshake deadline
    runs through the transport's reaper and still ends in REJECT(HANDSHAKE_TIMEOUT),
    followed by a WebSocket close frame carrying the same code."""
    cfg = ts.SessionConfig(handshake_timeout=0.5, close_timeout=0.5)
    with trio.fail_after(10):
        async with live_venue(cfg) as (venue, stats), raw_clients(venue.port) as raw:
            start = trio.current_time()
            raws = [await raw() for _ in range(30)]
            for client in raws:
                await expect_admitted(client)
            for client in raws:
                frames, close = await client.frames_until_close()
                elapsed = trio.current_time() - start
                assert 0.45 <= elapsed < 1.5, elapsed
                assert [f.payload[:1] for f in frames] == [b"\x04"]  # one REJECT
                assert close is not None
                assert (close.close_code, close.close_reason) == (4106, "HANDSHAKE_TIMEOUT")
            assert stats().expired == 30
            # ... and the venue still serves.
            async with ts.connect(url(venue), PARTICIPANT, VENUE.public_key) as session:
                await session.send(b"still here")
                assert await session.receive() == b"still here"


# -- floods against a live venue --------------------------------------------------------


class RttProbe:
    """A participant doing echo round trips every 5 ms; samples are (start, rtt) in
    ``time.monotonic()`` seconds, the clock the attacker process reports in."""

    def __init__(self, session: ts.Session) -> None:
        self.session = session
        self.samples: list[tuple[float, float]] = []

    async def run(self) -> None:
        payload = bytes(100)
        while True:
            start = time.monotonic()
            await self.session.send(payload)
            assert await self.session.receive() == payload
            self.samples.append((start, time.monotonic() - start))
            await trio.sleep(0.005)

    def window(self, lo: float, hi: float) -> list[float]:
        return sorted(rtt for start, rtt in self.samples if lo <= start < hi)


def p99(rtts: list[float]) -> float:
    return rtts[min(len(rtts) - 1, int(0.99 * len(rtts)))]


def describe(name: str, rtts: list[float]) -> str:
    if not rtts:
        return f"{name}: n=0 (no round trip completed in this window)"
    return (
        f"{name}: n={len(rtts)} p50={rtts[len(rtts) // 2] * 1e3:.2f} ms "
        f"p99={p99(rtts) * 1e3:.2f} ms max={rtts[-1] * 1e3:.2f} ms"
    )


class Attacker:
    """tests/preauth_flood.py in a subprocess, driven over its stdin/stdout."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._buffer = b""

    async def line(self) -> dict[str, object]:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some()
            assert chunk, "the attacker process ended early"
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        result: dict[str, object] = json.loads(line)
        return result

    async def closed(self) -> int:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(b"report\n")
        report = await self.line()
        return int(str(report["closed"]))


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} file descriptors; the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def _flood(n: int, sources: int, handshake_timeout: float) -> None:
    """``n`` pre-authentication connections from ``sources`` addresses (a third idle,
    a third slowloris, a third upgraded and silent) against a default-configured venue
    while a participant measures its round-trip time."""
    _raise_fd_limit(n + 512)
    cfg = ts.SessionConfig(handshake_timeout=handshake_timeout)
    cap = cfg.max_preauth_connections
    assert n // sources < cfg.max_preauth_per_address  # the global cap is the one tested
    async with (
        live_venue(cfg) as (venue, stats),
        ts.connect(url(venue), PARTICIPANT, VENUE.public_key) as session,
    ):
        probe = RttProbe(session)
        async with trio.open_nursery() as probing:
            probing.start_soon(probe.run)
            await trio.sleep(1.5)
            before = stats()
            attack_start = time.monotonic()
            command = [sys.executable, str(HERE / "preauth_flood.py")]
            process = await trio.lowlevel.open_process(
                [*command, str(venue.port), str(n), str(sources)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            try:
                attacker = Attacker(process)
                with trio.fail_after(30):
                    ready = await attacker.line()
                    seen = before.admitted + before.refused + n
                    await wait_for(lambda: stats().admitted + stats().refused == seen)
                ready_at = time.monotonic()
                first, last = float(str(ready["first"])), float(str(ready["last"]))
                admitted = stats().admitted - before.admitted
                refused = stats().refused - before.refused
                # Refused beyond the cap: all at once, if the attacker was done
                # before the first deadline could free a slot.
                assert admitted <= cap or last - first > handshake_timeout
                if last - first < handshake_timeout - 0.5:
                    assert (admitted, refused) == (cap, n - cap)
                # Held until the deadline, then expired (or refused) by the venue.
                with trio.fail_after(handshake_timeout + 10):
                    while await attacker.closed() < n:  # noqa: ASYNC110 - a subprocess
                        await trio.sleep(0.05)
                all_closed = time.monotonic()
                with trio.fail_after(2):  # the venue's tasks end just after the sockets
                    await wait_for(lambda: stats().pending == 0)
                assert stats().expired - before.expired == admitted
                await trio.sleep(1.3)
            finally:
                with trio.CancelScope(shield=True):
                    process.kill()
                    await process.wait()
            probing.cancel_scope.cancel()

    first_deadline = first + handshake_timeout
    pre = probe.window(attack_start - 1.4, attack_start)
    post = probe.window(all_closed + 0.3, all_closed + 1.3)
    ramp = probe.window(attack_start, ready_at + 0.2)
    held = probe.window(ready_at + 0.2, first_deadline - 0.05)
    expiry = probe.window(first_deadline - 0.05, all_closed + 0.3)
    base = max(p99(pre), p99(post))
    print(
        f"\n{n} pre-auth connections from {sources} addresses: {admitted} admitted, "
        f"{refused} refused; connected in {last - first:.2f} s; all admitted closed "
        f"{all_closed - first_deadline:.2f} s after the first deadline"
    )
    for name, rtts in (
        ("baseline before", pre),
        ("baseline after", post),
        ("ramp (not asserted)", ramp),
        ("held", held),
        ("timing out", expiry),
    ):
        print("  " + describe(name, rtts))
    if os.environ.get("FLOOD_DEBUG"):
        top = sorted(probe.samples, key=lambda x: -x[1])[:15]
        print("  worst:", [(round(t - first_deadline, 3), round(r * 1e3, 2)) for t, r in top])
    assert len(pre) > 100 and len(post) > 50 and len(held) > 20 and len(expiry) > 20
    assert p99(held) < 3 * base, describe("held", held)
    assert p99(expiry) < 3 * base, describe("timing out", expiry)


@pytest.mark.timing
@needs_many_loopbacks
async def test_preauth_flood_does_not_stall_participants() -> None:
    await _flood(2000, sources=40, handshake_timeout=2.5)


@pytest.mark.soak
@pytest.mark.timing
@needs_many_loopbacks
async def test_5000_idle_preauth_connections_soak() -> None:
    await _flood(5000, sources=100, handshake_timeout=5.0)


def test_config_validates_the_preauth_fields() -> None:
    with pytest.raises(ValueError, match="max_preauth_per_address must not exceed"):
        ts.SessionConfig(max_preauth_connections=10, max_preauth_per_address=11)
    with pytest.raises(ValueError, match="websocket_ping_rate"):
        ts.SessionConfig(websocket_ping_rate=0)
    limits = TransportLimits.from_config(
        ts.SessionConfig(
            max_preauth_connections=7, max_preauth_per_address=3, websocket_ping_rate=2.5
        )
    )
    assert limits == TransportLimits(
        max_preauth_connections=7, max_preauth_per_address=3, websocket_ping_rate=2.5
    )
    assert os.path.isfile(HERE / "preauth_flood.py")
