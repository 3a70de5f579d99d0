"""The venue's stream guard below trio-websocket: declared lengths, fragments, pings,
pipelined data after the upgrade request, and close frames trio-websocket owes.

Unit tests drive :class:`StreamGuard` over a Trio memory stream (deterministic, the
ping meter under ``MockClock``); live tests run a raw client against ``serve_transport``
or ``ts.serve`` over loopback and look at the bytes the venue answers with.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import trio_session as ts
from trio_session._transport_guard import (
    MAX_FRAGMENTS,
    MAX_REQUEST_HEAD,
    StreamGuard,
    close_frame,
    is_sendable_close_code,
)
from trio_session.protocol import ClientConnection, HandshakeComplete, MessagesReceived

from .runtime_helpers import PARTICIPANT, VENUE, echo_handler, registry, url
from .transport_helpers import serving
from .ws_raw import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    UPGRADE_REQUEST,
    RawClient,
    ServerFrame,
    frame,
    raw_clients,
)

LIMIT = 2**20

# -- unit: the frame-header scanner ----------------------------------------------------


def guard_pair(
    *, limit: int = LIMIT, ping_rate: float = 5.0
) -> tuple[StreamGuard, trio.testing.MemorySendStream]:
    client, server = trio.testing.memory_stream_pair()
    guard = StreamGuard(
        server, address="memory", max_message_size=limit, ping_rate=ping_rate, close_timeout=1.0
    )
    guard.upgraded(None)
    return guard, client  # type: ignore[return-value]


VALID_STREAM = b"".join(
    (
        frame(OP_BINARY, b"x" * 125),  # 7-bit length
        frame(OP_BINARY, b"y" * 300),  # 16-bit length
        frame(OP_BINARY, b"z" * 70_000),  # 64-bit length
        frame(OP_PING, b"p"),
        frame(OP_BINARY, b"a" * 10, fin=False),
        frame(OP_CONTINUATION, b""),  # fragments, an empty one among them
        frame(OP_CONTINUATION, b"b" * 10),
    )
)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 13, 4096])
async def test_scanner_follows_headers_split_anywhere(chunk: int) -> None:
    guard, _ = guard_pair(limit=70_000)
    for i in range(0, len(VALID_STREAM), chunk):
        assert not guard._scan(VALID_STREAM[i : i + chunk]), guard.violation
    # The scanner ends exactly at a frame boundary: the next header is checked.
    assert guard._scan(frame(OP_BINARY, b"", length=70_001))
    assert guard.violation is not None and guard.violation[0] == 1009


async def test_declared_length_over_the_limit_is_a_violation_at_the_header() -> None:
    guard, _ = guard_pair()
    # Only the header of a 2^62-byte frame: no payload byte has arrived.
    assert guard._scan(frame(OP_BINARY, b"", length=2**62)[:14])
    assert guard.violation == (
        1009,
        f"message declares {2**62} bytes, over the limit of {LIMIT}",
    )


async def test_message_size_counts_all_fragments() -> None:
    guard, _ = guard_pair(limit=100)
    assert not guard._scan(frame(OP_BINARY, b"a" * 60, fin=False))
    assert guard._scan(frame(OP_CONTINUATION, b"", length=41)[:8])
    assert guard.violation is not None and guard.violation[0] == 1009


async def test_fragment_flood_is_a_violation() -> None:
    guard, _ = guard_pair()
    data = frame(OP_BINARY, b"", fin=False) + frame(OP_CONTINUATION, b"", fin=False) * (
        MAX_FRAGMENTS - 1
    )
    assert not guard._scan(data)  # exactly MAX_FRAGMENTS frames: allowed
    assert guard._scan(frame(OP_CONTINUATION, b"", fin=False))
    assert guard.violation == (1008, f"message split into more than {MAX_FRAGMENTS} frames")
    # A new message starts a new count.
    guard2, _ = guard_pair()
    for _ in range(3 * MAX_FRAGMENTS):
        assert not guard2._scan(frame(OP_BINARY, b"m"))


async def test_ping_meter_allows_bursts_and_the_rate(autojump_clock: trio.abc.Clock) -> None:
    guard, _ = guard_pair(ping_rate=5.0)
    for _ in range(10):  # a burst of twice the rate
        assert not guard._scan(frame(OP_PING, b"p"))
    assert guard._scan(frame(OP_PONG, b"p"))  # pongs count too
    assert guard.violation == (1008, "more than 5 pings or pongs per second")
    guard, _ = guard_pair(ping_rate=5.0)
    for _ in range(50):  # the rate itself, for ten seconds
        await trio.sleep(0.2)
        assert not guard._scan(frame(OP_PING, b"p"))
    # Close frames and data frames are not metered.
    for _ in range(100):
        assert not guard._scan(frame(OP_CLOSE, b"\x03\xe8") + frame(OP_BINARY, b"d"))


def test_close_frames_and_codes() -> None:
    assert close_frame(1000) == b"\x88\x02\x03\xe8"
    long = close_frame(4106, "é" * 100)  # 200 bytes of UTF-8: cut at a character
    assert len(long) == 2 + 2 + 122 and long[1] == 124
    long[4:].decode("utf-8")
    sendable = [c for c in range(5000) if is_sendable_close_code(c)]
    assert sendable[:3] == [1000, 1001, 1002]
    assert not {1004, 1005, 1006, 1015, 2000, 2999} & set(sendable)
    assert {1007, 1008, 1009, 1011, 3000, 4000, 4999} <= set(sendable)


# -- unit: the request head and what follows it ----------------------------------------


async def test_request_head_is_handed_over_alone_and_the_rest_after_the_upgrade() -> None:
    client, server = trio.testing.memory_stream_pair()
    guard = StreamGuard(
        server, address="memory", max_message_size=LIMIT, ping_rate=5, close_timeout=1
    )
    pipelined = frame(OP_BINARY, b"first message")
    await client.send_all(UPGRADE_REQUEST + pipelined)
    with trio.fail_after(1):
        assert await guard.read_request_head()
        assert await guard.receive_some() == UPGRADE_REQUEST
        got: list[bytes | bytearray] = []
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                got.append(await guard.receive_some())

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # held back until the upgrade is accepted
            guard.upgraded(None)
        assert got == [pipelined]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello on a plain port
        b"POST / HTTP/1.1\r\n",
        b"GET / HTTP/1.1\r\nX-Long: " + b"a" * MAX_REQUEST_HEAD,
    ],
    ids=["tls", "post", "too-long"],
)
async def test_request_head_refused_at_once(request_bytes: bytes) -> None:
    client, server = trio.testing.memory_stream_pair()
    guard = StreamGuard(
        server, address="memory", max_message_size=LIMIT, ping_rate=5, close_timeout=1
    )
    await client.send_all(request_bytes)
    with trio.fail_after(1):
        assert not await guard.read_request_head()


# -- live: serve_transport ----------------------------------------------------------------


async def upgraded(raw: RawClient, pipelined: bytes = b"") -> None:
    await raw.stream.send_all(UPGRADE_REQUEST + pipelined)
    assert (await raw.read_response()).startswith(b"HTTP/1.1 101")


async def expect_close(raw: RawClient, code: int, *, within: float) -> str:
    """The next thing from the venue is a close frame with ``code``, and then EOF,
    within ``within`` seconds; returns the reason."""
    start = trio.current_time()
    frames, close = await raw.frames_until_close()
    assert close is not None, f"no close frame (frames: {frames})"
    assert close.close_code == code, close
    assert raw.eof
    assert trio.current_time() - start < within
    return close.close_reason


@pytest.mark.parametrize(
    ("attack", "code", "reason"),
    [
        (frame(OP_BINARY, b"", length=2**62)[:14], 1009, "message declares 4611686018427387904"),
        (
            frame(OP_BINARY, b"", fin=False) + frame(OP_CONTINUATION, b"", fin=False) * 20_000,
            1008,
            "message split into more than 256 frames",
        ),
    ],
    ids=["2^62-byte header", "20,000 empty continuations"],
)
async def test_declared_sizes_refused_at_once(attack: bytes, code: int, reason: str) -> None:
    """Refused as soon as the header arrives, not at the 5 s deadline."""
    with trio.fail_after(5):
        async with serving() as server, raw_clients(server.port) as raw:
            client = await raw()
            await upgraded(client)
            await client.stream.send_all(attack)
            assert (await expect_close(client, code, within=0.5)).startswith(reason)


async def test_invalid_utf8_text_frame_is_closed_with_1007() -> None:
    with trio.fail_after(5):
        async with serving() as server, raw_clients(server.port) as raw:
            client = await raw()
            await upgraded(client)
            await client.stream.send_all(frame(OP_TEXT, b"\xff\xfe not utf-8"))
            await expect_close(client, 1007, within=1.0)


async def test_websocket_framing_errors_are_closed_with_1002() -> None:
    """RFC 6455: a client frame must be masked.  wsproto finds the error; the close frame
    that trio-websocket decides on but does not send is written by the guard."""
    with trio.fail_after(5):
        async with serving() as server, raw_clients(server.port) as raw:
            client = await raw()
            await upgraded(client)
            await client.stream.send_all(bytes((0x82, 5)) + b"hello")  # no mask bit
            await expect_close(client, 1002, within=1.0)


async def test_pipelined_first_message_is_processed() -> None:
    """RFC 6455 asks clients to wait for the 101; many do not.  The message sent in the
    same TCP write as the upgrade request is echoed like any other."""
    with trio.fail_after(5):
        async with serving() as server, raw_clients(server.port) as raw:
            client = await raw()
            await upgraded(client, pipelined=frame(OP_BINARY, b"hello") + frame(OP_BINARY, b"2"))
            assert [await client.next_frame() for _ in range(2)] == [
                ServerFrame(OP_BINARY, b"hello"),
                ServerFrame(OP_BINARY, b"2"),
            ]


# -- live: ts.serve -----------------------------------------------------------------------


@asynccontextmanager
async def venue(**config: Any) -> AsyncIterator[ts.VenueServer]:
    cfg = ts.SessionConfig(**{"handshake_timeout": 2.0, "close_timeout": 0.5, **config})
    async with trio.open_nursery() as nursery:
        server: ts.VenueServer = await nursery.start(
            partial(ts.serve, echo_handler, VENUE, registry(), "127.0.0.1", 0, config=cfg)
        )
        yield server
        nursery.cancel_scope.cancel()


async def test_pipelined_client_hello_completes_the_handshake() -> None:
    with trio.fail_after(5):
        async with venue() as server, raw_clients(server.port) as raw:
            conn = ClientConnection(
                PARTICIPANT, VENUE.public_key, ts.SessionConfig(), clock=trio.current_time
            )
            (m1,) = conn.data_to_send()
            client = await raw()
            await upgraded(client, pipelined=frame(OP_BINARY, m1))  # one TCP write
            m2 = await client.next_frame()
            assert m2 is not None and m2.opcode == OP_BINARY
            (done,) = conn.receive_data(m2.payload)
            assert isinstance(done, HandshakeComplete)
            for out in conn.data_to_send():  # M3
                await client.stream.send_all(frame(OP_BINARY, out))
            await client.stream.send_all(frame(OP_BINARY, conn.send_data([b"order-1"])))
            echoed: list[bytes] = []
            while not echoed:
                f = await client.next_frame()
                assert f is not None
                for event in conn.receive_data(f.payload):
                    if isinstance(event, MessagesReceived):
                        echoed += event.payloads
            assert echoed == [b"order-1"]


async def test_refusals_end_with_a_close_frame_carrying_the_code() -> None:
    """A browser cannot read our binary REJECT; the WebSocket close frame after it says
    the same: 4000 + the protocol code, and the code's name."""
    unknown = ts.Identity.from_seed(bytes(range(100, 132)))
    with trio.fail_after(5):
        async with venue(handshake_timeout=0.5) as server, raw_clients(server.port) as raw:
            silent = await raw()  # upgraded, never sends ClientHello
            await upgraded(silent)
            conn = ClientConnection(
                unknown, VENUE.public_key, ts.SessionConfig(), clock=trio.current_time
            )
            stranger = await raw()  # a key the venue never registered
            await upgraded(stranger, pipelined=frame(OP_BINARY, conn.data_to_send()[0]))
            for client, code in ((stranger, ts.CloseCode.UNKNOWN_KEY), (silent, 106)):
                frames, close = await client.frames_until_close()
                (reject,) = frames
                assert reject.payload[:14] == bytes([0x04]) + bytes(13)  # REJECT header
                assert msgspec.msgpack.decode(reject.payload[14:])["code"] == code
                assert close is not None
                name = ts.CloseCode(code).name
                assert (close.close_code, close.close_reason) == (4000 + code, name)


async def test_ping_flood_closes_that_connection_and_spares_a_participant() -> None:
    with trio.fail_after(10):
        async with (
            venue() as server,
            raw_clients(server.port) as raw,
            ts.connect(url(server), PARTICIPANT, VENUE.public_key) as session,
        ):
            flooder = await raw()
            await upgraded(flooder)
            start = trio.current_time()
            with suppress(trio.BrokenResourceError):  # the venue may hang up first
                await flooder.stream.send_all(frame(OP_PING, b"p") * 20_000)
            frames, close = await flooder.frames_until_close()
            assert close is not None, frames
            assert (close.close_code, close.close_reason) == (
                1008,
                "more than 5 pings or pongs per second",
            )
            assert trio.current_time() - start < 1.0
            assert all(f.opcode == OP_PONG for f in frames)
            assert len(frames) <= 10  # at most the burst was answered
            # The participant's session never noticed.
            for i in range(20):
                await session.send(b"order %d" % i)
                assert await session.receive() == b"order %d" % i
            assert session.state is ts.State.LIVE
