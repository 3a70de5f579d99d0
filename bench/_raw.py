"""Baseline: the same workloads over plain trio-websocket 0.12.2 (its default settings).

Server: one binary WebSocket message per application message.  The first
message on a connection is a command: ``stream N`` (send N payloads), ``echo``
(echo everything after it); a connection that sends nothing stays idle (the
library answers pings by itself).
"""

from __future__ import annotations

import random
import resource
import time
from functools import partial
from typing import Any

import trio
import trio_websocket
from _common import (
    GC_WATCH,
    PAYLOAD,
    echo_rtts,
    emit,
    freeze_gc,
    raise_nofile,
    read_line,
    stdin_eof,
)

_CLOSED = (trio_websocket.ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError)


async def _handler(request: trio_websocket.WebSocketRequest) -> None:
    try:
        ws = await request.accept()
        while True:
            cmd = await ws.get_message()
            parts = cmd.split()
            if parts[0] == b"stream":
                send = ws.send_message
                for _ in range(int(parts[1])):
                    await send(PAYLOAD)
            elif parts[0] == b"echo":
                while True:
                    await ws.send_message(await ws.get_message())
    except _CLOSED:
        return


async def server(params: dict[str, Any]) -> None:
    raise_nofile()
    async with trio.open_nursery() as nursery:
        ws_server = await nursery.start(
            partial(trio_websocket.serve_websocket, _handler, "127.0.0.1", 0, ssl_context=None)
        )
        emit("PORT", ws_server.port)
        await stdin_eof()
        nursery.cancel_scope.cancel()


def _url(params: dict[str, Any]) -> str:
    return f"ws://127.0.0.1:{params['port']}/"


async def throughput(params: dict[str, Any]) -> None:
    n = int(params["n"])
    async with trio_websocket.open_websocket_url(_url(params)) as ws:
        cpu0, t0 = time.process_time(), time.perf_counter()
        await ws.send_message(f"stream {n}".encode())
        get = ws.get_message
        for _ in range(n):
            await get()
        t1, cpu1 = time.perf_counter(), time.process_time()
    emit("RESULT", {"msgs_per_s": n / (t1 - t0), "seconds": t1 - t0, "client_cpu_s": cpu1 - cpu0})


async def rtt(params: dict[str, Any]) -> None:
    n, warmup = int(params["n"]), int(params["warmup"])
    samples: list[float] = []
    async with trio_websocket.open_websocket_url(_url(params)) as ws:
        await ws.send_message(b"echo")
        for i in range(warmup + n):
            t0 = time.perf_counter()
            await ws.send_message(PAYLOAD)
            await ws.get_message()
            if i >= warmup:
                samples.append((time.perf_counter() - t0) * 1e6)
    emit("RESULT", {"rtt_us": samples})


async def establish(params: dict[str, Any]) -> None:
    m = int(params["m"])
    url = _url(params)
    up: list[float] = []
    cycle: list[float] = []
    for _ in range(m):
        t0 = time.perf_counter()
        async with trio_websocket.open_websocket_url(url):
            t1 = time.perf_counter()
        t2 = time.perf_counter()
        up.append((t1 - t0) * 1e6)
        cycle.append((t2 - t0) * 1e6)
    emit("RESULT", {"establish_us": up, "cycle_us": cycle})


async def _open_all(
    params: dict[str, Any], nursery: trio.Nursery
) -> tuple[list[trio_websocket.WebSocketConnection], int]:
    """Open ``n`` connections, ``concurrency`` at a time, within ``ramp_timeout``;
    returns them and the number that failed."""
    n, sem = int(params["n"]), trio.Semaphore(int(params["concurrency"]))
    conns: list[trio_websocket.WebSocketConnection] = []
    failed = 0

    async def open_one() -> None:
        nonlocal failed
        async with sem:
            try:
                ws = await trio_websocket.connect_websocket(
                    nursery, "127.0.0.1", int(params["port"]), "/", use_ssl=False
                )
            except (trio_websocket.HandshakeError, OSError):
                failed += 1
                return
        conns.append(ws)

    with trio.move_on_after(float(params["ramp_timeout"])):
        async with trio.open_nursery() as ramp:
            for _ in range(n):
                ramp.start_soon(open_one)
    return conns, failed


class _Pings:
    """``ws.ping()`` once a second on each connection from a jittered start, until ``end``."""

    def __init__(self, end: float) -> None:
        self.end = end
        self.rtt_us: list[float] = []
        #: Pings still unanswered at ``end``.
        self.incomplete = 0

    async def loop(self, ws: trio_websocket.WebSocketConnection) -> None:
        await trio.sleep(random.random())
        nxt = trio.current_time()
        while nxt < self.end:
            t0 = time.perf_counter()
            with trio.move_on_at(self.end) as scope:
                try:
                    await ws.ping()
                except _CLOSED:
                    return
            if scope.cancelled_caught:
                self.incomplete += 1
                return
            self.rtt_us.append((time.perf_counter() - t0) * 1e6)
            nxt += 1.0
            await trio.sleep_until(nxt)


async def many(params: dict[str, Any]) -> None:
    """Hold ``n`` idle connections; ping each once a second (ws.ping) while measuring."""
    raise_nofile()
    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        conns, failed = await _open_all(params, nursery)
        sampled = conns[: int(params["sample"])]
        for ws in sampled:
            await ws.send_message(b"echo")
        ramp_s = time.perf_counter() - t0
        if params.get("gc_freeze"):
            freeze_gc()
        emit("READY", {"n": len(conns), "failed": failed, "ramp_s": ramp_s})
        window = float(await read_line())
        GC_WATCH.reset()
        echo_us: list[float] = []
        cpu0 = time.process_time()
        pings = _Pings(trio.current_time() + window)
        async with trio.open_nursery() as measure:
            for ws in conns:
                measure.start_soon(pings.loop, ws)
            echoes = [(ws.send_message, ws.get_message) for ws in sampled]
            measure.start_soon(echo_rtts, echoes, pings.end, echo_us)
        emit(
            "RESULT",
            {
                "n": len(conns),
                "ping_rtt_us": [round(x, 1) for x in pings.rtt_us],
                "echo_rtt_us": echo_us,
                "incomplete": pings.incomplete,
                "client_cpu_share": (time.process_time() - cpu0) / window,
                "client_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "gc": GC_WATCH.snapshot(),
            },
        )
        nursery.cancel_scope.cancel()
