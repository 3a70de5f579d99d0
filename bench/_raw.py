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
from _common import GC_WATCH, PAYLOAD, emit, freeze_gc, raise_nofile, read_line, stdin_eof

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


async def many(params: dict[str, Any]) -> None:
    """Hold ``n`` idle connections; ping each once a second (ws.ping) while measuring."""
    raise_nofile()
    n, sample, concurrency = int(params["n"]), int(params["sample"]), int(params["concurrency"])
    conns: list[trio_websocket.WebSocketConnection] = []
    failed = 0
    async with trio.open_nursery() as nursery:
        sem = trio.Semaphore(concurrency)

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

        t0 = time.perf_counter()
        with trio.move_on_after(float(params["ramp_timeout"])):
            async with trio.open_nursery() as ramp:
                for _ in range(n):
                    ramp.start_soon(open_one)
        sampled = conns[:sample]
        for ws in sampled:
            await ws.send_message(b"echo")
        ramp_s = time.perf_counter() - t0
        if params.get("gc_freeze"):
            freeze_gc()
        emit("READY", {"n": len(conns), "failed": failed, "ramp_s": ramp_s})
        window = float(await read_line())
        GC_WATCH.reset()
        ping_us: list[float] = []
        echo_us: list[float] = []
        incomplete = 0
        cpu0 = time.process_time()
        end = trio.current_time() + window

        async def ping_loop(ws: trio_websocket.WebSocketConnection) -> None:
            nonlocal incomplete
            await trio.sleep(random.random())
            nxt = trio.current_time()
            while nxt < end:
                t0 = time.perf_counter()
                with trio.move_on_at(end) as scope:
                    try:
                        await ws.ping()
                    except _CLOSED:
                        return
                if scope.cancelled_caught:
                    incomplete += 1
                    return
                ping_us.append((time.perf_counter() - t0) * 1e6)
                nxt += 1.0
                await trio.sleep_until(nxt)

        async def echo_loop() -> None:
            i = 0
            while trio.current_time() < end and sampled:
                ws = sampled[i % len(sampled)]
                i += 1
                t0 = time.perf_counter()
                with trio.move_on_at(end):
                    await ws.send_message(PAYLOAD)
                    await ws.get_message()
                    echo_us.append((time.perf_counter() - t0) * 1e6)
                await trio.sleep(0.05)

        async with trio.open_nursery() as measure:
            for ws in conns:
                measure.start_soon(ping_loop, ws)
            measure.start_soon(echo_loop)
        emit(
            "RESULT",
            {
                "n": len(conns),
                "ping_rtt_us": [round(x, 1) for x in ping_us],
                "echo_rtt_us": echo_us,
                "incomplete": incomplete,
                "client_cpu_share": (time.process_time() - cpu0) / window,
                "client_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "gc": GC_WATCH.snapshot(),
            },
        )
        nursery.cancel_scope.cancel()
