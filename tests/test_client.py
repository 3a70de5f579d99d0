"""The participant's supervisor (``_client.py``): ``connect()``, end to end.

Most tests run whole sessions against :func:`trio_session.testing.memory_venue`
on ``trio.testing.MockClock(autojump_threshold=0)``: no sockets, no real sleeps.
Connection failures of the first connect run over loopback.
"""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

import trio_session as ts
from trio_session._transport import MemoryTransport, Transport
from trio_session.protocol import SessionRecord, VenueConnection
from trio_session.testing import memory_venue

from .runtime_helpers import (
    FAST,
    OTHER,
    PARTICIPANT,
    STEP,
    VENUE,
    Echo,
    Gate,
    participant,
    registry,
    state_of,
    url,
    venue,
)

# -- the first connect fails fast --------------------------------------------------------------


async def test_connection_refused_is_typed() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    with trio.fail_after(10), pytest.raises(ts.ConnectionLost):
        async with ts.connect(f"ws://127.0.0.1:{port}/", PARTICIPANT, VENUE.public_key):
            pytest.fail("connected to nothing")


async def test_wrong_venue_key_fails_on_participant_and_server_keeps_serving() -> None:
    with trio.fail_after(20):
        async with venue() as server:
            with pytest.raises(ts.AuthenticationError) as info:
                async with ts.connect(url(server), PARTICIPANT, OTHER.public_key):
                    pytest.fail("authenticated a venue with the wrong key")
            assert info.value.code is ts.CloseCode.AUTH_FAILED and info.value.remote  # venue failed
            async with ts.connect(url(server), PARTICIPANT, VENUE.public_key) as session:
                await session.send(b"x")
                assert await session.receive() == b"x"


async def test_tampered_handshake_is_refused_on_both_sides() -> None:
    # The participant presents a key_id registered to someone else (identity misbinding):
    # the venue's signature check of M3 fails and it sends REJECT after ServerHello.
    reg = registry()
    reg.add("mallory", OTHER.public_key)
    impostor = ts.Identity.from_seed(bytes(range(32, 64)), key_id="mallory")
    with trio.fail_after(20):
        async with venue(reg=reg) as server:
            with pytest.raises(ts.AuthenticationError) as info:
                async with ts.connect(url(server), impostor, VENUE.public_key):
                    pytest.fail("impostor authenticated")
            assert info.value.code is ts.CloseCode.AUTH_FAILED and info.value.remote
            async with ts.connect(url(server), PARTICIPANT, VENUE.public_key) as session:
                await session.send(b"y")
                assert await session.receive() == b"y"


# -- intensity limit and outages ---------------------------------------------------------------


async def test_flapping_connections_that_make_progress_never_give_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Every connection resumes, moves messages and drops after 0.5 s: a flaky
    # link that works between its drops is kept, far beyond max_restarts.
    policy = ts.RestartPolicy(base_delay=0.1, max_delay=0.4, max_restarts=4, window=60.0)
    handler = Echo()

    async def break_later(transport: Transport) -> None:
        assert isinstance(transport, MemoryTransport)
        await trio.sleep(0.5)
        transport.break_()

    with trio.fail_after(120):
        async with memory_venue(handler, VENUE, registry()) as venue:

            async def flapping(nursery: trio.Nursery) -> Transport:
                transport = await venue.connector(nursery)
                nursery.start_soon(break_later, transport)
                return transport

            async with participant(venue, restart=policy, factory=flapping) as session:
                for i in range(40):
                    await session.send(b"%d" % i)
                    assert await session.receive() == b"%d" % i
                    await trio.sleep(0.4)
                assert state_of(session) is not ts.State.CLOSED
                assert session.stats.resumes >= 5 * policy.max_restarts
                stats = session.stats  # one spell per drop, the last maybe not resumed yet
                assert stats.resumes <= stats.stale_spells <= stats.resumes + 1
    assert len(handler.sessions) == 1  # every reconnect resumed the one session


async def test_gives_up_after_max_restarts_attempts_without_progress(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The first connection works; after it drops, every connection dies before
    # its handshake completes: no progress, so the intensity limit applies.
    policy = ts.RestartPolicy(
        base_delay=0.1, max_delay=0.4, max_restarts=4, window=60.0, max_outage=None
    )
    handler = Echo()

    async def break_later(transport: Transport, after: float) -> None:
        assert isinstance(transport, MemoryTransport)
        await trio.sleep(after)
        transport.break_()

    with trio.fail_after(60):
        async with memory_venue(handler, VENUE, registry()) as venue:

            async def dying(nursery: trio.Nursery) -> Transport:
                transport = await venue.connector(nursery)
                if len(venue.transports) == 1:
                    nursery.start_soon(break_later, transport, 1.0)
                else:  # reached, but broken before the handshake completes
                    assert isinstance(transport, MemoryTransport)
                    transport.break_()
                return transport

            async with participant(venue, restart=policy, factory=dying) as session:
                started = trio.current_time()
                with pytest.raises(ts.ConnectionLost) as info:
                    await session.receive()
                gave_up_after = trio.current_time() - started
                assert "gave up: more than 4 attempts without progress" in str(info.value)
                assert "last error: ConnectionLost" in str(info.value)
                assert state_of(session) is ts.State.CLOSED
                assert session.error is info.value
                # the first connection, then max_restarts + 1 failed attempts
                assert len(venue.transports) == policy.max_restarts + 2
                assert session.stats.connections == 1 and session.stats.stale_spells == 1
                assert venue.refused == 0
                # up 1 s, then delays 0 and 4 in [base, max] between failed attempts
                n = policy.max_restarts
                assert 1.0 + n * policy.base_delay <= gave_up_after
                assert gave_up_after <= 1.0 + n * policy.max_delay + STEP
                with pytest.raises(ts.ConnectionLost):
                    await session.send(b"after giving up")
    assert len(handler.sessions) == 1


async def test_unreachable_venue_is_retried_until_max_outage_then_given_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = ts.RestartPolicy(
        base_delay=0.5, max_delay=2.0, max_restarts=3, window=60.0, max_outage=10.0
    )
    assert policy.max_outage is not None
    handler = Echo()
    with trio.fail_after(120):
        async with (
            memory_venue(handler, VENUE, registry()) as venue,
            participant(venue, restart=policy) as session,
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


# -- fatal close reasons -----------------------------------------------------------------------


async def test_revoked_key_is_fatal_and_not_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    reg = registry()
    handler = Echo()
    with trio.fail_after(60):
        async with (
            memory_venue(handler, VENUE, reg) as venue,
            participant(venue, restart=FAST) as session,
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


# -- resume across drops -----------------------------------------------------------------------


async def _record_outages(session: ts.Session, log: list[ts.State]) -> None:
    """Record, per outage, that STALE was entered and then LIVE again."""
    while True:
        log.append(await session.wait_state(ts.State.STALE))
        log.append(await session.wait_state(ts.State.LIVE))


async def test_resume_across_drops_loses_nothing_either_way(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = Echo()
    drops = 8
    n = 400
    states: list[ts.State] = []
    echoes: list[bytes] = []
    with trio.fail_after(600):
        async with (
            memory_venue(handler, VENUE, registry()) as venue,
            participant(venue, restart=FAST) as session,
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


# -- a lost session: SessionReset --------------------------------------------------------------


async def test_resume_after_ttl_gives_new_session_and_one_session_reset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cfg = ts.SessionConfig(resume_ttl=5.0)
    policy = ts.RestartPolicy(
        base_delay=0.2, max_delay=1.0, max_restarts=1000, window=60.0, max_outage=120.0
    )
    handler = Echo()
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
            participant(venue, restart=policy, config=cfg) as session,
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


# -- sends during an outage --------------------------------------------------------------------


async def test_sends_during_outage_are_delivered_after_resume_and_fail_fast_raises(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policy = ts.RestartPolicy(base_delay=1.0, max_delay=2.0, max_outage=None)
    handler = Echo()
    with trio.fail_after(120):
        async with memory_venue(handler, VENUE, registry()) as venue:
            gate = Gate(venue.connector)
            async with participant(venue, restart=policy, factory=gate) as session:
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


# -- authentication failures on reconnects ------------------------------------------------------


@pytest.mark.parametrize("retries", [0, 2])
async def test_auth_failed_on_reconnect_is_retried_auth_retries_times(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, retries: int
) -> None:
    # The venue starts checking signatures against the wrong key (as after a
    # botched key rotation): every later handshake fails with AUTH_FAILED.
    wrong_key = False
    accept = VenueConnection.accept

    def checked_against(
        conn: VenueConnection, public_key: bytes, session: SessionRecord | None = None
    ) -> None:
        accept(conn, OTHER.public_key if wrong_key else public_key, session)

    monkeypatch.setattr(VenueConnection, "accept", checked_against)
    reg = registry()
    policy = attrs.evolve(FAST, auth_retries=retries)
    with trio.fail_after(60):
        async with (
            memory_venue(Echo(), VENUE, reg) as venue,
            participant(venue, restart=policy) as session,
        ):
            await session.send(b"a")
            assert await session.receive() == b"a"
            wrong_key = True
            venue.break_all()
            with pytest.raises(ts.AuthenticationError) as info:
                await session.receive()
            assert info.value.code is ts.CloseCode.AUTH_FAILED and info.value.remote
            assert state_of(session) is ts.State.CLOSED
            # The first connection, then 1 + auth_retries reconnects, all refused.
            assert len(venue.transports) == 2 + retries
