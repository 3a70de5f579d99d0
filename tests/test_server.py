"""The venue (``_server.py``): ``serve()``, admission, handlers, resume TTL and end hooks.

Admission and handler isolation over loopback; the resume TTL and the dead
man's switch under a mock clock against :func:`trio_session.testing.memory_venue`
(the same venue runner as ``serve()``).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager

import pytest
import trio
import trio.testing

import trio_session as ts
from trio_session._transport import MemoryTransport, Transport
from trio_session.testing import memory_venue

from .runtime_helpers import (
    FAST,
    OTHER,
    PARTICIPANT,
    STEP,
    VENUE,
    Echo,
    participant,
    registry,
    state_of,
    url,
    venue,
)

# -- admission and authentication --------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "reg_change", "expected_code"),
    [
        ("unknown", None, ts.CloseCode.UNKNOWN_KEY),
        ("revoked", "revoke", ts.CloseCode.KEY_REVOKED),
    ],
)
async def test_unknown_and_revoked_keys_are_refused_and_server_keeps_serving(
    who: str, reg_change: str | None, expected_code: ts.CloseCode
) -> None:
    reg = registry()
    reg.add(OTHER.key_id, OTHER.public_key)
    if reg_change == "revoke":
        reg.revoke(OTHER.key_id)
    ident = ts.Identity.generate() if who == "unknown" else OTHER
    with trio.fail_after(20):
        async with venue(reg=reg) as server:
            with pytest.raises(ts.AuthenticationError) as info:
                async with ts.connect(url(server), ident, VENUE.public_key):
                    pytest.fail("connected with a refused key")
            assert info.value.code is expected_code and info.value.remote
            async with ts.connect(url(server), PARTICIPANT, VENUE.public_key) as session:
                await session.send(b"still serving")
                assert await session.receive() == b"still serving"


async def test_handshake_rate_limit_per_key() -> None:
    cfg = ts.SessionConfig(handshake_rate_per_key=2.0)
    with trio.fail_after(20):
        async with venue(config=cfg) as server:
            outcomes: list[str] = []
            for _ in range(4):
                try:
                    async with ts.connect(
                        url(server), PARTICIPANT, VENUE.public_key, config=cfg
                    ) as session:
                        outcomes.append("ok")
                        del session
                except ts.RateLimited as exc:
                    assert exc.retry_after > 0
                    outcomes.append("limited")
            assert outcomes[:2] == ["ok", "ok"] and "limited" in outcomes[2:]


async def test_revoking_a_key_ends_its_live_sessions() -> None:
    reg = registry()
    with trio.fail_after(20):
        async with (
            venue(reg=reg) as server,
            ts.connect(url(server), PARTICIPANT, VENUE.public_key) as session,
        ):
            await session.send(b"a")
            assert await session.receive() == b"a"
            reg.revoke(PARTICIPANT.key_id)
            with pytest.raises(ts.AuthenticationError) as info:
                await session.receive()
            assert info.value.code is ts.CloseCode.KEY_REVOKED
            assert session.state is ts.State.CLOSED


# -- handlers ----------------------------------------------------------------------------------


async def test_handler_that_raises_ends_only_its_session(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def handler(session: ts.Session) -> None:
        nonlocal calls
        calls += 1
        first = await session.receive()
        if first == b"boom":
            raise RuntimeError("handler bug")
        await session.send(b"ok:" + first)
        async for _ in session:
            pass

    with trio.fail_after(20):
        async with venue(handler) as server:
            async with ts.connect(
                url(server), PARTICIPANT, VENUE.public_key, restart=ts.RestartPolicy(enabled=False)
            ) as bad:
                await bad.send(b"boom")
                with pytest.raises(ts.SessionError) as info:
                    await bad.receive()
                assert info.value.code is ts.CloseCode.HANDLER_ERROR
                assert info.value.remote
            async with ts.connect(url(server), PARTICIPANT, VENUE.public_key) as good:
                await good.send(b"hello")
                assert await good.receive() == b"ok:hello"
    assert calls == 2
    assert any(
        "handler failed" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR
    )


async def test_graceful_logout_reaches_handler_as_end_of_iteration() -> None:
    ended = trio.Event()
    seen: list[bytes] = []
    logouts: list[str | None] = []

    async def handler(session: ts.Session) -> None:
        async for m in session:
            seen.append(m)
        ended.set()

    with trio.fail_after(20):
        async with venue(handler, on_logout=lambda s: logouts.append(s.session_id)) as server:
            async with ts.connect(url(server), PARTICIPANT, VENUE.public_key) as session:
                for i in range(50):
                    await session.send(b"%d" % i)
                sid = session.session_id
            await ended.wait()
            await trio.testing.wait_all_tasks_blocked()
    # aclose flushed everything before CLOSE: nothing lost on a graceful logout.
    assert seen == [b"%d" % i for i in range(50)]
    assert logouts == [sid]


# -- the dead man's switch and logout ----------------------------------------------------------


@pytest.mark.parametrize("how", ["cancelled", "broken"])
async def test_dead_mans_switch_fires_once_after_resume_ttl(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    cfg = ts.SessionConfig(resume_ttl=7.0)
    handler = Echo()
    lost: list[tuple[str | None, float]] = []
    logouts: list[str | None] = []
    with trio.fail_after(300):
        async with memory_venue(
            handler,
            VENUE,
            registry(),
            config=cfg,
            on_session_lost=lambda s: lost.append((s.session_id, trio.current_time())),
            on_logout=lambda s: logouts.append(s.session_id),
        ) as venue:
            with trio.CancelScope() as scope:
                async with participant(venue, restart=FAST, config=cfg) as session:
                    await session.send(b"order")
                    assert await session.receive() == b"order"
                    sid = session.session_id
                    (vs,) = handler.sessions
                    venue.refuse_connections(True)
                    dropped_at = trio.current_time()
                    if how == "cancelled":
                        scope.cancel()
                        await trio.sleep_forever()
                    venue.break_all()
                    assert await vs.wait_state(ts.State.STALE) is ts.State.STALE
                    await trio.sleep(cfg.resume_ttl * 3)  # still retrying, refused
                    assert state_of(session) in (ts.State.STALE, ts.State.RESUMING)
            if how == "cancelled":
                assert scope.cancelled_caught
                assert vs.state is not ts.State.CLOSED  # kept for resume
                await trio.sleep(cfg.resume_ttl * 3)
    assert len(lost) == 1, lost
    (lost_sid, fired_at) = lost[0]
    assert lost_sid == sid
    assert cfg.resume_ttl <= fired_at - dropped_at <= cfg.resume_ttl + STEP
    assert logouts == []
    assert vs.state is ts.State.CLOSED
    assert vs.error is not None and vs.error.code is ts.CloseCode.SESSION_EXPIRED
    assert isinstance(vs.error, ts.SessionExpired) and not vs.error.remote
    assert len(handler.ended) == 1
    ended = handler.ended[0]
    assert isinstance(ended, ts.SessionError)
    assert ended.code is ts.CloseCode.SESSION_EXPIRED


async def test_graceful_logout_fires_on_logout_not_dead_mans_switch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cfg = ts.SessionConfig(resume_ttl=7.0)
    handler = Echo(echo=False)
    lost: list[str | None] = []
    logouts: list[str | None] = []
    with trio.fail_after(300):
        async with memory_venue(
            handler,
            VENUE,
            registry(),
            config=cfg,
            on_session_lost=lambda s: lost.append(s.session_id),
            on_logout=lambda s: logouts.append(s.session_id),
        ) as venue:
            async with participant(venue, config=cfg) as session:
                for i in range(20):
                    await session.send(b"%d" % i)
                sid = session.session_id
            assert session.state is ts.State.CLOSED and session.error is None
            await trio.sleep(cfg.resume_ttl * 3)
            (vs,) = handler.sessions
            assert vs.state is ts.State.CLOSED
    assert logouts == [sid]
    assert lost == []
    assert handler.ended == [None]  # async for ended cleanly
    assert handler.got == [b"%d" % i for i in range(20)]
    assert venue.refused == 0 and len(venue.transports) == 1


# -- takeover -------------------------------------------------------------------------------------


def _closed(transport: Transport) -> bool:
    return transport.closed  # a call: type checkers do not narrow it


class HalfOpen:
    """A participant's transport that can lose the connection on its side only,
    as when a NAT drops it: the venue's end stays open and notices nothing."""

    def __init__(self, inner: MemoryTransport) -> None:
        self.inner = inner
        self.lost = trio.Event()

    async def send(self, data: bytes) -> None:
        if self.lost.is_set():
            raise ts.ConnectionLost("half-open")
        await self.inner.send(data)

    async def receive(self) -> bytes:
        async with trio.open_nursery() as nursery:
            received: list[bytes] = []

            async def get() -> None:
                received.append(await self.inner.receive())
                nursery.cancel_scope.cancel()

            nursery.start_soon(get)
            await self.lost.wait()
            nursery.cancel_scope.cancel()
        if received:
            return received[0]
        raise ts.ConnectionLost("half-open")

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        self.lost.set()  # never tells the venue

    async def fail(self, code: int, reason: str = "") -> None:
        self.lost.set()

    def handshake_deadline(self, timeout: float) -> AbstractContextManager[object]:
        return self.inner.handshake_deadline(timeout)

    def mark_authenticated(self) -> None:
        self.inner.mark_authenticated()

    @property
    def remote_address(self) -> str:
        return self.inner.remote_address

    @property
    def closed(self) -> bool:
        return self.lost.is_set()

    @property
    def opened_at(self) -> float:
        return self.inner.opened_at


async def test_a_resume_takes_over_a_connection_the_venue_still_holds(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_session")
    handler = Echo()
    opened: list[HalfOpen] = []
    with trio.fail_after(60):
        async with memory_venue(handler, VENUE, registry()) as venue:

            async def factory(nursery: trio.Nursery) -> Transport:
                transport = await venue.connector(nursery)
                assert isinstance(transport, MemoryTransport)
                opened.append(HalfOpen(transport))
                return opened[-1]

            async with participant(venue, restart=FAST, factory=factory) as session:
                await session.send(b"before")
                assert await session.receive() == b"before"
                (vs,) = handler.sessions
                first_venue_end = venue.transports[0]
                opened[0].lost.set()  # the participant's side drops; the venue's does not
                assert not _closed(first_venue_end)
                assert await session.wait_state(ts.State.LIVE) is ts.State.LIVE
                await session.send(b"after")
                assert await session.receive() == b"after"
                assert session.stats.resumes == 1 and session.stats.connections == 2
                # The venue handed the session to the new connection and dropped the old one.
                assert vs.state is ts.State.LIVE
                assert vs.stats.resumes == 1 and vs.stats.connections == 2
                assert venue.sessions == [vs]
                await trio.testing.wait_all_tasks_blocked()
                assert _closed(first_venue_end)
    replaced = [r for r in caplog.records if "replaced by a resumed connection" in r.getMessage()]
    assert len(replaced) == 1 and replaced[0].name == "trio_session.session"
    assert handler.got == [b"before", b"after"]
    assert len(handler.sessions) == 1 and handler.ended == [None]
