"""The workloads over trio_session: ``ts.serve`` venue and ``ts.connect`` participants.

The venue handler reads commands (plain-bytes messages) from the participant:

* ``stream N B`` — send N payloads with ``send_many`` in batches of B (B = 0:
  one ``send`` per message);
* ``echo`` — echo every following message;
* ``flow RATE SECONDS`` — send sequence-numbered payloads at RATE msgs/s for
  SECONDS (0: until the session ends), then ``END`` + the count.

A session that sends nothing stays idle (heartbeats only).
"""

from __future__ import annotations

import random
import resource
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import trio
from _common import (
    GC_WATCH,
    PAYLOAD,
    PAYLOAD_SIZE,
    echo_rtts,
    emit,
    freeze_gc,
    identities,
    payload,
    raise_nofile,
    read_line,
    seq_of,
    session_config,
    stdin_eof,
    ts,
)
from _proxy import ResetProxy

END = b"END"


async def _flow(session: ts.Session, rate: float, duration: float) -> None:
    start = trio.current_time()
    sent = 0
    while True:
        elapsed = trio.current_time() - start
        if duration and elapsed >= duration:
            break
        due = min(int(elapsed * rate) - sent, 4096)
        if due > 0:
            await session.send_many([payload(sent + i) for i in range(due)])
            sent += due
        await trio.sleep(0.001)
    await session.send(END + sent.to_bytes(8, "big"))


async def _handler(session: ts.Session) -> None:
    try:
        async for cmd in session:
            parts = cmd.split()
            if parts[0] == b"stream":
                n, b = int(parts[1]), int(parts[2])
                if b > 0:
                    batch = [PAYLOAD] * b
                    full, rest = divmod(n, b)
                    send_many = session.send_many
                    for _ in range(full):
                        await send_many(batch)
                    if rest:
                        await send_many(batch[:rest])
                else:
                    send = session.send
                    for _ in range(n):
                        await send(PAYLOAD)
            elif parts[0] == b"echo":
                async for message in session:
                    await session.send(message)
                return
            elif parts[0] == b"flow":
                await _flow(session, float(parts[1]), float(parts[2]))
    except ts.SessionError:
        return


def _store(params: dict[str, Any]) -> ts.SessionStore | None:
    """``"store": PATH`` in the parameters: an SqliteStore there (else the memory default)."""
    path = params.get("store")
    return ts.SqliteStore(path, synchronous=params.get("synchronous", "normal")) if path else None


async def server(params: dict[str, Any]) -> None:
    raise_nofile()
    venue, _, registry = identities()
    cfg = session_config(params.get("config"))
    async with trio.open_nursery() as nursery:
        srv = await nursery.start(
            partial(
                ts.serve,
                _handler,
                venue,
                registry,
                "127.0.0.1",
                params.get("port", 0),
                config=cfg,
                store=_store(params),
                gc_freeze=bool(params.get("gc_freeze")),
            )
        )
        emit("PORT", srv.port)
        await stdin_eof()
        nursery.cancel_scope.cancel()


def _connector(params: dict[str, Any], port: int | None = None) -> Callable[[], Any]:
    """A factory of ``ts.connect(...)`` contexts; config objects are built once, up front."""
    venue, participant, _ = identities()
    url = f"ws://127.0.0.1:{port or params['port']}/"
    restart = ts.RestartPolicy(**params["restart"]) if params.get("restart") else None
    cfg = session_config(params.get("config"))
    return partial(
        ts.connect,
        url,
        participant,
        venue.public_key,
        config=cfg,
        restart=restart,
        store=_store(params),
    )


def _connect(params: dict[str, Any], port: int | None = None) -> Any:
    return _connector(params, port)()


async def throughput(params: dict[str, Any]) -> None:
    """``"receive": "message"``: one ``receive()`` per message (else ``receive_batch()``)."""
    n, batch = int(params["n"]), int(params["batch"])
    async with _connect(params) as session:
        cpu0, t0 = time.process_time(), time.perf_counter()
        await session.send(f"stream {n} {batch}".encode())
        if params.get("receive") == "message":
            receive = session.receive
            for _ in range(n):
                await receive()
        else:
            got = 0
            while got < n:
                got += len(await session.receive_batch())
        t1, cpu1 = time.perf_counter(), time.process_time()
    emit("RESULT", {"msgs_per_s": n / (t1 - t0), "seconds": t1 - t0, "client_cpu_s": cpu1 - cpu0})


async def rtt(params: dict[str, Any]) -> None:
    n, warmup = int(params["n"]), int(params["warmup"])
    samples: list[float] = []
    async with _connect(params) as session:
        await session.send(b"echo")
        for i in range(warmup + n):
            t0 = time.perf_counter()
            await session.send(PAYLOAD)
            await session.receive()
            if i >= warmup:
                samples.append((time.perf_counter() - t0) * 1e6)
    emit("RESULT", {"rtt_us": samples})


async def establish(params: dict[str, Any]) -> None:
    m = int(params["m"])
    up: list[float] = []
    cycle: list[float] = []
    connect = _connector(params)
    for _ in range(m):
        t0 = time.perf_counter()
        async with connect():
            t1 = time.perf_counter()
        t2 = time.perf_counter()
        up.append((t1 - t0) * 1e6)
        cycle.append((t2 - t0) * 1e6)
    emit("RESULT", {"establish_us": up, "cycle_us": cycle})


class _Stream:
    """Consumes a ``flow`` stream: checks sequence numbers, times delivery gaps."""

    def __init__(self, session: ts.Session) -> None:
        self.session = session
        self.expected = 0
        self.lost = 0
        self.duplicated = 0
        self.received = 0
        self.max_gap = 0.0
        self.last_delivery: float | None = None
        self.end_count: int | None = None
        #: connection number -> time its first message reached the application
        self.first_delivery: dict[int, float] = {}
        self.track_connections = False
        self.delivered = trio.Event()

    def deliveries_after(self, connections: int) -> list[float]:
        """First-delivery times of connections numbered above ``connections``."""
        return [t for c, t in self.first_delivery.items() if c > connections]

    async def run(self) -> None:
        session = self.session
        while self.end_count is None:
            try:
                batch = await session.receive_batch()
            except ts.SessionClosed:
                return
            now = time.perf_counter()
            if self.last_delivery is not None:
                self.max_gap = max(self.max_gap, now - self.last_delivery)
            self.last_delivery = now
            if self.track_connections:
                self.first_delivery.setdefault(session.stats.connections, now)
            for m in batch:
                if len(m) != PAYLOAD_SIZE:
                    if m.startswith(END):
                        self.end_count = seq_of(m[len(END) :])
                    continue
                seq = seq_of(m)
                if seq == self.expected:
                    self.expected += 1
                elif seq > self.expected:
                    self.lost += seq - self.expected
                    self.expected = seq + 1
                else:
                    self.duplicated += 1
                self.received += 1
            self.delivered.set()
            self.delivered = trio.Event()


async def recovery(params: dict[str, Any]) -> None:
    """Reset the connection (TCP RST via a proxy) while a flow runs; time the recovery."""
    resets, rate = int(params["resets"]), float(params["rate"])
    live_ms: list[float] = []
    first_ms: list[float] = []
    async with trio.open_nursery() as nursery:
        proxy, proxy_name = await _start_proxy(nursery, int(params["port"]))
        async with _connect(params, port=proxy.port) as session:
            await session.send(f"flow {rate} 0".encode())
            stream = _Stream(session)
            stream.track_connections = True
            nursery.start_soon(stream.run)
            await stream.delivered.wait()
            for _ in range(resets):
                await trio.sleep(random.uniform(0.1, 0.2))
                before = session.stats.connections
                t0 = time.perf_counter()
                proxy.reset_all()
                with trio.move_on_after(2.0):
                    await session.wait_state(ts.State.STALE, ts.State.RESUMING)
                with trio.fail_after(10):
                    while True:
                        await session.wait_state(ts.State.LIVE)
                        if session.stats.connections > before:
                            break
                        await trio.sleep(0.0005)
                    live_ms.append((time.perf_counter() - t0) * 1e3)
                    # first message delivered to the application over a new connection
                    # (replayed messages arrive while RESUMING, so possibly before LIVE)
                    while not (firsts := stream.deliveries_after(before)):
                        await stream.delivered.wait()
                    first_ms.append((min(firsts) - t0) * 1e3)
            stats = session.stats
            nursery.cancel_scope.cancel()
    emit(
        "RESULT",
        {
            "live_ms": live_ms,
            "first_msg_ms": first_ms,
            "lost": stream.lost,
            "duplicated": stream.duplicated,
            "received": stream.received,
            "resumes": stats.resumes,
            "connections": stats.connections,
            "proxy": proxy_name,
        },
    )


async def _start_proxy(nursery: trio.Nursery, port: int) -> tuple[Any, str]:
    """trio_session.testing.FaultyProxy when the library has it, else our ResetProxy.

    Both forward 127.0.0.1:<proxy.port> to the venue and abort every connection
    (TCP RST to both peers) on ``reset_all()``.
    """
    try:
        from trio_session.testing import FaultyProxy
    except ImportError:
        proxy = await nursery.start(ResetProxy("127.0.0.1", port).run)
        return proxy, "bench._proxy.ResetProxy"
    proxy = await nursery.start(partial(FaultyProxy.serve, "127.0.0.1", port))
    return proxy, "trio_session.testing.FaultyProxy"


async def rekey(params: dict[str, Any]) -> None:
    """A paced one-way flow for a few seconds under the given (rekey) config."""
    rate, seconds = float(params["rate"]), float(params["seconds"])
    async with _connect(params) as session:
        await session.send(f"flow {rate} {seconds}".encode())
        stream = _Stream(session)
        with trio.fail_after(seconds + 30):
            await stream.run()
        stats = session.stats
    lost = stream.lost + max(0, (stream.end_count or 0) - stream.expected)
    emit(
        "RESULT",
        {
            "sent": stream.end_count,
            "received": stream.received,
            "lost": lost,
            "duplicated": stream.duplicated,
            "max_gap_ms": stream.max_gap * 1e3,
            "rekeys": stats.rekeys,
            "ratchets": stats.ratchets,
            "connections": stats.connections,
        },
    )


class _Ramp:
    """Opens ``n`` sessions, ``concurrency`` at a time, and holds them until ``stop``."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.n = int(params["n"])
        self.connect = _connector(params)
        self.sem = trio.Semaphore(int(params["concurrency"]))
        self.sessions: list[ts.Session] = []
        self.failed = 0
        self.pending = self.n
        self.all_up = trio.Event()
        self.stop = trio.Event()
        #: Scopes of the connections not up yet (cancelled when the ramp gives up).
        self.ramping: set[trio.CancelScope] = set()

    def _settled(self) -> None:
        self.pending -= 1
        if not self.pending:
            self.all_up.set()

    async def hold(self) -> None:
        acquired = False
        with trio.CancelScope() as scope:
            self.ramping.add(scope)
            try:
                await self.sem.acquire()
                acquired = True
                async with self.connect() as session:
                    self.sem.release()
                    acquired = False
                    self.ramping.discard(scope)
                    self.sessions.append(session)
                    self._settled()
                    await self.stop.wait()
            except ts.SessionError:
                self.failed += 1
                self._settled()
            finally:
                if acquired:
                    self.sem.release()

    async def run(self, nursery: trio.Nursery, give_up_after: float) -> None:
        """Start every session; return once all are settled or ``give_up_after`` s passed."""
        for _ in range(self.n):
            nursery.start_soon(self.hold)
        with trio.move_on_after(give_up_after):
            await self.all_up.wait()
        for scope in self.ramping:  # give up on connections still pending
            scope.cancel()


async def _heartbeat_rtts(sessions: list[ts.Session], end: float, out: list[float]) -> None:
    """Every session's new ``stats.rtt`` values, sampled once a second until ``end``."""
    last: dict[int, float | None] = {}
    while trio.current_time() < end:
        for i, s in enumerate(sessions):
            r = s.stats.rtt
            if r is not None and r != last.get(i):
                out.append(round(r * 1e6, 1))
                last[i] = r
        await trio.sleep_until(min(end, trio.current_time() + 1.0))


async def many(params: dict[str, Any]) -> None:
    """Hold ``n`` idle sessions (1 s heartbeats); sample heartbeat and echo RTTs."""
    raise_nofile()
    ramp = _Ramp(params)
    async with trio.open_nursery() as nursery:
        t0 = time.perf_counter()
        await ramp.run(nursery, float(params["ramp_timeout"]))
        sessions = ramp.sessions
        sampled = sessions[: int(params["sample"])]
        for s in sampled:
            await s.send(b"echo")
        ramp_s = time.perf_counter() - t0
        if params.get("gc_freeze"):
            freeze_gc()
        emit("READY", {"n": len(sessions), "failed": ramp.failed, "ramp_s": ramp_s})
        window = float(await read_line())
        GC_WATCH.reset()
        hb_us: list[float] = []
        echo_us: list[float] = []
        cpu0 = time.process_time()
        end = trio.current_time() + window
        async with trio.open_nursery() as measure:
            measure.start_soon(_heartbeat_rtts, sessions, end, hb_us)
            echoes = [(s.send, s.receive) for s in sampled]
            measure.start_soon(echo_rtts, echoes, end, echo_us)
        not_live = sum(1 for s in sessions if s.state is not ts.State.LIVE)
        emit(
            "RESULT",
            {
                "n": len(sessions),
                "hb_rtt_us": hb_us,
                "echo_rtt_us": echo_us,
                "not_live": not_live,
                "resumes": sum(s.stats.resumes for s in sessions),
                "client_cpu_share": (time.process_time() - cpu0) / window,
                "client_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "gc": GC_WATCH.snapshot(),
            },
        )
        ramp.stop.set()
        nursery.cancel_scope.cancel()


async def restart_participant(params: dict[str, Any]) -> None:
    """For ``restart_recovery``: a participant (optionally on a store) that reports
    when it is LIVE with the replay done, after its start and after each venue
    restart the orchestrator announces with ``watch``.

    Prints ``LIVE {"t": <time.monotonic()>}`` (the clock is system-wide, so the
    orchestrator subtracts its own kill time), ``WATCHING`` when armed.
    """
    async with _connect(params) as session, trio.open_nursery() as nursery:
        await session.wait_state(ts.State.LIVE)
        emit("LIVE", {"t": time.monotonic(), "restored": session.stats.resumes > 0})
        if params.get("flow") and session.stats.resumes == 0:
            await session.send(f"flow {params['flow']} 0".encode())
        nursery.start_soon(_Stream(session).run)
        while (await read_line()).strip() == "watch":
            before = session.stats.connections
            emit("WATCHING")
            await session.wait_state(ts.State.STALE, ts.State.RESUMING)
            while True:
                await session.wait_state(ts.State.LIVE)
                if session.stats.connections > before:
                    break
                await session.wait_state(ts.State.STALE, ts.State.RESUMING)
            emit("LIVE", {"t": time.monotonic(), "resumes": session.stats.resumes})
        nursery.cancel_scope.cancel()
