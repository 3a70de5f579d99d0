"""The small vocabulary every protocol machine shares: roles, directions, states, counters."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final

import attrs

__all__ = ["DIR_C2V", "DIR_V2C", "ConnectionState", "ConnectionStats", "Role", "draw_jitter"]

#: Direction bytes of the frame MAC input: participant -> venue, venue -> participant.
DIR_C2V: Final = 0x01
DIR_V2C: Final = 0x02


class Role(enum.Enum):
    """Which end of the session: the participant connects, the venue serves."""

    PARTICIPANT = "participant"
    VENUE = "venue"


class ConnectionState(enum.Enum):
    """Where one connection is in its life (:attr:`Connection.state`).

    ``HANDSHAKING`` covers every handshake step but the venue's wait for the
    application's :meth:`VenueConnection.accept` (``AWAITING_ACCEPT``); the
    handshake machine itself tells them apart.
    """

    HANDSHAKING = "handshaking"
    AWAITING_ACCEPT = "awaiting_accept"
    OPEN = "open"
    CLOSING = "closing"  # we sent CLOSE (or REJECT); nothing more may be sent
    CLOSED = "closed"  # the peer sent CLOSE
    ERROR = "error"


@attrs.define
class ConnectionStats:
    """Counters of one connection (the runtime aggregates them per session)."""

    frames_sent: int = 0
    frames_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    retransmitted: int = 0
    ratchets: int = 0
    rekeys: int = 0
    heartbeats_sent: int = 0
    probes_sent: int = 0
    last_rtt: float | None = None


def draw_jitter(rng: Callable[[int], bytes], limit: float) -> float:
    """A uniform delay in ``[0, limit)`` from ``rng``; draws nothing when ``limit`` is 0.

    Drawing nothing keeps the known-answer vectors (``rekey_jitter=0``) independent
    of how many timers a connection has.
    """
    if limit <= 0:
        return 0.0
    return int.from_bytes(rng(4), "big") / 2**32 * limit
