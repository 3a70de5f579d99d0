"""The first handshake messages in the WebSocket upgrade (docs/protocol.md, "The first
messages in the upgrade"): the header codec, the transport over real loopback sockets
both ways, the fallback to in-band M1 against a venue that does not know the header or
behind a proxy that drops the 101's, and malformed or different hellos refused by
``ts.serve``."""

from __future__ import annotations

import base64
from functools import partial
from typing import Any

import pytest
import trio
import trio_websocket

import trio_session as ts
from trio_session import _client
from trio_session._transport import Transport, WebSocketTransport, connect_transport
from trio_session._transport_hello import HELLO_HEADER, hello_header, hello_in
from trio_session.protocol import ClientConnection

from .runtime_helpers import PARTICIPANT, VENUE, registry
from .transport_helpers import start_serving

DEADLINE = 10.0
REJECT = 0x04
PROTOCOL_ERROR = int(ts.CloseCode.PROTOCOL_ERROR)


@pytest.mark.parametrize("frame", [b"", b"\x01", b"\x01\x02", b"\x00" * 14, bytes(range(256))])
def test_header_round_trip(frame: bytes) -> None:
    ((name, value),) = hello_header(frame)
    assert name == HELLO_HEADER
    assert b"=" not in value and b"+" not in value and b"/" not in value  # base64url, no padding
    assert hello_in([(b"Tsess-Hello", value)]) == frame  # names compare case-insensitively


def test_header_absent_or_malformed() -> None:
    assert hello_in([(b"host", b"x")]) is None
    good = hello_header(b"frame")[0][1]
    assert hello_in([(HELLO_HEADER, b"a+b/")]) == b""  # base64, not base64url
    assert hello_in([(HELLO_HEADER, b"abcde")]) == b""  # no valid length
    assert hello_in([(HELLO_HEADER, good), (HELLO_HEADER, good)]) == b""  # twice


def _url(port: int) -> str:
    return f"ws://127.0.0.1:{port}/"


async def _connect_with_hello(port: int, nursery: trio.Nursery) -> WebSocketTransport:
    return await connect_transport(
        _url(port), nursery=nursery, connect_timeout=5.0, max_message_size=2**20, hello=b"M1"
    )


async def test_hello_and_answer_go_with_the_upgrade() -> None:
    got: list[bytes] = []

    async def handler(transport: Transport) -> None:
        hello = await transport.receive()  # from the request, no WebSocket message yet
        got.append(hello)
        await transport.send(b"answer to " + hello)  # goes in the 101
        got.append(await transport.receive())  # in band from now on
        await transport.send(b"in band")

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await start_serving(
                nursery, handler, handshake_timeout=5.0, tls=False, max_message_size=2**20
            )
            transport = await _connect_with_hello(server.port, nursery)
            assert transport.hello_taken
            assert await transport.receive() == b"answer to M1"
            await transport.send(b"M3")
            assert await transport.receive() == b"in band"
            await transport.aclose()
            nursery.cancel_scope.cancel()
    assert got == [b"M1", b"M3"]


async def test_a_venue_without_the_header_gets_hello_in_band() -> None:
    """trio-websocket's own server ignores the header: nothing comes back in the 101."""

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        message = await ws.get_message()
        assert isinstance(message, bytes)
        await ws.send_message(b"echo " + message)

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            servers = await nursery.start(
                partial(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, ssl_context=None)
            )
            transport = await _connect_with_hello(servers.port, nursery)
            assert not transport.hello_taken
            await transport.send(b"M1")
            assert await transport.receive() == b"echo M1"
            await transport.aclose()
            nursery.cancel_scope.cancel()


async def test_a_client_without_the_header_speaks_first_in_band() -> None:
    async def handler(transport: Transport) -> None:
        await transport.send(b"got " + await transport.receive())

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            server = await start_serving(
                nursery, handler, handshake_timeout=5.0, tls=False, max_message_size=2**20
            )
            async with trio_websocket.open_websocket_url(_url(server.port)) as ws:
                assert hello_in(ws.handshake_headers) is None
                await ws.send_message(b"M1")
                assert await ws.get_message() == b"got M1"
            nursery.cancel_scope.cancel()


def _m1() -> bytes:
    conn = ClientConnection(PARTICIPANT, VENUE.public_key, ts.SessionConfig(), resume=None)
    (m1,) = conn.data_to_send()
    return m1


async def _idle(session: ts.Session) -> None:
    await trio.sleep_forever()


async def _serve(nursery: trio.Nursery) -> int:
    cfg = ts.SessionConfig(handshake_timeout=5.0)
    server = await nursery.start(
        partial(ts.serve, _idle, VENUE, registry(), "127.0.0.1", 0, config=cfg)
    )
    return int(server.port)


async def _refusal_of(header: bytes, then_in_band: bytes | None = None) -> tuple[bytes, int]:
    """Against ts.serve: the first frame in the 101, and the WebSocket close code.

    Over our own TCP stream, closed at the end (trio-websocket's client leaves the
    socket open after a close by the server)."""
    async with trio.open_nursery() as nursery:
        port = await _serve(nursery)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            ws = await trio_websocket.wrap_client_stream(
                nursery, stream, "127.0.0.1", "/", extra_headers=[(b"Tsess-Hello", header)]
            )
            first = hello_in(ws.handshake_headers)
            assert first is not None
            if then_in_band is not None:
                await ws.send_message(then_in_band)
                assert (await ws.get_message())[0] == REJECT  # in band: the 101 is spent
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await ws.get_message()
        finally:
            await trio.aclose_forcefully(stream)
        nursery.cancel_scope.cancel()
    assert closed.value.reason is not None
    return first, closed.value.reason.code


async def test_a_malformed_hello_header_is_refused_in_the_101() -> None:
    with trio.fail_after(DEADLINE):
        first, code = await _refusal_of(b"not*base64url")
    assert first[0] == REJECT
    assert code == 4000 + PROTOCOL_ERROR


async def test_a_different_hello_in_band_after_one_in_the_request_is_a_protocol_error() -> None:
    header = base64.urlsafe_b64encode(_m1()).rstrip(b"=")
    with trio.fail_after(DEADLINE):
        first, code = await _refusal_of(header, _m1())  # a second, different ClientHello
    assert first[0] == 0x02  # M2: the venue took M1 from the request and answered in the 101
    assert code == 4000 + PROTOCOL_ERROR  # then refused the other ClientHello


async def test_a_dropped_101_header_gets_the_same_answer_in_band() -> None:
    """A proxy that forwards the request's Tsess-Hello but drops the 101's: the
    participant, seeing no answer, sends the same M1 in band, and the venue sends the
    same M2 again; the handshake completes."""
    conn = ClientConnection(PARTICIPANT, VENUE.public_key, ts.SessionConfig(), resume=None)
    (m1,) = conn.data_to_send()
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await _serve(nursery)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            try:
                ws = await trio_websocket.wrap_client_stream(
                    nursery, stream, "127.0.0.1", "/", extra_headers=hello_header(m1)
                )
                in_101 = hello_in(ws.handshake_headers)  # what the proxy would drop
                await ws.send_message(m1)
                m2 = await ws.get_message()
                assert m2 == in_101  # the same bytes: no second signature
                assert isinstance(m2, bytes)
                conn.receive_data(m2)
                for frame in conn.data_to_send():  # M3
                    await ws.send_message(frame)
                confirmation = await ws.get_message()
                assert isinstance(confirmation, bytes)
                conn.receive_data(confirmation)
                assert conn.authenticated
            finally:
                await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()


async def test_connect_fails_on_an_unknown_key_refused_in_the_101(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[WebSocketTransport] = []

    async def recording(*args: Any, **kwargs: Any) -> WebSocketTransport:
        opened.append(await connect_transport(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(_client, "connect_transport", recording)
    stranger = ts.Identity.generate()
    cfg = ts.SessionConfig(handshake_timeout=5.0)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await _serve(nursery)
            with pytest.raises(ts.AuthenticationError) as refused:
                async with ts.connect(
                    _url(port),
                    stranger,
                    VENUE.public_key,
                    config=cfg,
                    restart=ts.RestartPolicy(enabled=False),
                ):
                    pass  # pragma: no cover
            nursery.cancel_scope.cancel()
    assert refused.value.code is ts.CloseCode.UNKNOWN_KEY
    assert len(opened) == 1 and opened[0].hello_taken  # the REJECT came in the 101


async def test_a_participant_gone_before_the_101_costs_the_venue_nothing_more(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The venue answers a hello from a connection that is already closed: its 101 write
    fails quietly (no error logged) and the venue keeps serving."""
    m1 = base64.urlsafe_b64encode(_m1()).rstrip(b"=")
    request = (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Tsess-Hello: " + m1 + b"\r\n\r\n"
    )
    caplog.set_level("WARNING", logger="trio_session")
    cfg = ts.SessionConfig(handshake_timeout=5.0)
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await _serve(nursery)
            for _ in range(3):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(request)
                await trio.aclose_forcefully(stream)
            async with ts.connect(_url(port), PARTICIPANT, VENUE.public_key, config=cfg) as session:
                assert session.state is ts.State.LIVE
            nursery.cancel_scope.cancel()
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
