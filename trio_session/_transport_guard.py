"""A thin stream below trio-websocket on the venue side: the checks it cannot make.

Why a stream wrapper, and not changes to how we drive trio-websocket: trio-websocket
0.12.2 stays our WebSocket layer, and we neither drive the wsproto object under it
nor touch its private attributes.  Four defects of that stack are only visible, and
only fixable, at the byte stream it reads and writes:

* **Pipelined data after the upgrade request is lost.**  wsproto 1.3.2's server
  (``H11Handshake._accept``) builds the post-upgrade connection *without* the bytes
  h11 already buffered behind the request head, so a first frame sent in the same TCP
  write as the HTTP upgrade vanishes (and bytes arriving before trio-websocket sent
  its 101 response are buffered the same way).  :meth:`StreamGuard.read_request_head`
  reads the request head itself; the guard hands trio-websocket the head alone, holds
  every later byte back until the upgrade has been accepted (:meth:`StreamGuard.upgraded`),
  then delivers it.
* **Declared lengths are not checked.**  trio-websocket counts a message's bytes only as
  they arrive, so a frame header declaring 2^62 bytes, or a message split into 20,000
  empty continuation frames, holds the connection open until some deadline.  The guard
  parses each inbound frame header (2 to 14 bytes, no payload copy) and fails the
  connection at once: WebSocket 1009 when a frame or message declares more than the
  size limit, 1008 when a message has more than :data:`MAX_FRAGMENTS` frames.
* **Pings are unmetered.**  trio-websocket answers every ping itself; a flood of them
  makes the venue spend a core on pongs.  The guard meters ping and pong frames per
  connection (a token bucket) and fails the connection with 1008 beyond the rate.
* **Some closes carry no close frame.**  When wsproto finds invalid data (e.g. a text
  frame that is not UTF-8, which RFC 6455 answers with 1007), trio-websocket records the
  code but closes TCP without sending the close frame.  The guard sees which frames
  went out; when trio-websocket closes the stream while a close frame is still owed,
  the guard writes it first.

The guard writes a close frame only when no other write is in progress (so frames are
never interleaved) and only within ``close_timeout``; a peer that does not read simply
loses the TCP connection.  Server frames are unmasked, so the frame is two header bytes,
the code and up to 123 bytes of reason.  This module is private.
"""

from __future__ import annotations

import logging
from typing import Final

import trio
import trio_websocket

__all__ = [
    "MAX_FRAGMENTS",
    "MAX_REQUEST_HEAD",
    "StreamGuard",
    "close_frame",
    "is_sendable_close_code",
]

logger = logging.getLogger("trio_session.transport")

#: Most frames one WebSocket message may be split into.  A client that fragments a
#: 1 MiB message into 4 KiB frames needs 256; empty continuation frames count too.
MAX_FRAGMENTS: Final = 256
#: Largest HTTP upgrade request head (request line and headers) read before the upgrade;
#: the same bound as h11's default.
MAX_REQUEST_HEAD: Final = 16 * 1024
#: RFC 6455 limits a close reason to 123 bytes (a control frame carries at most 125).
MAX_CLOSE_REASON: Final = 123

_OP_CONTINUATION: Final = 0x0
_OP_CLOSE: Final = 0x8
_OP_PING: Final = 0x9
_OP_PONG: Final = 0xA


def is_sendable_close_code(code: int) -> bool:
    """True for a close code that may appear in a close frame (RFC 6455 §7.4)."""
    return (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code <= 4999


def close_frame(code: int, reason: str = "") -> bytes:
    """An unmasked (server-to-client) close frame with ``code`` and ``reason``.

    The reason is cut to 123 bytes of UTF-8 at a character boundary.
    """
    text = reason.encode("utf-8")
    if len(text) > MAX_CLOSE_REASON:
        text = text[:MAX_CLOSE_REASON].decode("utf-8", "ignore").encode("utf-8")
    payload = code.to_bytes(2, "big") + text
    return bytes((0x80 | _OP_CLOSE, len(payload))) + payload


class StreamGuard(trio.abc.Stream):
    """The stream trio-websocket reads and writes on the venue side; see the module doc.

    Lifecycle: :meth:`read_request_head` (our task, before trio-websocket starts), then
    trio-websocket takes over, :meth:`upgraded` once it accepted the upgrade, and
    :meth:`fail` or :meth:`aclose` at the end.  :attr:`violation` records why the guard
    failed the connection, for the error the transport raises.
    """

    __slots__ = (
        "_close_sent",
        "_close_timeout",
        "_closed",
        "_held",
        "_last_ping",
        "_max_message_size",
        "_msg_bytes",
        "_msg_frames",
        "_pending_head",
        "_ping_burst",
        "_ping_rate",
        "_sending",
        "_skip",
        "_tail",
        "_tokens",
        "_upgrade_done",
        "_upgraded",
        "_ws",
        "address",
        "stream",
        "violation",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        address: str,
        max_message_size: int,
        ping_rate: float,
        close_timeout: float,
    ) -> None:
        self.stream = stream
        self.address = address
        #: ``(code, reason)`` of the close frame the guard sent when it failed the
        #: connection itself, else None.
        self.violation: tuple[int, str] | None = None
        self._max_message_size = max_message_size
        self._ping_rate = ping_rate
        self._ping_burst = max(1.0, 2.0 * ping_rate)
        self._tokens = self._ping_burst
        self._last_ping = 0.0
        self._close_timeout = close_timeout
        self._closed = False
        self._close_sent = False
        self._sending = False
        self._upgraded = False
        self._upgrade_done = trio.Event()
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._pending_head: bytes | None = None
        self._held = b""
        # Inbound frame parser: payload bytes still to skip, and an incomplete header.
        self._skip = 0
        self._tail = b""
        self._msg_bytes = 0
        self._msg_frames = 0

    # -- before the upgrade ------------------------------------------------------------

    async def read_request_head(self) -> bool:
        """Read the HTTP upgrade request up to its blank line; False to refuse the client.

        Refused (without an answer): a connection that ends first, a request that does
        not start with ``GET `` (RFC 6455 requires GET; this stops TLS or garbage on a
        plain port at once), or a head over :data:`MAX_REQUEST_HEAD` bytes.
        """
        buf = bytearray()
        while True:
            data = await self.stream.receive_some(MAX_REQUEST_HEAD)
            if not data:
                return False
            start = max(0, len(buf) - 3)
            buf += data
            end = buf.find(b"\r\n\r\n", start)
            if end >= 0:
                self._pending_head = bytes(buf[: end + 4])
                self._held = bytes(buf[end + 4 :])
                return True
            if len(buf) >= MAX_REQUEST_HEAD or not b"GET ".startswith(bytes(buf[:4])):
                return False

    def upgraded(self, ws: trio_websocket.WebSocketConnection | None) -> None:
        """trio-websocket accepted the upgrade: from now on bytes are WebSocket frames.

        ``ws`` tells the close code trio-websocket decides on, for :meth:`aclose` to
        send when trio-websocket did not (None: no such close frames).
        """
        self._ws = ws
        self._upgraded = True
        self._upgrade_done.set()

    # -- the Stream interface, as trio-websocket uses it --------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._pending_head is not None:
            # No checkpoint: reading the head already was one, and trio-websocket's
            # reader should parse it in this scheduler pass, not the next (connect latency).
            head, self._pending_head = self._pending_head, None
            return head
        if not self._upgraded:
            # Whatever follows the request head must wait until the connection object
            # that can parse it exists (see the module doc).
            await self._upgrade_done.wait()
        data: bytes | bytearray
        if self._held:
            data, self._held = self._held, b""
        else:
            data = await self.stream.receive_some(max_bytes)
        if data and self._scan(data):
            assert self.violation is not None
            await self.fail(*self.violation)
            return b""  # trio-websocket sees the end of the stream
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise trio.ClosedResourceError("the connection was closed")
        # trio-websocket writes one frame per call: a close frame is recognisable by
        # its first byte (before the upgrade the bytes are HTTP, hence the flag).
        if self._upgraded and data and (data[0] & 0x0F) == _OP_CLOSE:
            self._close_sent = True
        self._sending = True
        try:
            await self.stream.send_all(data)
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Close, first sending the close frame trio-websocket owes, if any."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        owed = self._owed_close()
        if owed is None:
            self._closed = True
            await self.stream.aclose()
        else:
            await self.fail(*owed)

    async def fail(self, code: int, reason: str = "") -> None:
        """Fail the WebSocket connection (RFC 6455 §7.1.7): close frame, then TCP close.

        Does not wait for the peer's answer.  The close frame is skipped when one was
        already sent, when a write is in progress, before the upgrade, or when the
        code may not be sent; it is bounded by ``close_timeout``.  Always closes.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if (
                self._upgraded
                and not self._close_sent
                and not self._sending
                and is_sendable_close_code(code)
                and trio.current_effective_deadline() != float("-inf")
            ):
                self._close_sent = True
                with trio.move_on_after(self._close_timeout):
                    await self.stream.send_all(close_frame(code, reason))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the peer is gone: nothing more to tell it
        finally:
            await self.close_forcefully()

    @property
    def closed(self) -> bool:
        return self._closed

    async def finish(self) -> None:
        """Close for good: the close frame trio-websocket owes, if any (bounded by
        ``close_timeout``, skipped when cancelled), then a forced close.  Idempotent."""
        owed = None if self._closed else self._owed_close()
        if owed is not None:
            await self.fail(*owed)
        elif not self._closed:
            await self.close_forcefully()
        else:
            await trio.lowlevel.checkpoint()

    async def close_forcefully(self) -> None:
        """``trio.aclose_forcefully`` of the wrapped stream, minus its cost where it can
        be avoided: a socket (under TLS too, whose close_notify a forced close skips
        anyway) is closed synchronously, with no cancel scope.  Idempotent."""
        self._closed = True
        stream = self.stream
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        if isinstance(stream, trio.SocketStream):
            stream.socket.close()
            await trio.lowlevel.checkpoint()
        else:
            await trio.aclose_forcefully(self.stream)

    # -- internals ---------------------------------------------------------------------

    def _owed_close(self) -> tuple[int, str] | None:
        """The close frame trio-websocket decided on but did not send (e.g. 1007)."""
        if not self._upgraded or self._close_sent or self._ws is None:
            return None
        reason = self._ws.closed
        if reason is None or not is_sendable_close_code(reason.code):
            return None
        return reason.code, reason.reason or ""

    def _scan(self, data: bytes | bytearray) -> bool:
        """Walk the frame headers in ``data``; True (and :attr:`violation` set) to fail.

        Only headers are read: payload bytes are skipped by count, never copied.
        """
        n = len(data)
        pos = self._skip
        if pos >= n:
            self._skip = pos - n
            return False
        if self._tail:
            data = self._tail + data
            n = len(data)
            self._tail = b""
        while True:
            if n - pos < 2:
                break
            b1 = data[pos + 1]
            length = b1 & 0x7F
            size = 6 if b1 & 0x80 else 2  # a masking key follows the length
            if length == 126:
                size += 2
                if n - pos < size:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            elif length == 127:
                size += 8
                if n - pos < size:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            elif n - pos < size:
                break
            if self._check(data[pos] & 0x0F, length):
                return True
            pos += size + length
            if pos >= n:
                self._skip = pos - n
                return False
        self._tail = bytes(data[pos:])
        self._skip = 0
        return False

    def _check(self, opcode: int, length: int) -> bool:
        """One frame header: size and fragment limits, the ping meter."""
        if opcode >= _OP_CLOSE:
            if opcode in (_OP_PING, _OP_PONG):
                return self._meter_ping()
            return False  # close frames, and reserved opcodes wsproto refuses itself
        if opcode == _OP_CONTINUATION:
            self._msg_frames += 1
            self._msg_bytes += length
        else:
            self._msg_frames = 1
            self._msg_bytes = length
        if self._msg_bytes > self._max_message_size:
            self.violation = (
                1009,
                f"message declares {self._msg_bytes} bytes, over the limit "
                f"of {self._max_message_size}",
            )
            return True
        if self._msg_frames > MAX_FRAGMENTS:
            self.violation = (1008, f"message split into more than {MAX_FRAGMENTS} frames")
            return True
        return False

    def _meter_ping(self) -> bool:
        now = trio.current_time()
        refill = (now - self._last_ping) * self._ping_rate
        self._tokens = min(self._ping_burst, self._tokens + refill)
        self._last_ping = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return False
        self.violation = (1008, f"more than {self._ping_rate:g} pings or pongs per second")
        return True
