"""Admission (``_admission.py``): the token buckets that run before any crypto."""

from __future__ import annotations

import pytest

import trio_session as ts
from trio_session._admission import Admission, TokenBuckets


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    clock = _Clock()
    buckets = TokenBuckets(2.0, clock, burst=3)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token needs 1/rate seconds
    assert buckets.take("b") == 0.0  # keys are independent
    clock.now += 0.25
    assert buckets.take("a") == pytest.approx(0.25)
    clock.now += 0.25
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0


def test_default_burst_is_one_seconds_worth_and_at_least_one() -> None:
    assert TokenBuckets(5.0, _Clock()).burst == 5.0
    assert TokenBuckets(0.2, _Clock()).burst == 1.0


def test_idle_full_buckets_are_pruned_past_max_keys() -> None:
    clock = _Clock()
    buckets = TokenBuckets(1.0, clock, max_keys=3)
    for key in range(3):
        buckets.take(key)
    clock.now += 1.0  # all full again
    buckets.take("fresh")  # a fourth key: the idle full ones go
    assert set(buckets._buckets) == {"fresh"}
    buckets.take("x")
    buckets.take("y")
    buckets.take("z")  # four recent keys: nothing is idle long enough to go
    assert len(buckets._buckets) == 4


def test_admission_limits_per_host_and_per_key() -> None:
    clock = _Clock()
    config = ts.SessionConfig(handshake_rate_per_address=1.0, handshake_rate_per_key=2.0)
    admission = Admission(config, clock)
    admission.admit_address("10.0.0.1:5000")
    with pytest.raises(ts.RateLimited) as info:
        admission.admit_address("10.0.0.1:5001")  # same host, other port
    assert info.value.retry_after == pytest.approx(1.0)
    assert info.value.code is ts.CloseCode.RATE_LIMITED and not info.value.remote
    admission.admit_address("[::1]:5000")
    admission.admit_key("alice")
    admission.admit_key("alice")
    with pytest.raises(ts.RateLimited):
        admission.admit_key("alice")
    admission.admit_key("bob")
