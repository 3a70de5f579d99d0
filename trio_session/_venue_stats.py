"""The venue's numbers (``VenueServer.stats()``) and its refusal log.

Why the venue keeps them itself: sessions come and go, so summing
``session.stats`` over the sessions alive now would make every counter go
backwards when a session ends; :class:`VenueTally` folds each ended session's
final counters into running totals, and counts what no session sees (refused
handshakes, resets, dead man's switches).  :meth:`VenueTally.snapshot` costs one
pass over the live sessions and nothing between calls, so a metrics scrape
costs nothing while nobody scrapes.

Refused handshakes are logged here too, with the key id and, for an unknown
key, the fix; an unauthenticated flood could trigger any number of them, so
each kind is logged at most once per :data:`~trio_session._log.LIMIT_PERIOD`.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, final

import attrs

from ._errors import CloseCode, SessionError
from ._lifecycle import State
from ._log import RateLimitedLog, log_event

if TYPE_CHECKING:
    from ._core import SessionStats
    from ._session import Session

__all__ = ["COUNTED", "VenueStats", "VenueTally"]

logger = logging.getLogger("trio_session.server")

#: SessionStats counters summed over live and ended sessions.
COUNTED: Final = (
    "sent",
    "received",
    "bytes_sent",
    "bytes_received",
    "resumes",
    "connections",
    "rekeys",
    "ratchets",
    "retransmitted",
    "heartbeats_sent",
    "stale_spells",
    "dropped",
    "conflated",
)


#: SessionStats gauges summed over the live sessions only.
GAUGES: Final = ("outbound_depth", "inbound_depth", "unacked")
#: SessionStats names that VenueStats spells out.
_RENAMED: Final = {"sent": "messages_sent", "received": "messages_received"}


@attrs.frozen(kw_only=True)
class VenueStats:
    """A snapshot of a venue's numbers (``VenueServer.stats()``).

    Counters (``*_total`` in Prometheus terms) include sessions that ended, so
    they never go backwards; gauges describe the sessions alive now.
    """

    #: Sessions alive now by :class:`State` value (``"live"``, ``"stale"``, ...).
    sessions: Mapping[str, int] = attrs.field(hash=False)
    #: Logical sessions started, logged out, and lost (``on_session_lost`` fired:
    #: the dead man's switch, a handler failure, a revoked key, ...).
    sessions_opened: int
    logouts: int
    sessions_lost: int
    #: Participants that asked to resume a session the venue no longer had and
    #: were given a new one (their side raises SessionReset).
    resets: int
    #: Sessions closed as slow consumers (``SLOW_CONSUMER``).
    slow_consumers: int
    #: Application messages and frame bytes, venue to participants and back.
    messages_sent: int
    messages_received: int
    bytes_sent: int
    bytes_received: int
    #: Connections that resumed a session, and connections in all.
    resumes: int
    connections: int
    #: Completed DH rekeys and sending-key ratchet steps.
    rekeys: int
    ratchets: int
    #: Messages retransmitted after resumes; heartbeats and probes sent.
    retransmitted: int
    heartbeats_sent: int
    #: Outages: times a session went STALE.
    stale_spells: int
    #: Outbound messages discarded by ``send_lossy`` / replaced by ``send_latest``.
    dropped: int
    conflated: int
    #: Messages queued now: to send, received and not yet consumed, sent and not
    #: yet acknowledged (summed over live sessions).
    outbound_depth: int
    inbound_depth: int
    unacked: int
    #: The latest round-trip time of each live session that measured one, seconds.
    rtt: tuple[float, ...]
    #: Handshakes refused, by close code name (``UNKNOWN_KEY``, ``RATE_LIMITED``, ...).
    handshake_refusals: Mapping[str, int] = attrs.field(hash=False)


@final
class VenueTally:
    """Running totals of one venue (see the module docstring)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.opened = 0
        self.logouts = 0
        self.sessions_lost = 0
        self.resets = 0
        self.slow_consumers = 0
        self.refusals: collections.Counter[str] = collections.Counter()
        #: SessionStats counters of ended sessions.
        self.retired: collections.Counter[str] = collections.Counter()
        self._refusal_log = RateLimitedLog()

    def retire(self, stats: SessionStats, error: SessionError | None) -> None:
        """A session ended: keep its final counters."""
        for name in COUNTED:
            self.retired[name] += getattr(stats, name)
        if error is not None and error.code is CloseCode.SLOW_CONSUMER:
            self.slow_consumers += 1

    def snapshot(self, live: Iterable[Session[Any]]) -> VenueStats:
        totals = collections.Counter(self.retired)
        states: collections.Counter[str] = collections.Counter()
        rtts: list[float] = []
        for session in live:
            s = session.stats
            states[session.state.value] += 1
            for name in (*COUNTED, *GAUGES):
                totals[name] += getattr(s, name)
            if s.rtt is not None:
                rtts.append(s.rtt)
        counted = {_RENAMED.get(name, name): totals[name] for name in (*COUNTED, *GAUGES)}
        return VenueStats(
            sessions=MappingProxyType({st.value: states[st.value] for st in State}),
            sessions_opened=self.opened,
            logouts=self.logouts,
            sessions_lost=self.sessions_lost,
            resets=self.resets,
            slow_consumers=self.slow_consumers,
            rtt=tuple(rtts),
            handshake_refusals=MappingProxyType(dict(self.refusals)),
            **counted,
        )

    # -- refused handshakes ------------------------------------------------------------

    def refused(self, code: CloseCode, address: str, key_id: str | None, why: str) -> None:
        """Count one refused handshake and log it (rate-limited per code and key)."""
        self.refusals[code.name] += 1
        suppressed = self._refusal_log.admit((code, key_id or address), self._clock())
        if suppressed is None:
            return
        key = f"key id {key_id!r}" if key_id is not None else "no key id yet"
        text = f"handshake from {address} ({key}) refused: {code.name}: {why}"
        if code is CloseCode.UNKNOWN_KEY and key_id is not None:
            text += (
                f"; to admit it, add its public key to the registry: trio-session registry "
                f"add REGISTRY {key_id} PUBLIC_KEY_HEX (or KeyRegistry.add)"
            )
        if suppressed:
            text += f" ({suppressed} more like it in the last {self._refusal_log.period:.0f}s)"
        level = logging.INFO if code in _ROUTINE else logging.WARNING
        event = "rate_limited" if code is CloseCode.RATE_LIMITED else "handshake_refused"
        log_event(
            logger,
            level,
            event,
            "%s",
            text,
            address=address,
            key_id=key_id,
            code=code.name,
            suppressed=suppressed,
        )


#: Refusals that are routine under load, not a sign of misconfiguration.
_ROUTINE: Final = frozenset({CloseCode.RATE_LIMITED, CloseCode.HANDSHAKE_TIMEOUT})
