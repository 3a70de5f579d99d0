"""Where the time of a round trip and of a connect goes, in Trio scheduler steps.

    python bench/steps.py [--n 5000] [--connects 200]

The profile evidence behind bench/README.md's "why RTT and establishment miss".
A server of each stack runs in its own process (``worker.py``), as in ``run.py``;
this process is the client, traced by a :class:`trio.abc.Instrument`:

* ``rtt``: per round trip, how many times each task was scheduled (a *step*),
  the time spent in those steps, and the number of scheduler passes (one
  ``epoll`` call each).  The tracer costs ~1 µs per step, so read the counts and
  the shares, not the absolute wall time.
* ``establish``: the client's timeline of one connect (median offsets over
  ``--connects`` connects of when the WebSocket is up, ServerHello arrives, the
  session is usable), next to a raw trio-websocket connect.
* ``handshake``: the sans-IO handshake's CPU, each side, no I/O at all: the
  floor that cryptography puts under establishment.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio_websocket
from _common import PAYLOAD, identities, session_config, ts
from run import QUICK, Bench

from trio_session import _client
from trio_session._control import open_session
from trio_session.protocol import ClientConnection, HelloReceived, Role, VenueConnection


class StepTracer(trio.abc.Instrument):
    """Counts task steps and scheduler passes while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.steps: Counter[str] = Counter()
        self.step_time: defaultdict[str, float] = defaultdict(float)
        self.passes = 0
        self._t0 = 0.0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._t0 = time.perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.on:
            name = task.name.rsplit(".", 1)[-1]
            self.steps[name] += 1
            self.step_time[name] += time.perf_counter() - self._t0

    def after_io_wait(self, timeout: float) -> None:
        if self.on:
            self.passes += 1


#: Starts and stops the worker servers exactly as run.py does.
_SERVERS = Bench(QUICK, runs=1, profile=None)


def _trace_rtt(stack: str, n: int) -> dict[str, Any]:
    tracer = StepTracer()

    async def loop(send: Callable[[bytes], Awaitable[None]], recv: Callable[[], Any]) -> float:
        for _ in range(500):  # warm-up
            await send(PAYLOAD)
            await recv()
        tracer.on = True
        t0 = time.perf_counter()
        for _ in range(n):
            await send(PAYLOAD)
            await recv()
        tracer.on = False
        return time.perf_counter() - t0

    async def main(port: int) -> float:
        url = f"ws://127.0.0.1:{port}/"
        if stack == "raw":
            async with trio_websocket.open_websocket_url(url) as ws:
                await ws.send_message(b"echo")
                return await loop(ws.send_message, ws.get_message)
        venue, participant, _ = identities()
        async with ts.connect(url, participant, venue.public_key, config=session_config()) as s:
            await s.send(b"echo")
            return await loop(s.send, s.receive)

    with _SERVERS.server(stack) as srv:
        wall = trio.run(main, srv.port, instruments=[tracer])
    return {
        "wall_us_per_rt": wall / n * 1e6,
        "passes_per_rt": tracer.passes / n,
        "steps_per_rt": sum(tracer.steps.values()) / n,
        "step_us_per_rt": sum(tracer.step_time.values()) / n * 1e6,
        "tasks": {
            name: {"steps": count / n, "us": tracer.step_time[name] / n * 1e6}
            for name, count in tracer.steps.most_common()
        },
    }


def _trace_establish(connects: int) -> dict[str, Any]:
    marks: dict[str, list[float]] = {}

    def mark(key: str) -> None:
        marks.setdefault(key, []).append(time.perf_counter())

    # Patched by name: the client module looks connect_transport up at call time.
    connect_transport = getattr(_client, "connect_transport")  # noqa: B009
    receive_data = ClientConnection.receive_data
    first_frame = {"pending": False}  # set per connect: the next frame received is M2

    async def traced_connect_transport(*args: Any, **kwargs: Any) -> Any:
        transport = await connect_transport(*args, **kwargs)
        mark("websocket up")
        return transport

    def traced_receive_data(self: ClientConnection, data: bytes) -> Any:
        first = first_frame["pending"]
        if first:
            first_frame["pending"] = False
            mark("ServerHello in")
        events = receive_data(self, data)
        if first:
            mark("ServerHello processed, ClientFinish built")
        return events

    async def main(ours: int, raw: int) -> dict[str, float]:
        venue, participant, _ = identities()
        cfg = session_config()
        url = f"ws://127.0.0.1:{ours}/"
        connect = ts.connect
        for i in range(connects + 20):
            if i == 20:
                marks.clear()
            mark("start")
            first_frame["pending"] = True
            async with connect(url, participant, venue.public_key, config=cfg):
                mark("session usable (connect returned)")
        raw_up: list[float] = []
        for _ in range(connects):
            t0 = time.perf_counter()
            async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{raw}/"):
                raw_up.append((time.perf_counter() - t0) * 1e6)
        starts = marks.pop("start")
        out = {
            key: statistics.median((b - a) * 1e6 for a, b in zip(starts, values, strict=True))
            for key, values in marks.items()
        }
        out["raw trio-websocket connect"] = statistics.median(raw_up)
        return out

    setattr(_client, "connect_transport", traced_connect_transport)  # noqa: B010
    setattr(ClientConnection, "receive_data", traced_receive_data)  # noqa: B010
    try:
        with _SERVERS.server("ours") as ours, _SERVERS.server("raw") as raw:
            return trio.run(main, ours.port, raw.port)
    finally:
        setattr(_client, "connect_transport", connect_transport)  # noqa: B010
        setattr(ClientConnection, "receive_data", receive_data)  # noqa: B010


def _handshake_cpu(rounds: int = 300) -> dict[str, float]:
    venue, participant, registry = identities()
    cfg = session_config()
    t: dict[str, list[float]] = {}
    now = time.perf_counter

    def timed(key: str, t0: float) -> float:
        t1 = now()
        t.setdefault(key, []).append((t1 - t0) * 1e6)
        return t1

    for _ in range(rounds):
        t0 = now()
        open_session(Role.PARTICIPANT, cfg, None, participant.key_id)
        t0 = timed("participant: Session object", t0)
        c = ClientConnection(participant, venue.public_key, cfg, resume=None, clock=time.monotonic)
        (m1,) = c.data_to_send()
        t0 = timed("participant: ephemeral key + ClientHello", t0)
        v = VenueConnection(venue, cfg, clock=time.monotonic)
        (hello,) = v.receive_data(m1)
        assert isinstance(hello, HelloReceived)
        v.accept(registry.lookup(hello.key_id), None)
        (m2,) = v.data_to_send()
        t0 = timed("venue: ClientHello -> ServerHello (keygen, sign, kx)", t0)
        c.receive_data(m2)
        (m3,) = c.data_to_send()
        t0 = timed("participant: ServerHello -> ClientFinish (verify, kx, sign)", t0)
        v.receive_data(m3)
        timed("venue: ClientFinish (verify, keys)", t0)
    return {key: statistics.median(values) for key, values in t.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="round trips traced per stack")
    parser.add_argument("--connects", type=int, default=200)
    args = parser.parse_args()
    report = {
        "rtt": {stack: _trace_rtt(stack, args.n) for stack in ("raw", "ours")},
        "establish_us": _trace_establish(args.connects),
        "handshake_cpu_us": _handshake_cpu(),
    }
    print(json.dumps(_rounded(report), indent=1))


def _rounded(o: Any) -> Any:
    if isinstance(o, float):
        return round(o, 2)
    if isinstance(o, dict):
        return {k: _rounded(v) for k, v in o.items()}
    return o


if __name__ == "__main__":
    main()
