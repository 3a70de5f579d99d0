"""The restart policy (``_policy.py``): Backoff, and the pure decide() as a table.

No Trio: a fake clock and a seeded ``random.Random`` for Backoff; plain
arguments for decide().
"""

from __future__ import annotations

import random
from typing import Any

import attrs
import pytest

import trio_session as ts
from trio_session._errors import error_for_code
from trio_session._policy import Decision, GiveUp, History, NewSession, Resume, Wait, decide

# -- Backoff -----------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _backoff(policy: ts.RestartPolicy, seed: int = 7) -> tuple[ts.Backoff, _Clock]:
    clock = _Clock()
    return ts.Backoff(policy, clock=clock, rng=random.Random(seed)), clock


@pytest.mark.parametrize("seed", [0, 1, 7, 42, 1234])
def test_backoff_decorrelated_jitter_schedule(seed: int) -> None:
    policy = ts.RestartPolicy(base_delay=0.1, max_delay=2.0, max_restarts=1000, window=60.0)
    backoff, clock = _backoff(policy, seed)
    delays: list[float] = []
    for _ in range(200):
        d = backoff.next_delay()
        assert d is not None
        delays.append(d)
        clock.now += d + 1.0  # well under max_restarts per window: never gives up
    assert delays[0] == 0.0  # the first retry is immediate
    prev = policy.base_delay
    for d in delays[1:]:
        assert policy.base_delay <= d <= min(policy.max_delay, 3 * prev), (d, prev)
        prev = max(d, policy.base_delay)
    assert max(delays) == policy.max_delay  # capped, and the cap is reached
    assert backoff.attempt == 200
    # Deterministic given the rng.
    again, clock2 = _backoff(policy, seed)
    replay = []
    for _ in range(200):
        d2 = again.next_delay()
        assert d2 is not None
        replay.append(d2)
        clock2.now += d2 + 1.0
    assert replay == delays


def test_backoff_intensity_limit_and_window() -> None:
    policy = ts.RestartPolicy(base_delay=0.1, max_delay=1.0, max_restarts=5, window=60.0)
    backoff, clock = _backoff(policy)
    first = []
    for _ in range(policy.max_restarts):
        d = backoff.next_delay()
        assert d is not None
        first.append(d)
        clock.now += 1.0
    assert first[0] == 0.0
    assert backoff.next_delay() is None  # max_restarts failures within the window: give up
    assert backoff.next_delay() is None  # and stays given up while they are in it
    assert backoff.attempt == policy.max_restarts
    # The oldest restart was at 1000.0; once it leaves the window one slot frees.
    clock.now = 1000.0 + policy.window - 0.001
    assert backoff.next_delay() is None
    clock.now = 1000.0 + policy.window
    d = backoff.next_delay()
    assert d is not None and d > 0  # not reset: still backing off, not immediate
    assert backoff.next_delay() is None


def test_progress_does_not_count_but_the_delay_still_grows() -> None:
    # A connection that resumed and moved messages is not a failure, however
    # often the link drops; the backoff still grows on fast flapping.
    policy = ts.RestartPolicy(base_delay=0.1, max_delay=4.0, max_restarts=3, window=60.0)
    backoff, clock = _backoff(policy, seed=3)
    delays = []
    for _ in range(50):  # 50 drops within a few seconds, each after progress
        d = backoff.next_delay(counted=False)
        assert d is not None
        delays.append(d)
        clock.now += 0.05
    assert delays[0] == 0.0 and max(delays) == policy.max_delay
    assert sum(delays[-10:]) > sum(delays[1:11])  # grew
    for _ in range(policy.max_restarts):  # failures without progress still count
        assert backoff.next_delay(counted=True) is not None
    assert backoff.next_delay(counted=True) is None


def test_backoff_resets_only_after_a_stable_connection() -> None:
    policy = ts.RestartPolicy(
        base_delay=0.1, max_delay=1.0, max_restarts=3, window=60.0, stable_after=10.0
    )
    backoff, clock = _backoff(policy)
    assert backoff.next_delay() == 0.0
    d2 = backoff.next_delay()
    assert d2 is not None and d2 >= policy.base_delay
    # A connection that dropped before stable_after resets nothing.
    backoff.connected(clock.now)
    clock.now += policy.stable_after - 0.01
    backoff.disconnected()
    assert backoff.attempt == 2
    d3 = backoff.next_delay()
    assert d3 is not None and d3 >= policy.base_delay
    assert backoff.next_delay() is None  # intensity reached (3 within the window)
    # A connection up for stable_after resets the attempt count and the window.
    backoff.connected(clock.now)
    clock.now += policy.stable_after
    backoff.disconnected()
    assert backoff.attempt == 0
    assert backoff.next_delay() == 0.0  # immediate again
    assert backoff.next_delay() is not None
    assert backoff.next_delay() is not None
    assert backoff.next_delay() is None


def test_backoff_uncounted_attempts_back_off_without_counting() -> None:
    # next_delay(counted=False): e.g. the venue was unreachable (refused).
    policy = ts.RestartPolicy(base_delay=0.1, max_delay=1.0, max_restarts=2, window=60.0)
    backoff, clock = _backoff(policy)
    assert backoff.next_delay() == 0.0  # the connection came up, then failed
    prev = policy.base_delay
    for _ in range(50):  # an outage: many refused attempts, never "gave up"
        d = backoff.next_delay(counted=False)
        assert d is not None
        assert policy.base_delay <= d <= min(policy.max_delay, 3 * prev)
        prev = max(d, policy.base_delay)
        clock.now += d
    assert backoff.attempt == 51
    assert backoff.next_delay() is not None  # second failure in the window
    assert backoff.next_delay() is None  # third: no progress, give up


# -- decide(): a table, no Trio ----------------------------------------------------------------

P = ts.RestartPolicy(max_restarts=3, window=60.0, max_outage=100.0, auth_retries=2)
C = ts.CloseCode


def _history(
    policy: ts.RestartPolicy = P,
    *,
    now: float = 1000.0,
    outage_since: float = 1000.0,
    auth_failures: int = 0,
    delay: float | None = 0.5,
) -> History:
    return History(
        policy=policy, now=now, outage_since=outage_since, auth_failures=auth_failures, delay=delay
    )


def _err(code: ts.CloseCode, *, remote: bool = True) -> ts.SessionError:
    return error_for_code(code, "", remote=remote)


@pytest.mark.parametrize(
    ("error", "history", "expected"),
    [
        # resumable faults: resume after the backoff's delay
        (ts.ConnectionLost("reset"), _history(), Resume(0.5)),
        (ts.HeartbeatTimeout("silent"), _history(delay=0.0), Resume(0.0)),
        (_err(C.SEQUENCE_ERROR), _history(), Resume(0.5)),
        (ts.HandshakeTimeout("slow"), _history(), Resume(0.5)),
        # the logical session is gone: a new one
        (_err(C.SLOW_CONSUMER), _history(), NewSession(0.5)),
        (_err(C.SESSION_EXPIRED), _history(), NewSession(0.5)),
        (_err(C.RESUME_REFUSED), _history(), NewSession(0.5)),
        (_err(C.HANDLER_ERROR), _history(), NewSession(0.5)),
        (_err(C.GOING_AWAY), _history(), NewSession(0.5)),
        # the venue asks us to wait: at least retry_after
        (ts.RateLimited("busy", retry_after=2.0), _history(), Wait(2.0)),
        (ts.RateLimited("busy", retry_after=0.1), _history(), Wait(0.5)),
        # AUTH_FAILED on a reconnect: retried auth_retries times in a row
        (_err(C.AUTH_FAILED), _history(auth_failures=0), Resume(0.5)),
        (_err(C.AUTH_FAILED), _history(auth_failures=1), Resume(0.5)),
    ],
)
def test_decide_retries(error: ts.SessionError, history: History, expected: Decision) -> None:
    assert decide(error, history) == expected


@pytest.mark.parametrize(
    ("error", "history"),
    [
        (_err(C.AUTH_FAILED), _history(auth_failures=2)),  # retries used up
        (_err(C.UNKNOWN_KEY), _history()),
        (_err(C.KEY_REVOKED), _history()),
        (_err(C.VERSION_MISMATCH), _history()),
        (_err(C.BINDER_REUSED), _history()),
        (_err(C.WRONG_ROLE), _history()),
        (_err(C.NORMAL), _history()),  # the peer logged us out
        (ts.ConnectionLost("reset"), _history(attrs.evolve(P, enabled=False))),
        (_err(C.RATE_LIMITED), _history(attrs.evolve(P, enabled=False))),
    ],
)
def test_decide_gives_up_with_the_error_itself(error: ts.SessionError, history: History) -> None:
    decision = decide(error, history)
    assert decision == GiveUp(error) and isinstance(decision, GiveUp)
    assert decision.error is error


def test_decide_gives_up_when_the_restart_intensity_is_exceeded() -> None:
    err = ts.ConnectionLost("reset")
    decision = decide(err, _history(delay=None))
    assert isinstance(decision, GiveUp)
    gave_up = decision.error
    assert isinstance(gave_up, ts.ConnectionLost) and gave_up is not err
    assert (
        str(gave_up) == "gave up: more than 3 attempts without progress within 60.0s; last error: "
        "ConnectionLost: reset"
    )
    assert gave_up.__cause__ is err


@pytest.mark.parametrize(
    ("error", "outage", "delay", "gives_up"),
    [
        (ts.ConnectionLost("x"), 99.0, 0.5, False),
        (ts.ConnectionLost("x"), 99.5, 0.5, False),  # exactly max_outage: still tried
        (ts.ConnectionLost("x"), 99.6, 0.5, True),
        (_err(C.SLOW_CONSUMER), 99.6, 0.5, True),
        (ts.RateLimited("busy", retry_after=5.0), 94.0, 0.5, False),
        (ts.RateLimited("busy", retry_after=5.0), 96.0, 0.5, True),  # the venue's delay counts
    ],
)
def test_decide_gives_up_rather_than_sleep_past_max_outage(
    error: ts.SessionError, outage: float, delay: float, gives_up: bool
) -> None:
    history = _history(now=1000.0 + outage, outage_since=1000.0, delay=delay)
    decision = decide(error, history)
    if gives_up:
        assert isinstance(decision, GiveUp)
        assert str(decision.error) == "no connection for 100.0s; giving up"
        assert isinstance(decision.error, ts.ConnectionLost)
        assert decision.error.__cause__ is error
    else:
        assert not isinstance(decision, GiveUp)


def test_decide_without_max_outage_never_gives_up_on_a_long_outage() -> None:
    policy = attrs.evolve(P, max_outage=None)
    history = _history(policy, now=1e9, outage_since=0.0)
    assert decide(ts.ConnectionLost("x"), history) == Resume(0.5)


def test_decide_is_pure() -> None:
    err = _err(C.AUTH_FAILED)
    history = _history(auth_failures=1)
    snapshot = (err.code, err.remote, err.__cause__, err.__context__)
    assert decide(err, history) == decide(err, history) == Resume(0.5)
    assert (err.code, err.remote, err.__cause__, err.__context__) == snapshot
    assert history == _history(auth_failures=1)  # frozen; nothing to mutate anyway
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        history.auth_failures = 0  # type: ignore[misc]


@pytest.mark.parametrize(
    "field", ["base_delay", "max_delay", "max_restarts", "window", "stable_after", "auth_retries"]
)
@pytest.mark.parametrize("value", [-1, float("nan")])
def test_restart_policy_rejects_negative_values(field: str, value: float) -> None:
    options: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=rf"RestartPolicy\.{field} must be >= 0"):
        ts.RestartPolicy(**options)


def test_restart_policy_defaults() -> None:
    p = ts.RestartPolicy()
    assert (p.enabled, p.base_delay, p.max_delay, p.max_restarts, p.window) == (
        True,
        0.05,
        5.0,
        20,
        60.0,
    )
    assert (p.stable_after, p.max_outage, p.auth_retries) == (10.0, 300.0, 2)
