"""When a participant reconnects, and how: the restart policy as data and a pure decision.

A connection's tasks fail together and leave one typed error.  What to do
about it depends only on that error and on a few facts about the past (how
long the session has been down, how often it restarted, how many
authentication failures in a row), so :func:`decide` is a pure function of
them, in the shape of websockets' ``process_exception``: no I/O, no clock, no
mutation.  The supervisor in ``_client.py`` gathers the facts, calls it, and
applies the decision.

* :class:`Resume` — reconnect after ``delay`` and resume the logical session
  (the error's category is RESUMABLE, or an AUTH_FAILED retry);
* :class:`NewSession` — the logical session is gone (REAUTHENTICATE):
  reconnect after ``delay`` with a fresh handshake; the application gets
  :class:`~trio_session.SessionReset`;
* :class:`Wait` — the venue asked us to wait (RATE_LIMITED): reconnect, as
  before, after at least its ``retry_after``;
* :class:`GiveUp` — end the session with ``error`` (CLOSED or FATAL, the
  restart intensity or the outage limit exceeded, supervision disabled).

Delays come from :class:`Backoff`: decorrelated jitter (first retry
immediate), an Erlang-style intensity limit that counts only attempts that made
no progress, and a reset after a connection stayed up ``stable_after``.

Why progress and not restarts: a connection that came up, resumed (LIVE again)
and moved messages proves that retrying works, however often the link drops; a
trader on a flaky link keeps a working session.  What retrying cannot fix shows
as attempts that get nowhere: the venue refuses the handshake, or each
connection dies before it is LIVE, or it is LIVE but delivers nothing of what is
owed.  Those count; an unreachable venue (no connection at all) does not count
either, it is ridden out until ``max_outage``.  The delay still grows with every
restart (fast flapping backs off) until a connection stays up ``stable_after``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs

from ._errors import Category, CloseCode, ConnectionLost, RateLimited, SessionError

__all__ = [
    "Backoff",
    "Decision",
    "GiveUp",
    "History",
    "NewSession",
    "RestartPolicy",
    "Resume",
    "Wait",
    "decide",
]


def _non_negative(inst: Any, attr: attrs.Attribute[Any], value: float) -> None:
    if not (value >= 0):
        raise ValueError(f"RestartPolicy.{attr.name} must be >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class RestartPolicy:
    """How a supervised participant session restarts after a connection loss.

    Defaults suit a trading client: reconnect at once, then back off with
    decorrelated jitter between ``base_delay`` and ``max_delay``.  Give up when
    more than ``max_restarts`` attempts *made no progress* within ``window`` seconds (the
    venue refused the handshake, or connections died before they were LIVE, or
    delivered nothing of what was owed), or when the session has not been LIVE
    for ``max_outage`` seconds.  Connections that resumed and moved messages never
    count, so a flaky link that works between its drops is kept; an unreachable
    venue is retried until ``max_outage``.  A connection that stayed up
    ``stable_after`` seconds resets the backoff.
    """

    #: Supervise at all; False means one connection, and its loss ends the session.
    enabled: bool = True
    #: Smallest wait between reconnection attempts (the first retry is immediate).
    base_delay: float = attrs.field(default=0.05, validator=_non_negative)
    #: Largest wait between attempts; the decorrelated jitter grows towards it
    #: with every restart until a connection proves stable.
    max_delay: float = attrs.field(default=5.0, validator=_non_negative)
    #: Give up when more than this many attempts made no progress within ``window``.
    max_restarts: int = attrs.field(default=20, validator=_non_negative)
    #: The period, in seconds, over which ``max_restarts`` counts.
    window: float = attrs.field(default=60.0, validator=_non_negative)
    #: A connection up this long resets the backoff (delay and count).
    stable_after: float = attrs.field(default=10.0, validator=_non_negative)
    #: Give up when the session was not LIVE again after this long (None: never).
    max_outage: float | None = 300.0
    #: Consecutive AUTH_FAILED reconnects tolerated before giving up.  Once a
    #: session was established, a signature or MAC failure on a reconnect is
    #: indistinguishable from line damage; UNKNOWN_KEY, KEY_REVOKED and
    #: VERSION_MISMATCH stay fatal at once, and the first connect never retries.
    auth_retries: int = attrs.field(default=2, validator=_non_negative)


class Backoff:
    """Decorrelated-jitter backoff (first delay 0) with an intensity limit.

    ``next_delay()`` returns the next sleep, or None when the restart intensity
    is exceeded.  Deterministic given ``rng``; time comes from ``clock``.
    """

    def __init__(
        self,
        policy: RestartPolicy,
        *,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._rng = rng or random.Random()
        self._prev = 0.0
        self._failures: list[float] = []
        self._up_since: float | None = None
        self.attempt = 0

    def connected(self, since: float) -> None:
        """A connection came up at ``since``; nothing resets until it proves stable."""
        self._up_since = since

    def disconnected(self) -> None:
        up = self._up_since
        if up is not None and self._clock() - up >= self.policy.stable_after:
            self.reset()
        self._up_since = None

    def reset(self) -> None:
        self._prev = 0.0
        self._failures.clear()
        self.attempt = 0

    def next_delay(self, *, counted: bool = True) -> float | None:
        """The next sleep before reconnecting, or None to give up.

        ``counted`` says the previous attempt made no progress (see the module
        docstring): only those count against the intensity limit.  The delay
        grows either way.
        """
        p = self.policy
        now = self._clock()
        if counted:
            self._failures = [t for t in self._failures if now - t < p.window]
            if len(self._failures) >= p.max_restarts:
                return None
            self._failures.append(now)
        self.attempt += 1
        if self.attempt == 1:
            delay = 0.0
        else:
            upper = max(p.base_delay, self._prev * 3)
            delay = min(p.max_delay, self._rng.uniform(p.base_delay, upper))
        self._prev = max(delay, p.base_delay)
        return delay


@attrs.frozen(kw_only=True)
class History:
    """What :func:`decide` knows besides the error: facts the supervisor gathered."""

    policy: RestartPolicy
    #: The time now, and when the outage began (the session was last LIVE then),
    #: on the same clock.
    now: float
    outage_since: float
    #: AUTH_FAILED failures in a row before this error.
    auth_failures: int
    #: The backoff's next delay; None when too many attempts made no progress.
    delay: float | None


@attrs.frozen
class Resume:
    """Reconnect after ``delay`` seconds and resume the logical session."""

    delay: float


@attrs.frozen
class NewSession:
    """Reconnect after ``delay`` seconds with a fresh handshake: the session is gone."""

    delay: float


@attrs.frozen
class Wait:
    """The venue asked us to wait: reconnect after ``delay`` seconds."""

    delay: float


@attrs.frozen
class GiveUp:
    """End the session with ``error``."""

    error: SessionError


Decision = Resume | NewSession | Wait | GiveUp


def decide(error: SessionError, history: History) -> Decision:
    """What a supervised participant does after a connection ended with ``error``.

    Pure: the same arguments always give the same decision, and nothing is
    changed (the errors it gives up with are new objects).
    """
    policy = history.policy
    category = error.category
    if error.code is CloseCode.AUTH_FAILED and history.auth_failures < policy.auth_retries:
        category = Category.RESUMABLE  # maybe line damage: retry, a bounded number of times
    if not policy.enabled or category in (Category.FATAL, Category.CLOSED):
        return GiveUp(error)
    delay = history.delay
    if delay is None:
        gave_up = ConnectionLost(
            f"gave up: more than {policy.max_restarts} attempts without progress within "
            f"{policy.window}s; last error: {type(error).__name__}: {error}"
        )
        gave_up.__cause__ = error
        return GiveUp(gave_up)
    if isinstance(error, RateLimited):
        delay = max(delay, error.retry_after)
    max_outage = policy.max_outage
    if max_outage is not None and history.now - history.outage_since + delay > max_outage:
        gave_up = ConnectionLost(f"no connection for {max_outage}s; giving up")
        gave_up.__cause__ = error
        return GiveUp(gave_up)
    if category is Category.RATE_LIMITED:
        return Wait(delay)
    if category is Category.REAUTHENTICATE:
        return NewSession(delay)
    return Resume(delay)
