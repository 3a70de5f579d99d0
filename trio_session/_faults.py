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

import contextlib
import logging
import math
import random
import socket
import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal, get_args

import attrs
import trio

__all__ = ["Direction", "Fault", "FaultKind", "FaultyProxy", "ProxyStats"]

logger = logging.getLogger("trio_session.faults")

#: Which stream a fault watches or acts on: client->server, server->client, or both.
Direction = Literal["c2s", "s2c", "both"]
#: What a fault does (see :class:`FaultyProxy` for each one's semantics).
FaultKind = Literal["reset", "black_hole", "delay", "throttle", "truncate", "corrupt"]

_Stream = Literal["c2s", "s2c"]
_STREAMS: tuple[_Stream, ...] = ("c2s", "s2c")
_KINDS: tuple[str, ...] = get_args(FaultKind)
_DIRECTIONS: tuple[str, ...] = get_args(Direction)
_RECV_SIZE = 65536
#: Chunks buffered between a direction's reader and writer (the delay line).
_QUEUE_CHUNKS = 256
#: Throttled data goes out in slices of about this many seconds' worth.
_THROTTLE_SLICE = 0.02
_LINGER_RST = struct.pack("ii", 1, 0)


def _streams(direction: str) -> tuple[_Stream, ...]:
    if direction == "both":
        return _STREAMS
    if direction == "c2s":
        return ("c2s",)
    if direction == "s2c":
        return ("s2c",)
    raise ValueError(f"direction must be 'c2s', 's2c' or 'both', got {direction!r}")


def _optional_non_negative(inst: object, attr: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"Fault.{attr.name} must be None or a number >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class Fault:
    """A scheduled fault for :meth:`FaultyProxy.add_rule`.

    At most one trigger may be given; with none, the fault hits the next chunk
    (this is how :meth:`FaultyProxy.corrupt` and :meth:`FaultyProxy.truncate`
    work).  Triggers are evaluated per connection:

    * ``at_byte=N``: when a watched stream of a connection reaches offset ``N``
      (bytes received from its sender); bytes before ``N`` pass untouched.
    * ``after=T``: ``T`` seconds (Trio clock) after the proxy accepted the connection.
    * ``probability=p``: on each chunk of a watched stream, with probability ``p``
      drawn from the seeded RNG.

    ``repeat`` caps how many times the rule fires in total, over all connections
    (``None``: unlimited).  A byte or time trigger fires at most once per
    connection and stream.
    """

    kind: FaultKind = attrs.field(validator=attrs.validators.in_(_KINDS))
    direction: Direction = attrs.field(default="both", validator=attrs.validators.in_(_DIRECTIONS))
    at_byte: int | None = attrs.field(default=None, validator=_optional_non_negative)
    after: float | None = attrs.field(default=None, validator=_optional_non_negative)
    probability: float | None = attrs.field(default=None, validator=_optional_non_negative)
    repeat: int | None = 1
    #: ``delay``: seconds to hold each chunk.
    seconds: float = 0.0
    #: ``throttle``: rate limit.
    bytes_per_second: float = math.inf
    #: ``corrupt``: distinct bits to flip in the chunk.
    flips: int = 1

    def __attrs_post_init__(self) -> None:
        triggers = [t for t in (self.at_byte, self.after, self.probability) if t is not None]
        if len(triggers) > 1:
            raise ValueError("Fault takes at most one of at_byte=, after=, probability=")
        if self.at_byte is not None and (
            isinstance(self.at_byte, bool) or not isinstance(self.at_byte, int)
        ):
            raise ValueError(f"Fault.at_byte must be an int, got {self.at_byte!r}")
        if self.probability is not None and not self.probability <= 1:
            raise ValueError(f"Fault.probability must be in [0, 1], got {self.probability!r}")
        if self.repeat is not None and (isinstance(self.repeat, bool) or self.repeat < 1):
            raise ValueError(f"Fault.repeat must be None or >= 1, got {self.repeat!r}")
        if not self.seconds >= 0 or math.isinf(self.seconds):
            raise ValueError(f"Fault.seconds must be a finite number >= 0, got {self.seconds!r}")
        if self.kind == "delay" and self.seconds == 0:
            raise ValueError("a 'delay' Fault needs seconds > 0")
        if not self.bytes_per_second > 0:
            raise ValueError(f"Fault.bytes_per_second must be > 0, got {self.bytes_per_second!r}")
        if self.kind == "throttle" and math.isinf(self.bytes_per_second):
            raise ValueError("a 'throttle' Fault needs a finite bytes_per_second")
        if isinstance(self.flips, bool) or self.flips < 1:
            raise ValueError(f"Fault.flips must be >= 1, got {self.flips!r}")


@attrs.frozen(kw_only=True)
class ProxyStats:
    """A snapshot of :attr:`FaultyProxy.stats`."""

    #: Client connections proxied so far, and those still open.
    connections: int
    active: int
    #: Connections the proxy aborted on purpose (``reset`` and ``truncate`` faults).
    resets: int
    #: Bytes delivered to the server / to the client.
    bytes_c2s: int
    bytes_s2c: int
    #: Bytes swallowed by black holes or cut off by resets and truncation.
    dropped_c2s: int
    dropped_s2c: int
    #: Faults that took effect, by kind (every kind present, 0 if none).
    faults: Mapping[str, int] = attrs.field(hash=False)


@attrs.define(eq=False)
class _Rule:
    id: int
    fault: Fault
    remaining: int | None

    @property
    def live(self) -> bool:
        return self.remaining is None or self.remaining > 0

    def consume(self) -> None:
        if self.remaining is not None:
            self.remaining -= 1


@attrs.frozen
class _Item:
    """One unit in a direction's delay line (reader -> writer)."""

    data: bytes
    deliver_at: float
    eof: bool = False
    #: After sending ``data``, abort the connection; resets go to these streams' receivers.
    abort: tuple[_Stream, ...] | None = None


def _set_rst(stream: trio.SocketStream) -> None:
    # SO_LINGER 0: close() then discards unsent data and sends RST instead of FIN.
    with contextlib.suppress(OSError):  # already closed
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)


def _flip_bits(data: bytes, flips: int, rng: random.Random) -> bytes:
    buf = bytearray(data)
    nbits = len(buf) * 8
    for bit in rng.sample(range(nbits), min(flips, nbits)):
        buf[bit >> 3] ^= 1 << (bit & 7)
    return bytes(buf)


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
        self.black_holed: set[_Stream] = set()
        self.delay: dict[_Stream, float] = dict.fromkeys(_STREAMS, 0.0)
        self.rate: dict[_Stream, float] = dict.fromkeys(_STREAMS, math.inf)
        self.offset: dict[_Stream, int] = dict.fromkeys(_STREAMS, 0)
        self.rng = {d: random.Random(f"{proxy.seed}/{cid}/{d}") for d in _STREAMS}
        #: Chunk faults (corrupt/truncate) armed by byte or time triggers, and the
        #: streams whose next chunk they hit.
        self.armed: list[tuple[Fault, tuple[_Stream, ...]]] = []
        self.fired: set[tuple[int, str]] = set()
        self.done: set[_Stream] = set()

    # -- plumbing ---------------------------------------------------------------------------

    def _src(self, d: _Stream) -> trio.SocketStream:
        return self.client if d == "c2s" else self.server

    def _dst(self, d: _Stream) -> trio.SocketStream:
        return self.server if d == "c2s" else self.client

    def close(self) -> None:
        """Close both sockets (synchronously, so peers see it at once) and stop the tasks."""
        self.closed = True
        for stream in (self.client, self.server):
            stream.socket.close()
        self.scope.cancel()

    def abort(self, rst_to: tuple[_Stream, ...]) -> None:
        """Tear the connection down; the receivers of ``rst_to`` streams see a reset."""
        if self.closed:
            return
        for d in rst_to:
            _set_rst(self._dst(d))
        self.close()

    def fault_abort(self, rst_to: tuple[_Stream, ...]) -> None:
        if not self.closed:
            self.proxy._resets += 1
            self.abort(rst_to)

    def black_holed_now(self, d: _Stream) -> bool:
        return d in self.black_holed or d in self.proxy._black_holed

    def rate_now(self, d: _Stream) -> float:
        return min(self.rate[d], self.proxy._rate[d])

    # -- tasks ------------------------------------------------------------------------------

    async def run(self) -> None:
        with self.scope:
            async with trio.open_nursery() as nursery:
                for d in _STREAMS:
                    tx, rx = trio.open_memory_channel[_Item](_QUEUE_CHUNKS)
                    nursery.start_soon(self._reader, d, tx, name=f"faulty-proxy-{self.id}-{d}-in")
                    nursery.start_soon(self._writer, d, rx, name=f"faulty-proxy-{self.id}-{d}-out")
                nursery.start_soon(self._timer, name=f"faulty-proxy-{self.id}-timer")

    async def _reader(self, d: _Stream, tx: trio.MemorySendChannel[_Item]) -> None:
        src = self._src(d)
        async with tx:
            while True:
                try:
                    data = await src.receive_some(_RECV_SIZE)
                except trio.ClosedResourceError:
                    return
                except trio.BrokenResourceError as exc:  # the sender reset: pass it on
                    logger.debug("proxy connection %d: %s read failed: %r", self.id, d, exc)
                    self.abort(_STREAMS)
                    return
                if not data:
                    # A black hole swallows the FIN too; deliver it once restored.
                    while self.black_holed_now(d):
                        await self.proxy._wait_changed()
                    items = [_Item(b"", trio.current_time(), eof=True)]
                else:
                    items = self._process(d, data)
                for item in items:
                    try:
                        await tx.send(item)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                if not data or (items and items[-1].abort is not None):
                    return

    async def _writer(self, d: _Stream, rx: trio.MemoryReceiveChannel[_Item]) -> None:
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
                            piece = view[: max(1, int(rate * _THROTTLE_SLICE))]
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
                    self.abort(_STREAMS)
                    return
                if item.abort is not None:
                    self.fault_abort(item.abort)
                    return
                if item.eof:
                    self.done.add(d)
                    if len(self.done) == len(_STREAMS):
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

    def _fire(self, fault: Fault, stream: _Stream | None = None) -> _Item | None:
        """A byte trigger on ``stream`` (or a time trigger) fired: apply ``fault``."""
        targets = _streams(fault.direction)
        kind = fault.kind
        if kind == "reset":
            self.proxy._faults["reset"] += 1
            return _Item(b"", trio.current_time(), abort=targets)
        if kind in ("corrupt", "truncate"):  # counted when it hits a chunk
            self.armed.append((fault, targets if stream is None else (stream,)))
        else:
            self._set_mode(fault, targets)
        return None

    def _set_mode(self, fault: Fault, targets: tuple[_Stream, ...]) -> None:
        self.proxy._faults[fault.kind] += 1
        for t in targets:
            if fault.kind == "black_hole":
                self.black_holed.add(t)
            elif fault.kind == "delay":
                self.delay[t] = fault.seconds
            elif fault.kind == "throttle":
                self.rate[t] = fault.bytes_per_second
        self.proxy._notify()

    def _process(self, d: _Stream, data: bytes) -> list[_Item]:
        """Split a received chunk at ``at_byte`` points and fault each segment."""
        items: list[_Item] = []
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

    def _next_byte_rule(self, d: _Stream, start: int, end: int) -> _Rule | None:
        best: _Rule | None = None
        for rule in self.proxy._rules:
            n = rule.fault.at_byte
            if (
                n is None
                or not rule.live
                or d not in _streams(rule.fault.direction)
                or (rule.id, d) in self.fired
                or not start <= n <= end
            ):
                continue
            if best is None or n < (best.fault.at_byte or 0):
                best = rule
        return best

    def _segment(self, d: _Stream, seg: bytes) -> list[_Item]:
        proxy = self.proxy
        rng = self.rng[d]
        self.offset[d] += len(seg)
        hits = [f for f, streams in self.armed if d in streams]
        self.armed = [(f, streams) for f, streams in self.armed if d not in streams]
        for rule in list(proxy._rules):
            f = rule.fault
            if not rule.live or d not in _streams(f.direction) or f.at_byte is not None:
                continue
            if f.after is not None:
                continue
            if f.probability is not None and not rng.random() < f.probability:
                continue
            rule.consume()
            hits.append(f)
        now = trio.current_time()
        for f in hits:
            targets = _streams(f.direction)
            if f.kind == "corrupt":
                proxy._faults["corrupt"] += 1
                seg = _flip_bits(seg, f.flips, rng)
            elif f.kind == "truncate":
                proxy._faults["truncate"] += 1
                keep = rng.randrange(len(seg))
                proxy._dropped[d] += len(seg) - keep
                return [_Item(seg[:keep], now + self._delay_now(d), abort=targets)]
            elif f.kind == "reset":
                proxy._faults["reset"] += 1
                proxy._dropped[d] += len(seg)
                return [_Item(b"", now + self._delay_now(d), abort=targets)]
            else:
                self._set_mode(f, targets)
        if self.black_holed_now(d):
            proxy._dropped[d] += len(seg)
            return []
        return [_Item(seg, now + self._delay_now(d))]

    def _delay_now(self, d: _Stream) -> float:
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
        self._rules: list[_Rule] = []
        self._next_rule = 0
        self._connections: dict[int, _ProxiedConnection] = {}
        self._next_conn = 0
        self._black_holed: set[_Stream] = set()
        self._delay: dict[_Stream, float] = dict.fromkeys(_STREAMS, 0.0)
        self._rate: dict[_Stream, float] = dict.fromkeys(_STREAMS, math.inf)
        self._changed = trio.Event()
        self._resets = 0
        self._bytes: dict[_Stream, int] = dict.fromkeys(_STREAMS, 0)
        self._dropped: dict[_Stream, int] = dict.fromkeys(_STREAMS, 0)
        self._faults: dict[str, int] = dict.fromkeys(_KINDS, 0)

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
            _set_rst(client)  # the client sees a reset, as if the server refused
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
        targets = _streams(direction)
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
        self._black_holed.update(_streams(direction))
        self._notify()

    def delay(self, seconds: float, direction: Direction = "both") -> None:
        """Hold each chunk ``seconds`` before forwarding it, until restore()."""
        if not seconds >= 0 or math.isinf(seconds):
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        self._faults["delay"] += 1
        for d in _streams(direction):
            self._delay[d] = seconds
        self._notify()

    def throttle(self, bytes_per_second: float, direction: Direction = "both") -> None:
        """Forward at most ``bytes_per_second`` per connection and stream, until restore()."""
        if not bytes_per_second > 0:
            raise ValueError(f"bytes_per_second must be > 0, got {bytes_per_second!r}")
        self._faults["throttle"] += 1
        for d in _streams(direction):
            self._rate[d] = bytes_per_second
        self._notify()

    def restore(self) -> None:
        """Lift black holes, delays and throttles (set by methods or by rules); keep rules."""
        self._black_holed.clear()
        self._delay = dict.fromkeys(_STREAMS, 0.0)
        self._rate = dict.fromkeys(_STREAMS, math.inf)
        for conn in self._connections.values():
            conn.black_holed.clear()
            conn.delay = dict.fromkeys(_STREAMS, 0.0)
            conn.rate = dict.fromkeys(_STREAMS, math.inf)
        self._notify()

    def truncate(self, direction: Direction = "both") -> None:
        """Forward a random prefix of the next chunk (either stream if "both"), then reset."""
        self.add_rule(Fault(kind="truncate", direction=direction))

    def corrupt(self, direction: Direction = "both", flips: int = 1) -> None:
        """Flip ``flips`` distinct random bits in the next chunk (either stream if "both")."""
        self.add_rule(Fault(kind="corrupt", direction=direction, flips=flips))

    def add_rule(self, fault: Fault) -> None:
        """Schedule ``fault`` for live and future connections (see :class:`Fault`)."""
        self._rules.append(_Rule(self._next_rule, fault, fault.repeat))
        self._next_rule += 1
        self._notify()

    def clear_rules(self) -> None:
        """Drop every scheduled fault, including pending truncate()/corrupt() calls."""
        self._rules.clear()
        for conn in self._connections.values():
            conn.armed.clear()
        self._notify()
