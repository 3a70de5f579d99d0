"""The error hierarchy: one class per failure a user handles, aligned with the close codes.

Pure tests (no Trio): what a received close code turns into, which classes are
closes, and that the wire values never move.
"""

from __future__ import annotations

import pytest

import trio_session as ts
from trio_session._errors import error_for_code, is_clean_close

C = ts.CloseCode


def test_close_code_values_are_the_wire_values() -> None:
    # Part of the protocol (docs/protocol.md, "Close codes"): never renumbered.
    assert {c.name: int(c) for c in C} == {
        "NORMAL": 0,
        "GOING_AWAY": 1,
        "PROTOCOL_ERROR": 100,
        "INTEGRITY_FAILURE": 101,
        "SEQUENCE_ERROR": 102,
        "HEARTBEAT_TIMEOUT": 103,
        "REKEY_TIMEOUT": 104,
        "CONNECTION_LOST": 105,
        "HANDSHAKE_TIMEOUT": 106,
        "RESUME_REFUSED": 200,
        "REPLAY_OVERFLOW": 201,
        "SLOW_CONSUMER": 202,
        "HANDLER_ERROR": 203,
        "INTERNAL_ERROR": 204,
        "SESSION_EXPIRED": 205,
        "MEMORY_BUDGET": 206,
        "CONTROL_FLOOD": 207,
        "AUTH_FAILED": 300,
        "UNKNOWN_KEY": 301,
        "KEY_REVOKED": 302,
        "VERSION_MISMATCH": 303,
        "BINDER_REUSED": 304,
        "WRONG_ROLE": 305,
        "RATE_LIMITED": 400,
        "SESSION_LIMIT": 401,
    }


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (C.NORMAL, ts.SessionClosed),
        (C.GOING_AWAY, ts.SessionClosed),
        (C.PROTOCOL_ERROR, ts.SessionClosed),
        (C.HEARTBEAT_TIMEOUT, ts.SessionClosed),
        (C.HANDLER_ERROR, ts.SessionClosed),
        (C.INTERNAL_ERROR, ts.SessionClosed),
        (C.REPLAY_OVERFLOW, ts.SessionClosed),
        (C.RESUME_REFUSED, ts.ResumeRefused),
        (C.SLOW_CONSUMER, ts.SlowConsumer),
        (C.SESSION_EXPIRED, ts.SessionExpired),
        (C.MEMORY_BUDGET, ts.MemoryBudgetExceeded),
        (C.CONTROL_FLOOD, ts.ControlFlood),
        (C.SESSION_LIMIT, ts.TooManySessions),
        (C.AUTH_FAILED, ts.AuthenticationError),
        (C.UNKNOWN_KEY, ts.AuthenticationError),
        (C.KEY_REVOKED, ts.AuthenticationError),
        (C.VERSION_MISMATCH, ts.AuthenticationError),
        (C.BINDER_REUSED, ts.AuthenticationError),
        (C.WRONG_ROLE, ts.AuthenticationError),
        (C.RATE_LIMITED, ts.RateLimited),
    ],
)
def test_received_code_becomes_its_class(code: ts.CloseCode, cls: type[ts.SessionError]) -> None:
    err = error_for_code(code, "why", remote=True, retry_after=2.5)
    assert type(err) is cls
    assert err.code is code and err.remote
    assert err.category is code.category
    assert code.name in str(err)


def test_rate_limited_carries_retry_after_with_a_default() -> None:
    limited = error_for_code(C.RATE_LIMITED, "", remote=True, retry_after=2.5)
    assert isinstance(limited, ts.RateLimited) and limited.retry_after == 2.5
    default = error_for_code(C.RATE_LIMITED, "", remote=True)
    assert isinstance(default, ts.RateLimited) and default.retry_after == 1.0
    # A refused session at the per-key cap is rate limited too: wait, then retry.
    limit = error_for_code(C.SESSION_LIMIT, "", remote=True, retry_after=3.0)
    assert isinstance(limit, ts.TooManySessions) and isinstance(limit, ts.RateLimited)
    assert limit.retry_after == 3.0 and limit.category is ts.Category.RATE_LIMITED


CLOSE_CLASSES = {
    ts.SlowConsumer: C.SLOW_CONSUMER,
    ts.SessionExpired: C.SESSION_EXPIRED,
    ts.MemoryBudgetExceeded: C.MEMORY_BUDGET,
    ts.ControlFlood: C.CONTROL_FLOOD,
}


@pytest.mark.parametrize("cls", list(CLOSE_CLASSES))
def test_new_close_classes_are_session_closed_and_keep_their_code(
    cls: type[ts.SessionClosed],
) -> None:
    # Subclasses of SessionClosed (so of SessionError): existing handlers keep working.
    local = cls("venue side")
    assert isinstance(local, ts.SessionClosed) and isinstance(local, ts.SessionError)
    assert not local.remote and local.reason == ""
    assert local.code is CLOSE_CLASSES[cls]
    assert local.category is ts.Category.REAUTHENTICATE
    assert not is_clean_close(local)
    received = error_for_code(local.code, "because", remote=True)
    assert isinstance(received, cls) and received.reason == "because"


def test_clean_close_is_a_normal_session_closed_only() -> None:
    assert is_clean_close(ts.SessionClosed("bye", code=C.NORMAL, remote=True))
    assert is_clean_close(ts.SessionClosed("bye"))
    assert not is_clean_close(ts.SessionClosed("x", code=C.HANDLER_ERROR))
    assert not is_clean_close(ts.SessionError("x", code=C.NORMAL))
    assert not is_clean_close(ts.ConnectionLost("x"))


def test_invalid_message_lives_with_the_other_errors() -> None:
    err = ts.InvalidMessage("bad", seq=7)
    assert err.seq == 7 and err.remote and err.code is C.PROTOCOL_ERROR
    assert type(err).__module__ == "trio_session"
    assert repr(type(err)) == "<class 'trio_session.InvalidMessage'>"


def test_unknown_codes_degrade_by_range() -> None:
    assert C.from_wire(150) is C.PROTOCOL_ERROR
    assert C.from_wire(250) is C.INTERNAL_ERROR
    assert C.from_wire(350) is C.AUTH_FAILED
    assert C.from_wire(450) is C.RATE_LIMITED
    assert C.from_wire(999) is C.INTERNAL_ERROR
    assert C.from_wire(50) is C.INTERNAL_ERROR
