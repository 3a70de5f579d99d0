"""Attacker process for the availability tests (tests/test_availability.py).

    python tests/avail_flood.py claim PORT SOURCES CONCURRENCY RATE M1_HEX
    python tests/avail_flood.py churn PORT SOURCES CONCURRENCY RATE SEED_HEX VENUE_PK_HEX

``claim``: open connections as fast as the venue takes them, each sending the same
ClientHello (``M1_HEX``, which claims someone else's key id) pipelined behind the
upgrade request, reading the answer (M2 or REJECT) and dropping the connection.
``churn``: a *registered* identity (its Ed25519 seed) completes every handshake
(M3, then waits for the venue's confirmation) and drops the connection at once,
leaving a detached session behind each time.

Connection ``i`` comes from ``127.0.<1 + k // 250>.<2 + k % 250>``, ``k = i % SOURCES``;
``CONCURRENCY`` connections are in flight at once, and at most ``RATE`` are opened
per second (0: as fast as they complete).  Every ``report`` line read on
stdin is answered with one JSON line on stdout: connections made, answers by kind
(``m2``, ``reject`` codes, ``confirmed`` sessions, ``dropped`` without answer).
Exits when stdin closes.  Plain non-blocking sockets and ``selectors``: no Trio, so
the attacker costs the test process nothing.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import selectors
import socket
import struct
import sys
import threading
import time
from typing import Any

import msgspec

from trio_session import Identity, SessionConfig
from trio_session.protocol import ClientConnection

REQUEST = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
REJECT = 0x04
SERVER_HELLO = 0x02


def masked(payload: bytes, opcode: int = 0x2) -> bytes:
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 2**16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + struct.pack("!H", n)
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def source(i: int, sources: int) -> str:
    k = i % sources
    return f"127.0.{1 + k // 250}.{2 + k % 250}"


class Conn:
    """One attacking connection: send, then parse the HTTP head and server frames."""

    def __init__(self, sock: socket.socket, conn: ClientConnection | None) -> None:
        self.sock = sock
        self.conn = conn
        self.buf = b""
        self.upgraded = False
        self.answered = False

    def frames(self) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        if not self.upgraded:
            if b"\r\n\r\n" not in self.buf:
                return out
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            self.upgraded = True
            if not head.startswith(b"HTTP/1.1 101"):
                return [(-1, head)]
        while len(self.buf) >= 2:
            n, size = self.buf[1] & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4:
                    break
                n, size = struct.unpack("!H", self.buf[2:4])[0], 4
            elif n == 127:
                if len(self.buf) < 10:
                    break
                n, size = struct.unpack("!Q", self.buf[2:10])[0], 10
            if len(self.buf) < size + n:
                break
            out.append((self.buf[0] & 0x0F, self.buf[size : size + n]))
            self.buf = self.buf[size + n :]
        return out


class Attacker:
    def __init__(self, argv: list[str]) -> None:
        self.mode = argv[0]
        self.port, self.sources, self.concurrency = int(argv[1]), int(argv[2]), int(argv[3])
        self.rate = float(argv[4])
        if self.mode == "claim":
            self.m1 = masked(bytes.fromhex(argv[5]))
        else:
            self.identity = Identity.from_seed(bytes.fromhex(argv[5]))
            self.venue_pk = bytes.fromhex(argv[6])
            self.config = SessionConfig()
        self.counts: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.selector = selectors.DefaultSelector()
        self.started = 0

    def open_one(self) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((source(self.started, self.sources), 0))
        self.started += 1
        conn = None
        first = self.m1 if self.mode == "claim" else b""
        if self.mode == "churn":
            conn = ClientConnection(self.identity, self.venue_pk, self.config)
            first = masked(conn.data_to_send()[0])
        with contextlib.suppress(BlockingIOError):  # connecting in the background
            sock.connect(("127.0.0.1", self.port))
        self.selector.register(sock, selectors.EVENT_WRITE, (Conn(sock, conn), REQUEST + first))

    def close(self, c: Conn, kind: str) -> None:
        self.selector.unregister(c.sock)
        # An abrupt drop (RST), as a crashed or hostile client would do.
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.sock.close()
        with self.lock:
            self.counts[kind] += 1

    def on_frame(self, c: Conn, opcode: int, payload: bytes) -> str | None:
        """What the frame means: a kind to close with, or None to keep reading."""
        if opcode == -1:
            return "refused_http"
        if opcode == 0x8:
            return "closed"
        if opcode != 0x2:
            return None
        if payload[:1] == bytes((REJECT,)):
            return f"reject_{_reject_code(payload)}"
        if c.conn is None:
            return "m2" if payload[:1] == bytes((SERVER_HELLO,)) else "other"
        if not c.answered:
            c.conn.receive_data(payload)
            c.sock.sendall(b"".join(masked(f) for f in c.conn.data_to_send()))
            c.answered = True
            return None
        return "confirmed"

    def step(self, key: selectors.SelectorKey, events: int) -> None:
        c, pending = key.data
        if events & selectors.EVENT_WRITE:
            try:
                c.sock.sendall(pending)
            except OSError:
                self.close(c, "dropped")
                return
            self.selector.modify(c.sock, selectors.EVENT_READ, (c, b""))
            return
        try:
            data = c.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.close(c, "dropped")
            return
        c.buf += data
        for opcode, payload in c.frames():
            try:
                kind = self.on_frame(c, opcode, payload)
            except Exception:
                kind = "error"
            if kind is not None:
                self.close(c, kind)
                return

    def run(self) -> None:
        start = time.monotonic()
        while True:
            allowed = (time.monotonic() - start) * self.rate if self.rate else float("inf")
            while len(self.selector.get_map()) < self.concurrency and self.started < allowed:
                self.open_one()
            for key, events in self.selector.select(timeout=0.01):
                self.step(key, events)

    def report(self) -> dict[str, Any]:
        with self.lock:
            return {"started": self.started, **self.counts}


def _reject_code(frame: bytes) -> int:
    body = msgspec.msgpack.decode(frame[14:])
    return int(body["code"])


def main() -> None:
    attacker = Attacker(sys.argv[1:])
    threading.Thread(target=attacker.run, daemon=True).start()
    for line in sys.stdin:
        if line.strip() == "report":
            print(json.dumps(attacker.report()), flush=True)


if __name__ == "__main__":
    main()
