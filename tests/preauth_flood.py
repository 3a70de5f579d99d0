"""Attacker process for the pre-authentication flood tests: opens N connections to a
venue and holds them without ever authenticating.

    python tests/preauth_flood.py PORT N SOURCES

Connection ``i`` comes from local address ``127.0.<1 + k // 250>.<2 + k % 250>`` with
``k = i % SOURCES`` (so the venue's per-address cap sees SOURCES addresses), and
behaves by ``i % 3``: 0 stays silent after connecting, 1 sends half an HTTP upgrade
request (slowloris), 2 completes the upgrade and then sends nothing (no ClientHello).

Output, one JSON object per line on stdout: ``{"ready": true, "first": t, "last": t}``
once all connections are made (``time.monotonic()`` of the first and last connect),
then for every ``report`` line read on stdin ``{"closed": n}``: how many of them the
venue has closed (refused, or expired) so far.  Exits when stdin closes.  Plain
blocking sockets and ``select.poll``: no Trio here, so the attacker costs the test
process nothing.
"""

from __future__ import annotations

import json
import resource
import select
import socket
import sys
import time

REQUEST = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def source(i: int, sources: int) -> str:
    k = i % sources
    return f"127.0.{1 + k // 250}.{2 + k % 250}"


def drain(sock: socket.socket) -> tuple[bytes, bool]:
    """What is readable now, and whether the peer closed (EOF or reset)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return data, False
        except OSError:
            return data, True
        if not chunk:
            return data, True
        data += chunk


def main() -> None:
    port, n, sources = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 64)), hard))
    socks: list[socket.socket] = []
    first = time.monotonic()
    for i in range(n):
        s = socket.socket()
        s.bind((source(i, sources), 0))
        s.connect(("127.0.0.1", port))
        if i % 3 == 1:
            s.sendall(REQUEST[:60])
        elif i % 3 == 2:
            s.sendall(REQUEST)
        socks.append(s)
    last = time.monotonic()
    print(json.dumps({"ready": True, "first": first, "last": last}), flush=True)
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    closed = 0
    for line in sys.stdin:
        if line.strip() != "report":
            continue
        for fd, _ in poller.poll(0):
            if drain(by_fd[fd])[1]:
                closed += 1
                poller.unregister(fd)
        print(json.dumps({"closed": closed}), flush=True)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
