"""A raw WebSocket client over a plain Trio socket, for tests that need to see (or send)
exactly what a library client would hide: pipelined bytes, hand-made frame headers,
floods, and the close frame (or its absence) that ends a connection.

Frames sent are masked (client to server, RFC 6455 §5.3); frames received are parsed
from the byte stream as they come.
"""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import attrs
import trio

__all__ = [
    "UPGRADE_REQUEST",
    "RawClient",
    "ServerFrame",
    "frame",
    "open_raw",
    "raw_clients",
]

#: A complete, valid upgrade request for 127.0.0.1 (the key is RFC 6455's sample).
UPGRADE_REQUEST = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, length: int | None = None
) -> bytes:
    """A masked client frame.  ``length`` overrides the declared payload length (the
    payload actually sent is still ``payload``), to lie in the header."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        header = bytes((b0, 0x80 | n))
    elif n < 2**16:
        header = bytes((b0, 0x80 | 126)) + struct.pack("!H", n)
    else:
        header = bytes((b0, 0x80 | 127)) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@attrs.frozen
class ServerFrame:
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        return int.from_bytes(self.payload[:2], "big") if len(self.payload) >= 2 else None

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode("utf-8")


class RawClient:
    """One raw connection: the HTTP response, then server frames in order."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.response = b""
        #: True once the server closed (or reset) the TCP connection.
        self.eof = False

    async def _fill(self) -> bool:
        try:
            data = await self.stream.receive_some()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    async def read_response(self) -> bytes:
        """The HTTP response head (status line and headers), or b"" if none came."""
        while b"\r\n\r\n" not in self.buffer:
            if not await self._fill():
                return b""
        self.response, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        return self.response

    async def next_frame(self) -> ServerFrame | None:
        """The next server frame, or None at the end of the stream."""
        while True:
            parsed = self._parse()
            if parsed is not None:
                return parsed
            if not await self._fill():
                return None

    def _parse(self) -> ServerFrame | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        n, size = buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                return None
            n, size = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, size = struct.unpack("!Q", buf[2:10])[0], 10
        if len(buf) < size + n:
            return None
        self.buffer = buf[size + n :]
        return ServerFrame(buf[0] & 0x0F, bytes(buf[size : size + n]))

    async def frames_until_close(self) -> tuple[list[ServerFrame], ServerFrame | None]:
        """Every frame up to the close frame (returned apart), then the end of the
        stream; the close is None if the server just dropped the connection."""
        frames: list[ServerFrame] = []
        while (f := await self.next_frame()) is not None:
            if f.opcode == OP_CLOSE:
                await self.wait_eof()
                return frames, f
            frames.append(f)
        return frames, None

    async def wait_eof(self) -> None:
        while await self._fill():
            pass


@asynccontextmanager
async def raw_clients(port: int) -> AsyncIterator[Callable[..., Awaitable[RawClient]]]:
    """``open_raw`` for ``port``, with every client it opened closed at the end."""
    opened: list[RawClient] = []

    async def opener(*, source: str | None = None) -> RawClient:
        client = await open_raw(port, source=source)
        opened.append(client)
        return client

    try:
        yield opener
    finally:
        for client in opened:
            await trio.aclose_forcefully(client.stream)


async def open_raw(port: int, *, host: str = "127.0.0.1", source: str | None = None) -> RawClient:
    """Connect a raw client to ``host:port`` (from ``source``, a local IP, if given)."""
    if source is None:
        return RawClient(await trio.open_tcp_stream(host, port))
    sock = trio.socket.socket()
    try:
        await sock.bind((source, 0))
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return RawClient(trio.SocketStream(sock))
