"""SessionConfig: validated once, immutable, errors that name the field."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest

import trio_session as ts

FIELDS = attrs.fields(ts.SessionConfig)
#: The one field that is not a number.
NON_NUMBER = {"modes"}
FLOAT_FIELDS = [f.name for f in FIELDS if isinstance(f.default, float)]
INT_FIELDS = [f.name for f in FIELDS if type(f.default) is int]
#: Fields where zero is meaningful (no jitter); every other number must be > 0.
ZERO_ALLOWED = {"rekey_jitter", "heartbeat_jitter"}

# Values that are wrong for any number-valued field, with the error they must raise.
BAD_FOR_ANY_NUMBER: list[tuple[object, type[Exception]]] = [
    (-1, ValueError),
    (-0.5, ValueError),
    (math.nan, ValueError),
    (math.inf, ValueError),
    (-math.inf, ValueError),
    ("1", TypeError),
    (None, TypeError),
    (True, TypeError),
    (b"1", TypeError),
    ([1], TypeError),
]
BAD_FOR_INT: list[tuple[object, type[Exception]]] = [
    (0, ValueError),
    (-1, ValueError),
    (1.0, TypeError),
    (2.5, TypeError),
    ("8", TypeError),
    (None, TypeError),
    (True, TypeError),
    (False, TypeError),
]


def _kw(name: str, value: object) -> dict[str, Any]:
    # Deliberately ill-typed keyword arguments, built dynamically per field.
    return {name: value}


def test_every_field_is_a_validated_number() -> None:
    assert FLOAT_FIELDS
    assert INT_FIELDS
    assert len(FLOAT_FIELDS) + len(INT_FIELDS) + len(NON_NUMBER) == len(FIELDS)
    for f in FIELDS:
        assert f.validator is not None, f.name
        assert f.kw_only, f.name


def test_defaults_construct_and_are_sane() -> None:
    c = ts.SessionConfig()
    assert c.heartbeat_interval < c.heartbeat_timeout
    # A session dropped for silence must still be resumable afterwards.
    assert c.resume_ttl > c.heartbeat_timeout
    assert c.rekey_interval < c.reject_after
    assert c.ratchet_interval < c.rekey_interval
    assert 0 <= c.rekey_jitter < c.rekey_interval
    assert c.max_message_size < c.max_frame_size
    assert c.max_batch_bytes < c.max_frame_size
    assert c.max_message_size <= c.replay_max_bytes
    assert c.outbound_capacity <= c.replay_max_messages
    assert c.handshake_timeout <= c.heartbeat_timeout
    assert c.close_timeout <= c.handshake_timeout
    for name in FLOAT_FIELDS + INT_FIELDS:
        value = getattr(c, name)
        assert math.isfinite(value), name
        assert value > 0 or name in ZERO_ALLOWED, name


@pytest.mark.parametrize("name", FLOAT_FIELDS)
@pytest.mark.parametrize(("value", "exc"), BAD_FOR_ANY_NUMBER)
def test_float_field_rejects(name: str, value: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match=rf"SessionConfig\.{name}\b"):
        ts.SessionConfig(**_kw(name, value))


@pytest.mark.parametrize("name", [n for n in FLOAT_FIELDS if n not in ZERO_ALLOWED])
def test_float_field_rejects_zero(name: str) -> None:
    with pytest.raises(ValueError, match=rf"SessionConfig\.{name}\b"):
        ts.SessionConfig(**_kw(name, 0.0))
    with pytest.raises(ValueError, match=rf"SessionConfig\.{name}\b"):
        ts.SessionConfig(**_kw(name, 0))


def test_zero_jitter_is_allowed() -> None:
    assert ts.SessionConfig(rekey_jitter=0).rekey_jitter == 0
    assert ts.SessionConfig(heartbeat_jitter=0).heartbeat_jitter == 0


@pytest.mark.parametrize("name", INT_FIELDS)
@pytest.mark.parametrize(("value", "exc"), BAD_FOR_INT)
def test_int_field_rejects(name: str, value: object, exc: type[Exception]) -> None:
    with pytest.raises(exc, match=rf"SessionConfig\.{name}\b"):
        ts.SessionConfig(**_kw(name, value))


def test_float_fields_accept_ints() -> None:
    c = ts.SessionConfig(heartbeat_interval=1, heartbeat_timeout=3)
    assert (c.heartbeat_interval, c.heartbeat_timeout) == (1, 3)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"heartbeat_interval": 10.0, "heartbeat_timeout": 10.0}, "heartbeat_timeout"),
        ({"heartbeat_interval": 10.0, "heartbeat_timeout": 5.0}, "heartbeat_timeout"),
        ({"rekey_interval": 100.0, "reject_after": 100.0}, "reject_after"),
        ({"rekey_interval": 100.0, "reject_after": 50.0}, "reject_after"),
        ({"max_frame_size": 1024, "max_message_size": 1024}, "max_message_size"),
        ({"max_frame_size": 1024, "max_batch_bytes": 1000}, "max_batch_bytes"),
    ],
)
def test_inconsistent_combinations_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    small = {"max_message_size": 512, "max_batch_bytes": 512}
    if "max_frame_size" in kwargs:
        kwargs = {**small, **kwargs}
    with pytest.raises(ValueError, match=rf"SessionConfig\.{field}\b"):
        ts.SessionConfig(**kwargs)


def test_frozen() -> None:
    c = ts.SessionConfig()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        c.heartbeat_interval = 1.0  # type: ignore[misc]
    assert c.heartbeat_interval == ts.SessionConfig().heartbeat_interval  # unchanged


def test_keyword_only() -> None:
    with pytest.raises(TypeError):
        ts.SessionConfig(1.0)  # type: ignore[call-arg]


def test_unknown_option_is_rejected() -> None:
    with pytest.raises(TypeError, match="heartbeat_intervall"):
        ts.SessionConfig(heartbeat_intervall=1.0)  # type: ignore[call-arg]


def test_value_semantics_and_evolve_revalidates() -> None:
    a = ts.SessionConfig()
    b = ts.SessionConfig()
    assert a == b
    assert hash(a) == hash(b)
    c = attrs.evolve(a, heartbeat_interval=1.0, heartbeat_timeout=3.0)
    assert c != a
    assert c.heartbeat_timeout == 3.0
    assert a.heartbeat_timeout == ts.SessionConfig().heartbeat_timeout
    with pytest.raises(ValueError, match=r"SessionConfig\.heartbeat_interval\b"):
        attrs.evolve(a, heartbeat_interval=-1.0)


def test_heartbeat_jitter_must_stay_below_one() -> None:
    with pytest.raises(ValueError, match="heartbeat_jitter"):
        ts.SessionConfig(heartbeat_jitter=1.0)


def test_modes_default_to_the_transport_and_accept_any_sequence() -> None:
    c = ts.SessionConfig()
    assert c.modes is None
    assert ts.SessionConfig(modes=["aead", "mac"]).modes == ("aead", "mac")
    assert ts.SessionConfig(modes="aead").modes == ("aead",)
    # A participant: "aead" only over ws://, both (mac first) otherwise.
    assert c.for_participant("ws://venue:1/").modes == ("aead",)
    assert c.for_participant("WS://venue:1/").modes == ("aead",)
    assert c.for_participant("wss://venue:1/").modes == ("mac", "aead")
    assert c.for_participant(None).modes == ("mac", "aead")
    # A venue: aead first without TLS; with TLS the participant's order (None).
    assert c.for_venue(tls=False).modes == ("aead", "mac")
    assert c.for_venue(tls=True).modes is None
    # An explicit choice is never overridden.
    explicit = ts.SessionConfig(modes=("mac",))
    assert explicit.for_participant("ws://venue:1/") is explicit
    assert explicit.for_venue(tls=False) is explicit


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ((), "at least one mode"),
        (("mac", "tls"), "unknown mode 'tls'"),
        (("aead", "aead"), "lists a mode twice"),
    ],
)
def test_bad_modes_name_the_field(value: object, match: str) -> None:
    with pytest.raises(ValueError, match=rf"SessionConfig\.modes.*{match}"):
        ts.SessionConfig(**_kw("modes", value))


def test_modes_that_are_not_names_name_the_field() -> None:
    with pytest.raises(TypeError, match=r"SessionConfig\.modes must be mode names"):
        ts.SessionConfig(**_kw("modes", 5))
    with pytest.raises(ValueError, match=r"SessionConfig\.modes: unknown mode 1"):
        ts.SessionConfig(**_kw("modes", [1]))
