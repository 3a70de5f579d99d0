"""``FaultyProxy``: a fault-injecting TCP proxy for tests, on loopback.

Why a byte-level proxy rather than hooks inside the library: the faults that
matter to a self-healing session (resets, half-open links, latency, partial
writes, bit rot) happen *between* the two programs.  Putting a real TCP hop
between a participant and a venue exercises the real sockets, the real
WebSocket layer and the real supervisor, with no test-only code paths.

Determinism: every random choice (probability trials, corrupted bit positions,
truncation lengths) comes from a :class:`random.Random` seeded from
``(seed, connection index, direction)``.  The same seed and the same sequence of
chunks per direction give the same faults.  TCP itself may split or coalesce
writes differently from run to run, so only byte-offset rules (``at_byte=``)
are reproducible regardless of chunking; probability rules are reproducible
when the traffic pattern fixes the chunking (e.g. one write, then wait for a
reply).  Time-based rules (``after=``) and method calls depend on scheduling.
"""

from __future__ import annotations

import logging
import math
import random
from types import MappingProxyType

import trio

from ._fault_rules import (
    KINDS,
    QUEUE_CHUNKS,
    RECV_SIZE,
    STREAMS,
    THROTTLE_SLICE,
    Direction,
    Fault,
    FaultKind,
    Item,
    ProxyStats,
    Rule,
    Stream,
    flip_bits,
    set_rst,
    streams,
)

__all__ = ["Direction", "Fault", "FaultKind", "FaultyProxy", "ProxyStats"]

logger = logging.getLogger("trio_session.faults")


class _ProxiedConnection:
    """One proxied client connection: two readers, two writers and a timer task."""

    def __init__(
        self, proxy: FaultyProxy, cid: int, client: trio.SocketStream, server: trio.SocketStream
    ) -> None:
        self.proxy = proxy
        self.id = cid
        self.client = client
        self.server = server
        self.started = trio.current_time()
        self.scope = trio.CancelScope()
        self.closed = False
        self.black_holed: set[Stream] = set()
        self.delay: dict[Stream, float] = dict.fromkeys(STREAMS, 0.0)
        self.rate: dict[Stream, float] = dict.fromkeys(STREAMS, math.inf)
        self.offset: dict[Stream, int] = dict.fromkeys(STREAMS, 0)
        self.rng = {d: random.Random(f"{proxy.seed}/{cid}/{d}") for d in STREAMS}
        #: Chunk faults (corrupt/truncate) armed by byte or time triggers, and the
        #: streams whose next chunk they hit.
        self.armed: list[tuple[Fault, tuple[Stream, ...]]] = []
        self.fired: set[tuple[int, str]] = set()
        self.done: set[Stream] = set()

    # -- plumbing ---------------------------------------------------------------------------

    def _src(self, d: Stream) -> trio.SocketStream:
        return self.client if d == "c2s" else self.server

    def _dst(self, d: Stream) -> trio.SocketStream:
        return self.server if d == "c2s" else self.client

    def close(self) -> None:
        """Close both sockets (synchronously, so peers see it at once) and stop the tasks."""
        self.closed = True
        for stream in (self.client, self.server):
            stream.socket.close()
        self.scope.cancel()

    def abort(self, rst_to: tuple[Stream, ...]) -> None:
        """Tear the connection down; the receivers of ``rst_to`` streams see a reset."""
        if self.closed:
            return
        for d in rst_to:
            set_rst(self._dst(d))
        self.close()

    def fault_abort(self, rst_to: tuple[Stream, ...]) -> None:
        if not self.closed:
            self.proxy._resets += 1
            self.abort(rst_to)

    def black_holed_now(self, d: Stream) -> bool:
        return d in self.black_holed or d in self.proxy._black_holed

    def rate_now(self, d: Stream) -> float:
        return min(self.rate[d], self.proxy._rate[d])

    # -- tasks ------------------------------------------------------------------------------

    async def run(self) -> None:
        with self.scope:
            async with trio.open_nursery() as nursery:
                for d in STREAMS:
                    tx, rx = trio.open_memory_channel[Item](QUEUE_CHUNKS)
                    nursery.start_soon(self._reader, d, tx, name=f"faulty-proxy-{self.id}-{d}-in")
                    nursery.start_soon(self._writer, d, rx, name=f"faulty-proxy-{self.id}-{d}-out")
                nursery.start_soon(self._timer, name=f"faulty-proxy-{self.id}-timer")

    async def _reader(self, d: Stream, tx: trio.MemorySendChannel[Item]) -> None:
        src = self._src(d)
        async with tx:
            while True:
                try:
                    data = await src.receive_some(RECV_SIZE)
                except trio.ClosedResourceError:
                    return
                except trio.BrokenResourceError as exc:  # the sender reset: pass it on
                    logger.debug("proxy connection %d: %s read failed: %r", self.id, d, exc)
                    self.abort(STREAMS)
                    return
                if not data:
                    # A black hole swallows the FIN too; deliver it once restored.
                    while self.black_holed_now(d):
                        await self.proxy._wait_changed()
                    items = [Item(b"", trio.current_time(), eof=True)]
                else:
                    items = self._process(d, data)
                for item in items:
                    try:
                        await tx.send(item)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                if not data or (items and items[-1].abort is not None):
                    return

    async def _writer(self, d: Stream, rx: trio.MemoryReceiveChannel[Item]) -> None:
        dst = self._dst(d)
        next_free = -math.inf  # throttle: earliest time the next slice may go
        async with rx:
            async for item in rx:
                if item.deliver_at > trio.current_time():
                    await trio.sleep_until(item.deliver_at)
                try:
                    view = memoryview(item.data)
                    while view:
                        rate = self.rate_now(d)
                        if math.isinf(rate):
                            piece = view
                        else:
                            piece = view[: max(1, int(rate * THROTTLE_SLICE))]
                            start = max(trio.current_time(), next_free)
                            await trio.sleep_until(start)
                            next_free = start + len(piece) / rate
                        await dst.send_all(piece)
                        self.proxy._bytes[d] += len(piece)
                        view = view[len(piece) :]
                    if item.eof:
                        await dst.send_eof()
                except trio.ClosedResourceError:
                    return
                except trio.BrokenResourceError as exc:  # the receiver is gone
                    logger.debug("proxy connection %d: %s write failed: %r", self.id, d, exc)
                    self.abort(STREAMS)
                    return
                if item.abort is not None:
                    self.fault_abort(item.abort)
                    return
                if item.eof:
                    self.done.add(d)
                    if len(self.done) == len(STREAMS):
                        self.close()
                    return

    async def _timer(self) -> None:
        """Fire ``after=`` rules; re-plan whenever the rules change."""
        proxy = self.proxy
        while True:
            changed = proxy._changed
            now = trio.current_time()
            deadline = math.inf
            for rule in list(proxy._rules):
                after = rule.fault.after
                if after is None or not rule.live or (rule.id, "after") in self.fired:
                    continue
                if self.started + after <= now:
                    self.fired.add((rule.id, "after"))
                    rule.consume()
                    action = self._fire(rule.fault)
                    if action is not None and action.abort is not None:
                        self.fault_abort(action.abort)  # time-triggered resets are immediate
                        return
                else:
                    deadline = min(deadline, self.started + after)
            with trio.move_on_at(deadline):
                await changed.wait()

    # -- fault logic (runs in the reader; decisions are made in stream order) ----------------

    def _fire(self, fault: Fault, stream: Stream | None = None) -> Item | None:
        """A byte trigger on ``stream`` (or a time trigger) fired: apply ``fault``."""
        targets = streams(fault.direction)
        kind = fault.kind
        if kind == "reset":
            self.proxy._faults["reset"] += 1
            return Item(b"", trio.current_time(), abort=targets)
        if kind in ("corrupt", "truncate"):  # counted when it hits a chunk
            self.armed.append((fault, targets if stream is None else (stream,)))
        else:
            self._set_mode(fault, targets)
        return None

    def _set_mode(self, fault: Fault, targets: tuple[Stream, ...]) -> None:
        self.proxy._faults[fault.kind] += 1
        for t in targets:
            if fault.kind == "black_hole":
                self.black_holed.add(t)
            elif fault.kind == "delay":
                self.delay[t] = fault.seconds
            elif fault.kind == "throttle":
                self.rate[t] = fault.bytes_per_second
        self.proxy._notify()

    def _process(self, d: Stream, data: bytes) -> list[Item]:
        """Split a received chunk at ``at_byte`` points and fault each segment."""
        items: list[Item] = []
        pos = 0
        while True:
            start = self.offset[d]
            end = start + len(data) - pos
            hit = self._next_byte_rule(d, start, end)
            if hit is None:
                if pos < len(data):
                    items += self._segment(d, data[pos:])
                return items
            rule = hit
            assert rule.fault.at_byte is not None
            cut = pos + rule.fault.at_byte - start
            if cut > pos:
                items += self._segment(d, data[pos:cut])
                pos = cut
                if items and items[-1].abort is not None:  # truncated or reset: drop the rest
                    self.proxy._dropped[d] += len(data) - pos
                    self.offset[d] += len(data) - pos
                    return items
            self.fired.add((rule.id, d))
            rule.consume()
            action = self._fire(rule.fault, d)
            if action is not None:  # a reset: forward nothing more
                self.proxy._dropped[d] += len(data) - pos
                self.offset[d] += len(data) - pos
                items.append(action)
                return items

    def _next_byte_rule(self, d: Stream, start: int, end: int) -> Rule | None:
        best: Rule | None = None
        for rule in self.proxy._rules:
            n = rule.fault.at_byte
            if (
                n is None
                or not rule.live
                or d not in streams(rule.fault.direction)
                or (rule.id, d) in self.fired
                or not start <= n <= end
            ):
                continue
            if best is None or n < (best.fault.at_byte or 0):
                best = rule
        return best

    def _segment(self, d: Stream, seg: bytes) -> list[Item]:
        proxy = self.proxy
        rng = self.rng[d]
        self.offset[d] += len(seg)
        hits = [f for f, streams in self.armed if d in streams]
        self.armed = [(f, streams) for f, streams in self.armed if d not in streams]
        for rule in list(proxy._rules):
            f = rule.fault
            if not rule.live or d not in streams(f.direction) or f.at_byte is not None:
                continue
            if f.after is not None:
                continue
            if f.probability is not None and not rng.random() < f.probability:
                continue
            rule.consume()
            hits.append(f)
        now = trio.current_time()
        for f in hits:
            targets = streams(f.direction)
            if f.kind == "corrupt":
                proxy._faults["corrupt"] += 1
                seg = flip_bits(seg, f.flips, rng)
            elif f.kind == "truncate":
                proxy._faults["truncate"] += 1
                keep = rng.randrange(len(seg))
                proxy._dropped[d] += len(seg) - keep
                return [Item(seg[:keep], now + self._delay_now(d), abort=targets)]
            elif f.kind == "reset":
                proxy._faults["reset"] += 1
                proxy._dropped[d] += len(seg)
                return [Item(b"", now + self._delay_now(d), abort=targets)]
            else:
                self._set_mode(f, targets)
        if self.black_holed_now(d):
            proxy._dropped[d] += len(seg)
            return []
        return [Item(seg, now + self._delay_now(d))]

    def _delay_now(self, d: Stream) -> float:
        return max(self.delay[d], self.proxy._delay[d])


class FaultyProxy:
    """A loopback TCP proxy that injects faults between a client and its server.

    Start it in a nursery and point the client at :attr:`port`::

        proxy = await nursery.start(FaultyProxy.serve, "127.0.0.1", venue.port)
        url = f"ws://127.0.0.1:{proxy.port}/"

    Each client connection gets its own upstream connection and its own task
    group, so a failing connection never affects the others or the proxy.  EOF
    is forwarded as a half-close; when either side fails, both are closed.

    Faults (``direction`` is ``"c2s"``, ``"s2c"`` or ``"both"``):

    * :meth:`reset`: abort live connections; peers see ECONNRESET.
    * :meth:`black_hole`: swallow data (and FIN) but keep the sockets open,
      like a half-open link, until :meth:`restore`.
    * :meth:`delay`: hold each chunk ``seconds`` before forwarding (order kept).
    * :meth:`throttle`: limit the forwarding rate.
    * :meth:`truncate`: forward a random prefix of the next chunk, then reset.
    * :meth:`corrupt`: flip random bits in the next chunk, keep forwarding.
    * :meth:`add_rule`: the same faults on a schedule (:class:`Fault`).

    For resets, ``direction`` names the streams that are cut: the receiver of
    each such stream sees a reset (``"s2c"``: the client, ``"c2s"``: the
    server) while the other peer's socket is closed normally.  All timing uses
    the Trio clock, so delays follow a ``MockClock``; with real sockets, use
    the real clock.  Bytes are counted from each connection's start.
    """

    def __init__(self, upstream_host: str, upstream_port: int, *, seed: int = 0) -> None:
        """Prefer :meth:`serve`, which creates, listens and runs the proxy."""
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.seed = seed
        #: The listening address (set once :meth:`serve` has started).
        self.host = ""
        self.port = 0
        self._rules: list[Rule] = []
        self._next_rule = 0
        self._connections: dict[int, _ProxiedConnection] = {}
        self._next_conn = 0
        self._black_holed: set[Stream] = set()
        self._delay: dict[Stream, float] = dict.fromkeys(STREAMS, 0.0)
        self._rate: dict[Stream, float] = dict.fromkeys(STREAMS, math.inf)
        self._changed = trio.Event()
        self._resets = 0
        self._bytes: dict[Stream, int] = dict.fromkeys(STREAMS, 0)
        self._dropped: dict[Stream, int] = dict.fromkeys(STREAMS, 0)
        self._faults: dict[str, int] = dict.fromkeys(KINDS, 0)

    def __repr__(self) -> str:
        return (
            f"<FaultyProxy 127.0.0.1:{self.port} -> {self.upstream_host}:{self.upstream_port}"
            f" active={len(self._connections)}>"
        )

    @classmethod
    async def serve(
        cls,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        seed: int = 0,
        task_status: trio.TaskStatus[FaultyProxy] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen and proxy to ``upstream_host:upstream_port`` until cancelled.

        Use with ``nursery.start``, which returns the running proxy.
        """
        proxy = cls(upstream_host, upstream_port, seed=seed)
        listeners = await trio.open_tcp_listeners(listen_port, host=listen_host)
        proxy.host, proxy.port = listeners[0].socket.getsockname()[:2]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, proxy._handle, listeners)
            task_status.started(proxy)

    async def _handle(self, client: trio.SocketStream) -> None:
        try:
            await self._proxy(client)
        except Exception:  # one connection's bug must not take the proxy down
            logger.exception("FaultyProxy: connection handler failed")

    async def _proxy(self, client: trio.SocketStream) -> None:
        cid = self._next_conn
        self._next_conn += 1
        try:
            server = await trio.open_tcp_stream(self.upstream_host, self.upstream_port)
        except OSError as exc:
            logger.debug("FaultyProxy: upstream connect failed: %r", exc)
            set_rst(client)  # the client sees a reset, as if the server refused
            client.socket.close()
            return
        conn = _ProxiedConnection(self, cid, client, server)
        self._connections[cid] = conn
        try:
            await conn.run()
        finally:
            del self._connections[cid]
            conn.close()

    # -- state ------------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_changed(self) -> None:
        await self._changed.wait()

    @property
    def stats(self) -> ProxyStats:
        """Counters since the proxy started (a frozen snapshot)."""
        return ProxyStats(
            connections=self._next_conn,
            active=len(self._connections),
            resets=self._resets,
            bytes_c2s=self._bytes["c2s"],
            bytes_s2c=self._bytes["s2c"],
            dropped_c2s=self._dropped["c2s"],
            dropped_s2c=self._dropped["s2c"],
            faults=MappingProxyType(dict(self._faults)),
        )

    @property
    def rules(self) -> tuple[Fault, ...]:
        """Scheduled faults that can still fire."""
        return tuple(r.fault for r in self._rules if r.live)

    # -- faults -----------------------------------------------------------------------------

    def reset(self, direction: Direction = "both") -> int:
        """Abort every live connection now; return how many were aborted.

        The receivers of the ``direction`` streams see a reset (``"both"``: both
        peers); the other peer's socket is closed normally.
        """
        targets = streams(direction)
        live = [c for c in self._connections.values() if not c.closed]
        for conn in live:
            self._faults["reset"] += 1
            conn.fault_abort(targets)
        return len(live)

    def reset_all(self) -> int:
        """Abort every live connection; both peers see a reset."""
        return self.reset("both")

    def black_hole(self, direction: Direction = "both") -> None:
        """Swallow data on live and new connections, keeping the sockets open, until restore()."""
        self._faults["black_hole"] += 1
        self._black_holed.update(streams(direction))
        self._notify()

    def delay(self, seconds: float, direction: Direction = "both") -> None:
        """Hold each chunk ``seconds`` before forwarding it, until restore()."""
        if not seconds >= 0 or math.isinf(seconds):
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        self._faults["delay"] += 1
        for d in streams(direction):
            self._delay[d] = seconds
        self._notify()

    def throttle(self, bytes_per_second: float, direction: Direction = "both") -> None:
        """Forward at most ``bytes_per_second`` per connection and stream, until restore()."""
        if not bytes_per_second > 0:
            raise ValueError(f"bytes_per_second must be > 0, got {bytes_per_second!r}")
        self._faults["throttle"] += 1
        for d in streams(direction):
            self._rate[d] = bytes_per_second
        self._notify()

    def restore(self) -> None:
        """Lift black holes, delays and throttles (set by methods or by rules); keep rules."""
        self._black_holed.clear()
        self._delay = dict.fromkeys(STREAMS, 0.0)
        self._rate = dict.fromkeys(STREAMS, math.inf)
        for conn in self._connections.values():
            conn.black_holed.clear()
            conn.delay = dict.fromkeys(STREAMS, 0.0)
            conn.rate = dict.fromkeys(STREAMS, math.inf)
        self._notify()

    def truncate(self, direction: Direction = "both") -> None:
        """Forward a random prefix of the next chunk (either stream if "both"), then reset."""
        self.add_rule(Fault(kind="truncate", direction=direction))

    def corrupt(self, direction: Direction = "both", flips: int = 1) -> None:
        """Flip ``flips`` distinct random bits in the next chunk (either stream if "both")."""
        self.add_rule(Fault(kind="corrupt", direction=direction, flips=flips))

    def add_rule(self, fault: Fault) -> None:
        """Schedule ``fault`` for live and future connections (see :class:`Fault`)."""
        self._rules.append(Rule(self._next_rule, fault, fault.repeat))
        self._next_rule += 1
        self._notify()

    def clear_rules(self) -> None:
        """Drop every scheduled fault, including pending truncate()/corrupt() calls."""
        self._rules.clear()
        for conn in self._connections.values():
            conn.armed.clear()
        self._notify()
