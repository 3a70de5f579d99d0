"""The library's structured lifecycle records: what an operator's log shows.

Every record has ``event``, ``session_id`` and a ``fields`` dict (role, key id,
the event's values), lives under a ``trio_session.`` logger, and never carries
exception-group text.  Mock clock and in-memory venues, except the refusals,
which need a real listener.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
import trio.testing

import trio_session as ts
from trio_session.testing import memory_venue

from .runtime_helpers import OTHER, PARTICIPANT, VENUE, Echo, registry, url, venue


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, name: str, role: str | None = None) -> list[logging.LogRecord]:
        return [
            r
            for r in self.records
            if getattr(r, "event", None) == name and (role is None or fields(r).get("role") == role)
        ]


@contextmanager
def recording() -> Iterator[Records]:
    handler = Records()
    lib = logging.getLogger("trio_session")
    old = lib.level
    lib.addHandler(handler)
    lib.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        lib.removeHandler(handler)
        lib.setLevel(old)


def fields(record: logging.LogRecord) -> dict[str, Any]:
    value = getattr(record, "fields", {})
    assert isinstance(value, dict)
    return value


def _check_shape(records: list[logging.LogRecord]) -> None:
    for r in records:
        assert r.name.startswith("trio_session."), r.name
        assert "ExceptionGroup" not in r.getMessage(), r.getMessage()
        if getattr(r, "event", None) is not None:
            assert isinstance(getattr(r, "session_id", None), str), r.__dict__
            assert isinstance(getattr(r, "fields", None), dict), r.__dict__


async def test_a_resumed_outage_and_a_logout_on_both_sides(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with recording() as log, trio.fail_after(60):
        async with memory_venue(Echo(), VENUE, registry()) as mv:
            async with mv.connect(PARTICIPANT) as session:
                sid = session.session_id
                await session.send(b"x")
                await session.receive()
                mv.break_all()
                mv.refuse_connections()
                await trio.sleep(3)
                mv.refuse_connections(False)
                await session.wait_state(ts.State.LIVE)
            await trio.sleep(1)
    _check_shape(log.records)
    for role in ("participant", "venue"):
        (login,) = log.events("login", role)
        assert getattr(login, "session_id", None) == sid
        assert fields(login)["key_id"] == PARTICIPANT.key_id
        (stale,) = log.events("stale", role)
        assert stale.levelno == logging.WARNING
        assert log.events("resume", role) and log.events("logout", role)
    (live,) = log.events("live", "participant")
    assert fields(live)["resumed"] and fields(live)["outage_s"] >= 3
    resuming = log.events("resuming", "participant")
    assert [r.levelno for r in resuming][:2] == [logging.INFO, logging.DEBUG]  # first loudly
    reconnecting = log.events("reconnecting")
    assert reconnecting[0].levelno == logging.INFO
    assert all(r.levelno == logging.DEBUG for r in reconnecting[1:])


async def test_dead_mans_switch_reset_and_slow_consumer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = ts.SessionConfig(resume_ttl=3.0, slow_consumer_timeout=2.0, inbound_capacity=4)

    async def flood(session: ts.Session) -> None:
        for i in range(10_000):
            await session.send(b"%d" % i)

    with recording() as log, trio.fail_after(120):
        async with (
            memory_venue(Echo(), VENUE, registry(), config=config) as mv,
            mv.connect(PARTICIPANT, config=config) as session,
        ):
            await session.send(b"order")
            await session.receive()
            mv.break_all()
            mv.refuse_connections()
            await trio.sleep(config.resume_ttl + 1)
            mv.refuse_connections(False)
            with pytest.raises(ts.SessionReset):
                await session.receive()
        async with (
            memory_venue(flood, VENUE, registry(), config=config) as mv,
            mv.connect(PARTICIPANT, config=config),
        ):
            await trio.sleep(5)  # never reads
    _check_shape(log.records)
    (dms, *_) = log.events("dead_mans_switch")
    assert fields(dms)["code"] == "SESSION_EXPIRED" and "cancel its orders" in dms.getMessage()
    reset, *_ = log.events("reset", "participant")  # each slow-consumer close resets too
    assert reset.levelno == logging.WARNING and fields(reset)["in_doubt"] == 0
    assert log.events("reset", "venue")  # the venue saw a resume of a session it had no more
    slow, *_ = log.events("slow_consumer")
    assert "slow_consumer_timeout" in slow.getMessage()


async def test_rekeys_are_logged_with_counts(autojump_clock: trio.testing.MockClock) -> None:
    config = ts.SessionConfig(rekey_interval=2.0, reject_after=3.0, rekey_jitter=0.0)
    with recording() as log, trio.fail_after(60):
        async with (
            memory_venue(Echo(), VENUE, registry(), config=config) as mv,
            mv.connect(PARTICIPANT, config=config),
        ):
            await trio.sleep(7)
    rekeys = log.events("rekey")
    assert rekeys and all(r.levelno == logging.DEBUG for r in rekeys)
    assert max(fields(r)["rekeys"] for r in rekeys) >= 2


async def test_refusals_name_the_key_and_the_fix_and_a_flood_is_rate_limited() -> None:
    config = ts.SessionConfig(handshake_rate_per_key=1000, handshake_rate_per_address=1000)
    with recording() as log, trio.fail_after(30):
        async with venue(config=config) as server:
            for _ in range(30):  # an unknown key, again and again
                with pytest.raises(ts.AuthenticationError):
                    async with ts.connect(url(server), OTHER, VENUE.public_key):
                        pass
            stats = server.stats()
    _check_shape(log.records)
    refused = log.events("handshake_refused")
    assert len(refused) == 1  # 30 refusals, one record per 10 s and key
    text = refused[0].getMessage()
    assert f"key id {OTHER.key_id!r}" in text and "UNKNOWN_KEY" in text
    assert f"trio-session registry add REGISTRY {OTHER.key_id}" in text
    assert stats.handshake_refusals == {"UNKNOWN_KEY": 30}


async def test_rate_limited_refusals_are_logged_and_counted() -> None:
    config = ts.SessionConfig(handshake_rate_per_key=0.01)
    with recording() as log, trio.fail_after(30):
        async with venue(config=config) as server:
            async with ts.connect(url(server), PARTICIPANT, VENUE.public_key):
                pass
            for _ in range(5):
                with pytest.raises(ts.RateLimited):
                    async with ts.connect(url(server), PARTICIPANT, VENUE.public_key):
                        pass
            stats = server.stats()
    (limited,) = log.events("rate_limited")
    assert limited.levelno == logging.INFO and "RATE_LIMITED" in limited.getMessage()
    assert stats.handshake_refusals == {"RATE_LIMITED": 5}
