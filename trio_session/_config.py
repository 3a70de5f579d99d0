"""Session configuration: every timer, limit and channel capacity in one frozen object.

Why one object: the two ends of a session must agree on some values (the venue
dictates the heartbeat interval in the handshake) and a supervisor restarts
sessions with the same settings, so configuration is an immutable value that is
validated once, at construction, with errors that name the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Final

import attrs

__all__ = ["MODES", "MODE_AEAD", "MODE_MAC", "SessionConfig"]

#: Frame protection modes (docs/protocol.md, "Frame protection"): ``"mac"``
#: authenticates every frame and leaves bodies readable (TLS gives
#: confidentiality); ``"aead"`` also encrypts every body.
MODE_MAC: Final = "mac"
MODE_AEAD: Final = "aead"
MODES: Final = (MODE_MAC, MODE_AEAD)


def _positive(inst: Any, attr: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"SessionConfig.{attr.name} must be a number, got {type(value).__name__}")
    if not (value > 0) or math.isnan(value) or math.isinf(value):
        raise ValueError(f"SessionConfig.{attr.name} must be a finite number > 0, got {value!r}")


def _non_negative(inst: Any, attr: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"SessionConfig.{attr.name} must be a number, got {type(value).__name__}")
    if not (value >= 0) or math.isinf(value):
        raise ValueError(f"SessionConfig.{attr.name} must be a finite number >= 0, got {value!r}")


def _positive_int(inst: Any, attr: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"SessionConfig.{attr.name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"SessionConfig.{attr.name} must be >= 1, got {value!r}")


def _to_modes(value: Iterable[str] | str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    try:
        return tuple(value)
    except TypeError:
        raise TypeError(
            "SessionConfig.modes must be mode names (e.g. ('aead', 'mac')) or None, "
            f"got {type(value).__name__}"
        ) from None


def _valid_modes(inst: Any, attr: attrs.Attribute[Any], value: tuple[str, ...] | None) -> None:
    if value is None:
        return
    if not value:
        raise ValueError("SessionConfig.modes must name at least one mode, or be None (automatic)")
    for mode in value:
        if mode not in MODES:
            raise ValueError(
                f"SessionConfig.modes: unknown mode {mode!r} (known: {', '.join(MODES)})"
            )
    if len(set(value)) != len(value):
        raise ValueError(f"SessionConfig.modes lists a mode twice: {value!r}")


@attrs.frozen(kw_only=True)
class SessionConfig:
    """Timers, limits and capacities of a session.  All times are in seconds.

    Key timers follow WireGuard's (a new DH key every 120 s, keys refused after
    180 s).  Heartbeats follow FIX practice (a heartbeat, then a probe, then a
    timeout) at the tempo of trading: a silent link is STALE within
    ``stale_after`` (2.5 s), and abandoned for a new connection after
    ``heartbeat_timeout`` (10 s).
    Invalid values raise :class:`ValueError`/:class:`TypeError` naming the field.
    """

    #: The participant sends a heartbeat every this many seconds (busy or idle;
    #: that also measures the RTT); the venue answers, and probes a participant
    #: silent half-way to the timeout.  The venue's value is dictated to the
    #: participant.  1 s makes ``stale_after`` possible at 2.5 s; an idle session
    #: costs one small frame each way per second.
    heartbeat_interval: float = attrs.field(default=1.0, validator=_positive)
    #: Nothing received for this long: the session turns STALE at once (the peer
    #: may be unreachable; what you hold may be out of date), while the connection
    #: is kept and probed, so a link that recovers (a short black hole, a peer's
    #: pause) is LIVE again without a reconnect.  Never below 1.5 intervals nor
    #: above ``heartbeat_timeout``.
    stale_after: float = attrs.field(default=2.5, validator=_positive)
    #: Nothing received for this long: the peer is dead, the connection ends
    #: (``HeartbeatTimeout``) and the participant reconnects and resumes.
    heartbeat_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: Participant: each idle heartbeat goes out after a random
    #: ``(1 - jitter) .. 1`` times the interval, so that sessions started together
    #: (e.g. after a venue restart) do not beat in lockstep.  0 disables it.
    heartbeat_jitter: float = attrs.field(default=0.2, validator=_non_negative)
    #: Connect + WebSocket upgrade + authentication handshake deadline.
    handshake_timeout: float = attrs.field(default=5.0, validator=_positive)
    #: Deadline for a graceful close before the transport is closed forcefully.
    close_timeout: float = attrs.field(default=2.0, validator=_positive)

    #: Tier-1 symmetric ratchet: step the sending key after this long ...
    ratchet_interval: float = attrs.field(default=20.0, validator=_positive)
    #: ... or after this many frames under one key, whichever comes first.
    ratchet_messages: int = attrs.field(default=2**20, validator=_positive_int)
    #: Tier-2 DH rekey (venue-initiated) every this many seconds ...
    rekey_interval: float = attrs.field(default=120.0, validator=_positive)
    #: ... or after this many data messages in either direction.
    rekey_messages: int = attrs.field(default=2**30, validator=_positive_int)
    #: A rekey not completed this long after the last completed one ends the
    #: session (resumable).
    reject_after: float = attrs.field(default=180.0, validator=_positive)
    #: Random extra delay (0..jitter) added to rekey deadlines so that many
    #: sessions do not rekey in lockstep.
    rekey_jitter: float = attrs.field(default=0.3, validator=_non_negative)

    #: How long the venue keeps a detached session for resume.
    resume_ttl: float = attrs.field(default=60.0, validator=_positive)
    #: Replay buffer bounds (sent but unacknowledged messages).  When full the
    #: sender stops sending (backpressure); nothing is dropped silently.
    replay_max_messages: int = attrs.field(default=65536, validator=_positive_int)
    replay_max_bytes: int = attrs.field(default=64 * 2**20, validator=_positive_int)

    #: Inbound channel capacity, in messages; also the credit window granted
    #: to the peer, so the reader never has to block on a full channel.
    inbound_capacity: int = attrs.field(default=4096, validator=_positive_int)
    #: Outbound data channel capacity, in messages (``send`` blocks beyond it).
    outbound_capacity: int = attrs.field(default=4096, validator=_positive_int)
    #: Largest WebSocket message (one frame) accepted; checked before decoding.
    max_frame_size: int = attrs.field(default=2**20, validator=_positive_int)
    #: Largest single application message.
    max_message_size: int = attrs.field(default=2**18, validator=_positive_int)
    #: Writer coalescing cap: at most this many payload bytes per data frame.
    max_batch_bytes: int = attrs.field(default=2**16, validator=_positive_int)
    #: Payload bytes received and not yet consumed, at most.  The credit granted
    #: to the peer never lets it exceed this, counting every message it may still
    #: send at ``max_message_size``; the window shrinks below ``inbound_capacity``
    #: messages only when ``inbound_capacity * max_message_size`` exceeds it.
    inbound_max_bytes: int = attrs.field(default=2**28, validator=_positive_int)
    #: Payload bytes queued for sending, at most: ``send`` waits beyond it (like
    #: ``outbound_capacity`` in messages) and ``send_lossy`` drops the oldest.
    outbound_max_bytes: int = attrs.field(default=2**26, validator=_positive_int)

    #: Frame protection modes, most preferred first (``"mac"``, ``"aead"``).  A
    #: participant offers these; a venue accepts only these and picks the first one
    #: the participant offered.  None (the default) decides by the transport: a
    #: participant offers only ``"aead"`` over ``ws://`` (no cleartext order flow
    #: unless configured) and ``("mac", "aead")`` otherwise; a venue accepts both,
    #: picks ``"aead"`` whenever offered when it serves without TLS (TLS may end at a
    #: load balancer in front of it), and otherwise follows the participant's order.
    #: Each connection negotiates anew, a resume included.
    modes: tuple[str, ...] | None = attrs.field(
        default=None, converter=_to_modes, validator=_valid_modes
    )

    #: Venue: close a session whose outbound queue stays full this long.
    slow_consumer_timeout: float = attrs.field(default=30.0, validator=_positive)
    #: Venue: handshakes allowed per key per second (counted per key and address
    #: until the handshake verified, per key once it did), and per remote address.
    handshake_rate_per_key: float = attrs.field(default=50.0, validator=_positive)
    handshake_rate_per_address: float = attrs.field(default=200.0, validator=_positive)
    #: Venue: sessions (live or detached) one key may hold.  A new session beyond it
    #: ends the key's oldest detached session (its dead man's switch fires), or is
    #: refused with ``SESSION_LIMIT`` when none is detached.
    max_sessions_per_key: int = attrs.field(default=8, validator=_positive_int)
    #: Venue: new sessions (not resumes) one key may open per second, bursts of
    #: ``max_sessions_per_key``; more are refused with ``RATE_LIMITED`` before the
    #: venue signs anything.
    session_rate_per_key: float = attrs.field(default=2.0, validator=_positive)
    #: Venue: payload bytes all sessions together may hold in their queues and replay
    #: buffers; reaching it ends the sessions holding the most (``MEMORY_BUDGET``).
    max_buffered_bytes: int = attrs.field(default=2**30, validator=_positive_int)
    #: Control frames (all but DATA) the peer may send per second beyond those our
    #: own frames call for, bursts of twice that; more ends the session
    #: (``CONTROL_FLOOD``).
    control_frame_rate: float = attrs.field(default=100.0, validator=_positive)
    #: Venue: connections accepted but not yet authenticated (TLS, WebSocket upgrade
    #: and handshake still running), at most this many in all ...
    max_preauth_connections: int = attrs.field(default=1024, validator=_positive_int)
    #: ... and at most this many from one IP address.  A connection beyond either
    #: cap is refused at once (HTTP 503, or a plain TCP close under TLS).
    max_preauth_per_address: int = attrs.field(default=64, validator=_positive_int)
    #: Venue: WebSocket ping and pong frames a connection may send per second
    #: (bursts of twice that); beyond it the connection is closed (WebSocket 1008).
    websocket_ping_rate: float = attrs.field(default=5.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError(
                "SessionConfig.heartbeat_timeout must be greater than heartbeat_interval "
                f"({self.heartbeat_timeout!r} <= {self.heartbeat_interval!r})"
            )
        if self.heartbeat_jitter >= 1:
            raise ValueError(
                f"SessionConfig.heartbeat_jitter must be below 1 ({self.heartbeat_jitter!r})"
            )
        if self.reject_after <= self.rekey_interval:
            raise ValueError(
                "SessionConfig.reject_after must be greater than rekey_interval "
                f"({self.reject_after!r} <= {self.rekey_interval!r})"
            )
        if self.max_message_size + 64 > self.max_frame_size:
            raise ValueError(
                "SessionConfig.max_message_size must leave room for framing within max_frame_size"
            )
        if self.max_preauth_per_address > self.max_preauth_connections:
            raise ValueError(
                "SessionConfig.max_preauth_per_address must not exceed max_preauth_connections "
                f"({self.max_preauth_per_address!r} > {self.max_preauth_connections!r})"
            )
        if self.max_batch_bytes + 64 > self.max_frame_size:
            raise ValueError("SessionConfig.max_batch_bytes must be below max_frame_size")
        if self.inbound_max_bytes < self.max_message_size:
            raise ValueError(
                "SessionConfig.inbound_max_bytes must hold at least one message of "
                f"max_message_size ({self.inbound_max_bytes!r} < {self.max_message_size!r})"
            )

    def for_participant(self, url: str | None) -> SessionConfig:
        """This config with ``modes`` resolved for a participant connecting to ``url``
        (None: a transport that is not a WebSocket URL, e.g. in memory)."""
        if self.modes is not None:
            return self
        plain = url is not None and url[:5].lower() == "ws://"
        return attrs.evolve(self, modes=(MODE_AEAD,) if plain else (MODE_MAC, MODE_AEAD))

    def for_venue(self, *, tls: bool) -> SessionConfig:
        """This config with ``modes`` resolved for a venue serving with or without TLS.

        Without TLS the venue prefers ``"aead"``; with TLS ``modes`` stays None, which
        the handshake reads as "accept both, in the participant's order"."""
        if self.modes is not None or tls:
            return self
        return attrs.evolve(self, modes=(MODE_AEAD, MODE_MAC))
