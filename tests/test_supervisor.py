"""The participant's supervisor and the venue's resume logic under a mock clock
(issue "Supervisor and resume").

Backoff is unit-tested with a fake clock and a seeded ``random.Random``; the rest
runs whole sessions against :func:`trio_session.testing.memory_venue` on
``trio.testing.MockClock(autojump_threshold=0)``: no sockets, no real sleeps.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import trio_session as ts
from trio_session._link import MIN_TIMER_STEP
from trio_session._transport import MemoryTransport, Transport
from trio_session.testing import MemoryVenue, memory_venue

from .runtime_helpers import PARTICIPANT, VENUE, registry

STEP = 2 * MIN_TIMER_STEP


def state_of(session: ts.Session) -> ts.State:
    """The session's state now (a call, so type checkers do not narrow it)."""
    return session.state


# -- 6. Backoff ---------------------------------------------------------------------------


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
    assert backoff.next_delay() is None  # max_restarts within the window: give up
    assert backoff.next_delay() is None  # and stays given up while they are in it
    assert backoff.attempt == policy.max_restarts
    # The oldest restart was at 1000.0; once it leaves the window one slot frees.
    clock.now = 1000.0 + policy.window - 0.001
    assert backoff.next_delay() is None
    clock.now = 1000.0 + policy.window
    d = backoff.next_delay()
    assert d is not None and d > 0  # not reset: still backing off, not immediate
    assert backoff.next_delay() is None


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


def test_backoff_failed_attempts_back_off_without_counting_as_restarts() -> None:
    # next_delay(restart=False): the previous attempt never came up (refused).
    policy = ts.RestartPolicy(base_delay=0.1, max_delay=1.0, max_restarts=2, window=60.0)
    backoff, clock = _backoff(policy)
    assert backoff.next_delay() == 0.0  # the connection came up, then failed
    prev = policy.base_delay
    for _ in range(50):  # an outage: many refused attempts, never "gave up"
        d = backoff.next_delay(restart=False)
        assert d is not None
        assert policy.base_delay <= d <= min(policy.max_delay, 3 * prev)
        prev = max(d, policy.base_delay)
        clock.now += d
    assert backoff.attempt == 51
    assert backoff.next_delay() is not None  # second restart in the window
    assert backoff.next_delay() is None  # third: flapping, give up


# -- helpers for the end-to-end tests ------------------------------------------------------


class _Echo:
    """Venue handler: records what it receives (and echoes it), the sessions it
    was called with, and how its ``async for`` ended (None: cleanly)."""

    def __init__(self, *, echo: bool = True) -> None:
        self.echo = echo
        self.sessions: list[ts.Session] = []
        self.got: list[bytes] = []
        self.ended: list[BaseException | None] = []

    async def __call__(self, session: ts.Session) -> None:
        self.sessions.append(session)
        try:
            async for message in session:
                self.got.append(message)
                if self.echo:
                    await session.send(message)
        except ts.SessionError as exc:
            self.ended.append(exc)
        else:
            self.ended.append(None)


@asynccontextmanager
async def _participant(
    venue: MemoryVenue,
    *,
    restart: ts.RestartPolicy | None = None,
    config: ts.SessionConfig | None = None,
    factory: Callable[[trio.Nursery], Awaitable[Transport]] | None = None,
) -> AsyncIterator[ts.Session]:
    async with ts.connect(
        "memory://",
        PARTICIPANT,
        VENUE.public_key,
        config=config,
        restart=restart,
        transport_factory=factory or venue.connector,
    ) as session:
        yield session


#: Quick retries, never giving up by itself (for tests that keep the venue away).
FAST = ts.RestartPolicy(
    base_delay=0.05, max_delay=0.2, max_restarts=1_000_000, window=60.0, max_outage=None
)


# -- 7. intensity limit end to end ----------------------------------------------------------
#
# RestartPolicy: give up when the session *flaps* (max_restarts connections that
# came up and failed within window), or when it was not LIVE for max_outage
# seconds; refused attempts back off but do not count against max_restarts.


async def test_gives_up_after_max_restarts_when_every_connection_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = ts.RestartPolicy(
        base_delay=0.1, max_delay=0.4, max_restarts=4, window=60.0, max_outage=None
    )
    up_for = 1.0  # < stable_after: nothing resets the count
    handler = _Echo()

    async def break_later(transport: Transport) -> None:
        assert isinstance(transport, MemoryTransport)
        await trio.sleep(up_for)
        transport.break_()

    with trio.fail_after(60):
        async with memory_venue(handler, VENUE, registry()) as venue:

            async def flapping(nursery: trio.Nursery) -> Transport:
                transport = await venue.connector(nursery)
                nursery.start_soon(break_later, transport)
                return transport

            async with _participant(venue, restart=policy, factory=flapping) as session:
                started = trio.current_time()
                with pytest.raises(ts.ConnectionLost) as info:
                    await session.receive()
                gave_up_after = trio.current_time() - started
                assert "gave up" in str(info.value)
                assert "last error: ConnectionLost" in str(info.value)
                assert state_of(session) is ts.State.CLOSED
                assert session.error is info.value
                # the first connection, then exactly max_restarts restarts
                assert len(venue.transports) == policy.max_restarts + 1
                assert session.stats.connections == policy.max_restarts + 1
                assert session.stats.resumes == policy.max_restarts
                assert venue.refused == 0
                # each connection lived up_for; delays 0, then 3 in [base, max]
                n = policy.max_restarts - 1
                lo = (policy.max_restarts + 1) * up_for + n * policy.base_delay
                hi = (policy.max_restarts + 1) * up_for + n * policy.max_delay
                assert lo <= gave_up_after <= hi + STEP
                with pytest.raises(ts.ConnectionLost):
                    await session.send(b"after giving up")
    assert len(handler.sessions) == 1  # every reconnect resumed the one session


async def test_unreachable_venue_is_retried_until_max_outage_then_given_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = ts.RestartPolicy(
        base_delay=0.5, max_delay=2.0, max_restarts=3, window=60.0, max_outage=10.0
    )
    assert policy.max_outage is not None
    handler = _Echo()
    with trio.fail_after(120):
        async with (
            memory_venue(handler, VENUE, registry()) as venue,
            _participant(venue, restart=policy) as session,
        ):
            await session.send(b"hello")
            assert await session.receive() == b"hello"
            venue.refuse_connections(True)
            dropped_at = trio.current_time()
            venue.break_all()
            with pytest.raises(ts.ConnectionLost) as info:
                await session.receive()
            gave_up_after = trio.current_time() - dropped_at
            assert "giving up" in str(info.value) and "10.0s" in str(info.value)
            assert state_of(session) is ts.State.CLOSED
            # It gives up before sleeping past max_outage, not earlier than
            # one max_delay before it.
            assert policy.max_outage - policy.max_delay <= gave_up_after <= policy.max_outage
            # Refused attempts are many more than max_restarts (they do not count
            # against it): the first at once, then one per delay in [base, max].
            refused = venue.refused
            assert refused > policy.max_restarts
            most = 1 + int(policy.max_outage // policy.base_delay)
            least = 1 + int((policy.max_outage - policy.max_delay) // policy.max_delay)
            assert least <= refused <= most, refused
            assert session.stats.connections == 1


# -- 8. fatal close reasons ----------------------------------------------------------------


async def test_revoked_key_is_fatal_and_not_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reg = registry()
    handler = _Echo()
    with trio.fail_after(60):
        async with (
            memory_venue(handler, VENUE, reg) as venue,
            _participant(venue, restart=FAST) as session,
        ):
            await session.send(b"a")
            assert await session.receive() == b"a"
            reg.revoke(PARTICIPANT.key_id)
            with pytest.raises(ts.AuthenticationError) as info:
                await session.receive()
            assert info.value.code is ts.CloseCode.KEY_REVOKED
            assert info.value.remote
            assert info.value.category is ts.Category.FATAL
            assert session.state is ts.State.CLOSED
            await trio.sleep(30)  # plenty of time for a (wrong) reconnect
            assert session.stats.connections == 1
            assert len(venue.transports) == 1 and venue.refused == 0
            assert session.stats.resumes == 0


# -- 9. resume across drops ----------------------------------------------------------------


async def _record_outages(session: ts.Session, log: list[ts.State]) -> None:
    """Record, per outage, that STALE was entered and then LIVE again."""
    while True:
        log.append(await session.wait_state(ts.State.STALE))
        log.append(await session.wait_state(ts.State.LIVE))


async def test_resume_across_drops_loses_nothing_either_way(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = _Echo()
    drops = 8
    n = 400
    states: list[ts.State] = []
    echoes: list[bytes] = []
    with trio.fail_after(600):
        async with (
            memory_venue(handler, VENUE, registry()) as venue,
            _participant(venue, restart=FAST) as session,
        ):

            async def sender() -> None:
                for i in range(n):
                    await session.send(b"%04d" % i)
                    await trio.sleep(0.25)

            async def receiver() -> None:
                while len(echoes) < n:
                    echoes.extend(await session.receive_batch())

            async def breaker() -> None:
                for _ in range(drops):
                    await trio.sleep(11.0)  # > stable_after: each outage starts afresh
                    assert session.state is ts.State.LIVE
                    venue.break_all()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(_record_outages, session, states)
                nursery.start_soon(sender)
                nursery.start_soon(breaker)
                await receiver()
                await session.wait_state(ts.State.LIVE)
                nursery.cancel_scope.cancel()
            p = session.stats
            (vs,) = handler.sessions  # one logical session: one handler call
            assert venue.sessions == [vs]
            v = vs.stats
    expected = [b"%04d" % i for i in range(n)]
    # 0 lost, 0 duplicated, 0 reordered, both ways
    assert handler.got == expected
    assert echoes == expected
    assert handler.ended == [None]  # the handler's async for ran across every drop
    assert p.connections == drops + 1 and p.resumes == drops
    assert v.connections == drops + 1 and v.resumes == drops
    # every drop: STALE, then LIVE again
    assert states == [ts.State.STALE, ts.State.LIVE] * drops
    # each message counted once, however often it crossed the wire
    assert (p.sent, p.received, v.sent, v.received) == (n, n, n, n)


async def test_wait_state_sees_every_stale_spell(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A task already blocked in wait_state(STALE) must be woken by each drop,
    however quickly the resume completes afterwards."""
    handler = _Echo()
    drops = 10
    seen: list[ts.State | None] = []
    with trio.fail_after(600):
        async with (
            memory_venue(handler, VENUE, registry()) as venue,
            _participant(venue, restart=FAST) as session,
        ):
            for _ in range(drops):
                await trio.sleep(11.0)
                result: list[ts.State] = []
                woken = trio.Event()

                async def waiter(out: list[ts.State] = result, done: trio.Event = woken) -> None:
                    out.append(await session.wait_state(ts.State.STALE))
                    done.set()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(waiter)
                    await trio.testing.wait_all_tasks_blocked()
                    venue.break_all()
                    with trio.move_on_after(1.0):
                        await woken.wait()
                    nursery.cancel_scope.cancel()
                await trio.sleep(1.0)  # the resume completes meanwhile (zero latency)
                assert state_of(session) is ts.State.LIVE
                seen.append(result[0] if result else None)
            assert session.stats.resumes == drops
    assert seen == [ts.State.STALE] * drops


# -- 10. TTL expiry -> SessionReset ---------------------------------------------------------


async def test_resume_after_ttl_gives_new_session_and_one_session_reset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cfg = ts.SessionConfig(resume_ttl=5.0)
    policy = ts.RestartPolicy(
        base_delay=0.2, max_delay=1.0, max_restarts=1000, window=60.0, max_outage=120.0
    )
    handler = _Echo()
    lost: list[str | None] = []
    with trio.fail_after(300):
        async with (
            memory_venue(
                handler,
                VENUE,
                registry(),
                config=cfg,
                on_session_lost=lambda s: lost.append(s.session_id),
            ) as venue,
            _participant(venue, restart=policy, config=cfg) as session,
        ):
            for i in range(3):
                await session.send(b"old%d" % i)
            for i in range(3):
                assert await session.receive() == b"old%d" % i
            old_sid = session.session_id
            venue.refuse_connections(True)
            venue.break_all()
            await trio.sleep(cfg.resume_ttl * 2)
            assert lost == [old_sid]  # the venue gave the session up
            assert state_of(session) in (ts.State.STALE, ts.State.RESUMING)
            venue.refuse_connections(False)
            assert await session.wait_state(ts.State.LIVE) is ts.State.LIVE
            new_sid = session.session_id
            assert new_sid is not None and new_sid != old_sid
            with pytest.raises(ts.SessionReset):
                await session.receive()
            # exactly once: the session then continues normally
            await session.send(b"new0")
            assert await session.receive() == b"new0"
            await session.send(b"new1")
            assert await session.receive() == b"new1"
            assert session.state is ts.State.LIVE and session.error is None
            assert session.session_id == new_sid
            assert session.stats.resumes == 0
            assert len(handler.sessions) == 2
            old_vs, new_vs = handler.sessions
            assert old_vs.session_id == old_sid and new_vs.session_id == new_sid
            assert old_vs.state is ts.State.CLOSED
    assert handler.got == [b"old0", b"old1", b"old2", b"new0", b"new1"]


# -- 11. dead man's switch -----------------------------------------------------------------


@pytest.mark.parametrize("how", ["cancelled", "broken"])
async def test_dead_mans_switch_fires_once_after_resume_ttl(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    cfg = ts.SessionConfig(resume_ttl=7.0)
    handler = _Echo()
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
                async with _participant(venue, restart=FAST, config=cfg) as session:
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
    handler = _Echo(echo=False)
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
            async with _participant(venue, config=cfg) as session:
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


# -- 12. sends during an outage ------------------------------------------------------------


class _Gate:
    """Wraps a transport factory; while closed, connection attempts wait."""

    def __init__(self, factory: Callable[[trio.Nursery], Awaitable[Transport]]) -> None:
        self._factory = factory
        self._open = trio.Event()
        self._open.set()

    def close(self) -> None:
        if self._open.is_set():
            self._open = trio.Event()

    def open(self) -> None:
        self._open.set()

    async def __call__(self, nursery: trio.Nursery) -> Transport:
        await self._open.wait()
        return await self._factory(nursery)


async def test_sends_during_outage_are_delivered_after_resume_and_fail_fast_raises(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = ts.RestartPolicy(base_delay=1.0, max_delay=2.0, max_outage=None)
    handler = _Echo()
    with trio.fail_after(120):
        async with memory_venue(handler, VENUE, registry()) as venue:
            gate = _Gate(venue.connector)
            async with _participant(venue, restart=policy, factory=gate) as session:
                await session.send(b"before")
                assert await session.receive() == b"before"
                # STALE: the first (immediate) retry is refused; the next one
                # waits base_delay or more.
                venue.refuse_connections(True)
                venue.break_all()
                await trio.sleep(policy.base_delay / 2)
                assert venue.refused == 1
                assert session.state is ts.State.STALE
                assert await session.wait_state(ts.State.STALE) is ts.State.STALE
                await session.send(b"while-stale")  # queued, returns at once
                with pytest.raises(ts.ConnectionLost):
                    await session.send(b"ff-stale", fail_fast=True)
                with pytest.raises(ts.ConnectionLost):
                    await session.send_many([b"ff-many"], fail_fast=True)
                assert session.state is ts.State.STALE
                # RESUMING: the next attempt is in progress (held at the gate).
                gate.close()
                venue.refuse_connections(False)
                assert await session.wait_state(ts.State.RESUMING) is ts.State.RESUMING
                await session.send(b"while-resuming")
                with pytest.raises(ts.ConnectionLost):
                    await session.send(b"ff-resuming", fail_fast=True)
                assert state_of(session) is ts.State.RESUMING
                gate.open()
                assert await session.wait_state(ts.State.LIVE) is ts.State.LIVE
                assert await session.receive() == b"while-stale"
                assert await session.receive() == b"while-resuming"
                await session.send(b"after", fail_fast=True)  # LIVE: accepted
                assert await session.receive() == b"after"
                assert session.stats.resumes == 1
    assert handler.got == [b"before", b"while-stale", b"while-resuming", b"after"]
