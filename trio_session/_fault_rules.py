"""The vocabulary of :class:`~trio_session.testing.FaultyProxy`: fault rules, counters and
the small byte-level helpers the proxy applies them with.

Kept apart from the proxy's tasks so that a reader can see every fault kind and
its validation in one place.
"""

from __future__ import annotations

import contextlib
import math
import random
import socket
import struct
from collections.abc import Mapping
from typing import Any, Literal, get_args

import attrs
import trio

__all__ = [
    "DIRECTIONS",
    "KINDS",
    "QUEUE_CHUNKS",
    "RECV_SIZE",
    "STREAMS",
    "THROTTLE_SLICE",
    "Direction",
    "Fault",
    "FaultKind",
    "Item",
    "ProxyStats",
    "Rule",
    "Stream",
    "flip_bits",
    "set_rst",
    "streams",
]

#: Which stream a fault watches or acts on: client->server, server->client, or both.
Direction = Literal["c2s", "s2c", "both"]
#: What a fault does (see :class:`FaultyProxy` for each one's semantics).
FaultKind = Literal["reset", "black_hole", "delay", "throttle", "truncate", "corrupt"]

Stream = Literal["c2s", "s2c"]
STREAMS: tuple[Stream, ...] = ("c2s", "s2c")
KINDS: tuple[str, ...] = get_args(FaultKind)
DIRECTIONS: tuple[str, ...] = get_args(Direction)
RECV_SIZE = 65536
#: Chunks buffered between a direction's reader and writer (the delay line).
QUEUE_CHUNKS = 256
#: Throttled data goes out in slices of about this many seconds' worth.
THROTTLE_SLICE = 0.02
LINGER_RST = struct.pack("ii", 1, 0)


def streams(direction: str) -> tuple[Stream, ...]:
    if direction == "both":
        return STREAMS
    if direction == "c2s":
        return ("c2s",)
    if direction == "s2c":
        return ("s2c",)
    raise ValueError(f"direction must be 'c2s', 's2c' or 'both', got {direction!r}")


def optional_non_negative(inst: object, attr: attrs.Attribute[Any], value: object) -> None:
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

    kind: FaultKind = attrs.field(validator=attrs.validators.in_(KINDS))
    direction: Direction = attrs.field(default="both", validator=attrs.validators.in_(DIRECTIONS))
    at_byte: int | None = attrs.field(default=None, validator=optional_non_negative)
    after: float | None = attrs.field(default=None, validator=optional_non_negative)
    probability: float | None = attrs.field(default=None, validator=optional_non_negative)
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
class Rule:
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
class Item:
    """One unit in a direction's delay line (reader -> writer)."""

    data: bytes
    deliver_at: float
    eof: bool = False
    #: After sending ``data``, abort the connection; resets go to these streams' receivers.
    abort: tuple[Stream, ...] | None = None


def set_rst(stream: trio.SocketStream) -> None:
    # SO_LINGER 0: close() then discards unsent data and sends RST instead of FIN.
    with contextlib.suppress(OSError):  # already closed
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)


def flip_bits(data: bytes, flips: int, rng: random.Random) -> bytes:
    buf = bytearray(data)
    nbits = len(buf) * 8
    for bit in rng.sample(range(nbits), min(flips, nbits)):
        buf[bit >> 3] ^= 1 << (bit & 7)
    return bytes(buf)
