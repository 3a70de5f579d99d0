"""Admission (``_admission.py``): the token buckets that run before any crypto."""

from __future__ import annotations

import contextlib

import pytest

import trio_session as ts
from trio_session._admission import Admission, TokenBuckets, host_of


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
    admission.admit_unverified("alice", "10.0.0.1:5000")
    admission.admit_unverified("alice", "10.0.0.1:5001")
    with pytest.raises(ts.RateLimited):
        admission.admit_unverified("alice", "10.0.0.1:5002")  # same key, same host
    admission.admit_unverified("bob", "10.0.0.1:5000")


def test_claims_from_other_addresses_never_spend_the_owners_budget() -> None:
    """An attacker claiming alice's key id from its own addresses exhausts only its
    own (key, address) budgets: alice's proven resumes and her unverified attempts
    from her address are admitted all the same."""
    clock = _Clock()
    admission = Admission(ts.SessionConfig(handshake_rate_per_key=2.0), clock)
    for i in range(100):
        with contextlib.suppress(ts.RateLimited):
            admission.admit_unverified("alice", f"10.9.{i % 7}.1:4000")
    admission.admit_verified("alice")  # a resume whose binder verified
    admission.admit_unverified("alice", "192.0.2.10:5000")  # alice from her own address


def test_the_verified_budget_is_spent_only_by_proven_handshakes() -> None:
    clock = _Clock()
    admission = Admission(ts.SessionConfig(handshake_rate_per_key=2.0), clock)
    admission.verified_handshake("alice")
    admission.verified_handshake("alice")  # two new sessions: the budget is empty
    with pytest.raises(ts.RateLimited) as info:  # refused before the venue signs
        admission.admit_unverified("alice", "192.0.2.10:5000")
    assert info.value.retry_after == pytest.approx(0.5)
    with pytest.raises(ts.RateLimited):
        admission.admit_verified("alice")
    admission.verified_handshake("alice")  # charging an empty bucket keeps it empty
    clock.now += 0.5
    admission.admit_verified("alice")
    admission.admit_unverified("bob", "192.0.2.10:5000")


def test_available_does_not_take_and_charge_never_goes_negative() -> None:
    clock = _Clock()
    buckets = TokenBuckets(1.0, clock)
    assert buckets.available("a") == 0.0
    assert buckets.available("a") == 0.0  # nothing taken
    buckets.charge("a")
    buckets.charge("a")
    assert buckets.available("a") == pytest.approx(1.0)
    clock.now += 1.0
    assert buckets.take("a") == 0.0


def test_host_of_drops_the_port() -> None:
    assert host_of("10.0.0.1:5000") == "10.0.0.1"
    assert host_of("[::1]:443") == "[::1]"
