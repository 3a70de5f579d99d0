"""Shared by the flood tests: a participant measuring its round-trip time, a helper
process driven over JSON lines on its stdin and stdout, and whether attackers can
come from addresses of their own."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest
import trio

import trio_session as ts

__all__ = ["MANY_LOOPBACKS", "JsonLines", "RttProbe", "describe", "needs_many_loopbacks", "p99"]


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


class RttProbe:
    """A participant doing echo round trips every 5 ms; samples are (start, rtt) in
    ``time.monotonic()`` seconds, the clock attacker processes report in."""

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
        """Round-trip times of the samples started in [lo, hi), sorted."""
        return sorted(rtt for start, rtt in self.samples if lo <= start < hi)


def p99(rtts: list[float]) -> float:
    """The 99th percentile of sorted ``rtts``."""
    return rtts[min(len(rtts) - 1, int(0.99 * len(rtts)))]


def describe(name: str, rtts: list[float]) -> str:
    if not rtts:
        return f"{name}: n=0 (no round trip completed in this window)"
    return (
        f"{name}: n={len(rtts)} p50={rtts[len(rtts) // 2] * 1e3:.2f} ms "
        f"p99={p99(rtts) * 1e3:.2f} ms max={rtts[-1] * 1e3:.2f} ms"
    )


class JsonLines:
    """A helper process that prints one JSON object per line, some of them in answer
    to a command line written to its stdin."""

    def __init__(self, process: trio.Process, name: str = "helper process") -> None:
        self.process = process
        self._name = name
        self._buffer = b""

    async def line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some()
            assert chunk, f"the {self._name} ended early"
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        result: dict[str, Any] = json.loads(line)
        return result

    async def ask(self, command: str = "report") -> dict[str, Any]:
        """Write ``command`` and return the next line."""
        assert self.process.stdin is not None
        await self.process.stdin.send_all(command.encode() + b"\n")
        return await self.line()
