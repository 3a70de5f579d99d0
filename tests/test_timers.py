"""Session timers and backpressure under a mock clock (issue "Session runtime").

Every test runs on ``trio.testing.MockClock(autojump_threshold=0)`` (pytest-trio's
``autojump_clock`` fixture) over in-memory transports: no sockets, no real
sleeps, and virtual time is exact, so the timer assertions state exact windows.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_session as ts
from trio_session._session import MIN_TIMER_STEP
from trio_session._transport import MemoryTransport, memory_transport_pair
from trio_session.protocol import CloseReceived, Event, VenueConnection
from trio_session.testing import memory_venue

from .runtime_helpers import PARTICIPANT, VENUE, registry

NO_RESTART = ts.RestartPolicy(enabled=False)
#: Slack for "the same virtual instant, give or take a timer re-check".
STEP = 2 * MIN_TIMER_STEP


def state_of(session: ts.Session) -> ts.State:
    """The session's state now (a call, so type checkers do not narrow it)."""
    return session.state


# -- 1. a frozen peer is detected ---------------------------------------------------------


async def _frozen_venue(
    transport: MemoryTransport,
    config: ts.SessionConfig,
    task_status: trio.TaskStatus[VenueConnection],
) -> None:
    """Complete the venue side of the handshake by hand, confirm it once, then
    never read (nor write, nor close) again: a peer that stopped reading."""
    conn = VenueConnection(VENUE, config, clock=trio.current_time)
    conn.receive_data(await transport.receive())  # ClientHello
    conn.accept(PARTICIPANT.public_key)
    for frame in conn.data_to_send():  # ServerHello
        await transport.send(frame)
    conn.receive_data(await transport.receive())  # ClientFinish
    for frame in conn.data_to_send():  # the confirmation (first authenticated frame)
        await transport.send(frame)
    task_status.started(conn)
    await trio.sleep_forever()


async def test_frozen_peer_raises_heartbeat_timeout_within_timeout_plus_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cfg = ts.SessionConfig(heartbeat_interval=1.0, heartbeat_timeout=3.0)
    client_end, venue_end = memory_transport_pair(capacity=1024)
    used: list[MemoryTransport] = []

    async def factory(nursery: trio.Nursery) -> MemoryTransport:
        await trio.lowlevel.checkpoint()
        used.append(client_end)
        return client_end

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            venue_conn_box: list[VenueConnection] = []

            async def run_frozen() -> None:
                venue_conn_box.append(await nursery.start(_frozen_venue, venue_end, cfg))

            nursery.start_soon(run_frozen)
            async with ts.connect(
                "memory://",
                PARTICIPANT,
                VENUE.public_key,
                config=cfg,
                restart=NO_RESTART,
                transport_factory=factory,
            ) as session:
                # connect() returns at the venue's confirmation: the last frame
                # the participant will ever receive.
                last_rx = trio.current_time()
                assert session.state is ts.State.LIVE
                with pytest.raises(ts.HeartbeatTimeout) as info:
                    await session.receive()
                detected = trio.current_time() - last_rx
                assert state_of(session) is ts.State.CLOSED
                assert session.error is info.value
                assert info.value.code is ts.CloseCode.HEARTBEAT_TIMEOUT
                assert not info.value.remote
                # The probe went out before the verdict.
                assert session.stats.heartbeats_sent >= 1
            nursery.cancel_scope.cancel()
    assert used == [client_end]  # restart disabled: exactly one connection
    assert (
        cfg.heartbeat_timeout <= detected <= (cfg.heartbeat_timeout + cfg.heartbeat_interval + STEP)
    ), detected
    # What the frozen venue would read if it woke up: heartbeats, then a CLOSE
    # telling it why (HEARTBEAT_TIMEOUT), all authenticated.
    (vconn,) = venue_conn_box
    events: list[Event] = []
    while True:
        try:
            frame = venue_end._receive_channel.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            break
        events += vconn.receive_data(frame)
    closes = [e for e in events if isinstance(e, CloseReceived)]
    assert [c.code for c in closes] == [ts.CloseCode.HEARTBEAT_TIMEOUT]
    assert isinstance(events[-1], CloseReceived)


# -- 2. heartbeats are never blocked by data backpressure ----------------------------------


async def test_heartbeats_flow_while_app_does_not_read_and_inbound_is_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cap = 32
    cfg = ts.SessionConfig(heartbeat_interval=1.0, heartbeat_timeout=3.0, inbound_capacity=cap)
    venue_sessions: list[ts.Session] = []
    burst_sent = trio.Event()

    async def handler(session: ts.Session) -> None:
        venue_sessions.append(session)
        await session.send_many([b"m%03d" % i for i in range(cap)])
        burst_sent.set()
        async for message in session:
            await session.send(b"echo:" + message)

    with trio.fail_after(120):
        async with (
            memory_venue(handler, VENUE, registry(), config=cfg) as venue,
            venue.connect(PARTICIPANT, config=cfg, restart=NO_RESTART) as session,
        ):
            await burst_sent.wait()
            await trio.testing.wait_all_tasks_blocked()
            (vs,) = venue_sessions
            assert session.stats.received == cap
            assert vs.stats.sent == cap
            hb0 = session.stats.heartbeats_sent
            vhb0 = vs.stats.heartbeats_sent
            states: list[ts.State] = []

            async def watch() -> None:
                while True:
                    states.append(await session.wait_state(*(set(ts.State) - {ts.State.LIVE})))
                    await session.wait_state(ts.State.LIVE)

            idle = 10 * cfg.heartbeat_timeout
            async with trio.open_nursery() as watchers:
                watchers.start_soon(watch)
                await trio.sleep(idle)  # the application reads nothing
                watchers.cancel_scope.cancel()
            assert states == []
            assert session.state is ts.State.LIVE and session.error is None
            assert vs.state is ts.State.LIVE and vs.error is None
            assert session.stats.connections == 1 and vs.stats.connections == 1
            assert session.stats.received == cap and vs.stats.sent == cap
            # Both ends kept talking: at least one heartbeat per interval of idle
            # time crossed the link in each direction (a frame every interval is
            # what keeps the peer's timeout from firing).
            sent_p = session.stats.heartbeats_sent - hb0
            sent_v = vs.stats.heartbeats_sent - vhb0
            assert sent_p + sent_v >= idle / cfg.heartbeat_interval, (sent_p, sent_v)
            assert sent_p >= idle / cfg.heartbeat_timeout, sent_p
            # Now the application reads: everything, in order, exactly once.
            got: list[bytes] = []
            while len(got) < cap:
                got.extend(await session.receive_batch())
            assert got == [b"m%03d" % i for i in range(cap)]
            # Credit came back: the link still carries data.
            await session.send(b"ping")
            assert await session.receive() == b"echo:ping"


async def test_queue_depths_count_messages_not_batches(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # SessionStats: "Messages waiting to be sent / received and not yet consumed."
    cap = 32
    cfg_p = ts.SessionConfig(inbound_capacity=cap)
    cfg_v = ts.SessionConfig(inbound_capacity=8)
    reader = _Reader()

    async def handler(session: ts.Session) -> None:
        await session.send_many([b"m%03d" % i for i in range(cap)])
        await reader(session)

    with trio.fail_after(30):
        async with (
            memory_venue(handler, VENUE, registry(), config=cfg_v) as venue,
            venue.connect(PARTICIPANT, config=cfg_p) as session,
        ):
            await trio.testing.wait_all_tasks_blocked()
            assert session.stats.received == cap
            assert session.stats.inbound_depth == cap  # one batch of 32 messages
            await _fill_credit(session, cfg_v.inbound_capacity)
            await session.send_many([b"x%d" % i for i in range(5)])
            await trio.testing.wait_all_tasks_blocked()
            assert session.stats.outbound_depth == 5  # one queue item of 5 messages
            assert await session.receive() == b"m000"
            assert session.stats.inbound_depth == cap - 1


# -- 3. rekeys for 24 h --------------------------------------------------------------------


async def test_rekeys_on_schedule_for_24h_without_loss(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Default key timers (rekey 120 s + jitter <= 0.3 s, ratchet 20 s); heartbeats
    # every 15 s instead of 5 s only to cut the wall time of a simulated day.
    cfg = ts.SessionConfig(heartbeat_interval=15.0, heartbeat_timeout=45.0)
    assert (cfg.rekey_interval, cfg.rekey_jitter, cfg.ratchet_interval) == (120.0, 0.3, 20.0)
    day = 24 * 3600.0
    p_every, v_every = 37.0, 53.0
    venue_got: list[bytes] = []
    venue_sessions: list[ts.Session] = []

    async def handler(session: ts.Session) -> None:
        venue_sessions.append(session)

        async def ticker() -> None:
            i = 0
            while True:
                await trio.sleep(v_every)
                await session.send(b"t%d" % i)
                i += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            async for message in session:
                venue_got.append(message)
                await session.send(b"e" + message)

    with trio.fail_after(day + 600):
        async with (
            memory_venue(handler, VENUE, registry(), config=cfg) as venue,
            venue.connect(PARTICIPANT, config=cfg) as session,
        ):
            t0 = trio.current_time()
            echoes: list[int] = []
            ticks: list[int] = []

            async def reader() -> None:
                async for m in session:
                    if m.startswith(b"e"):
                        echoes.append(int(m[1:]))
                    else:
                        assert m.startswith(b"t"), m
                        ticks.append(int(m[1:]))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                n = 0
                while trio.current_time() - t0 < day:
                    await session.send(b"%d" % n)
                    n += 1
                    await trio.sleep(p_every)
                await trio.sleep(1.0)  # let the last echo arrive
                nursery.cancel_scope.cancel()
            elapsed = trio.current_time() - t0
            (vs,) = venue_sessions
            p, v = session.stats, vs.stats
            assert session.state is ts.State.LIVE and vs.state is ts.State.LIVE
            assert p.connections == 1 and v.connections == 1  # no timeout, no reconnect

    # zero loss, duplication or reordering, both ways
    assert venue_got == [b"%d" % i for i in range(n)]
    assert echoes == list(range(n))
    assert ticks == list(range(len(ticks)))
    assert len(ticks) == int(elapsed // v_every)
    # Tier-2 DH rekeys: one every rekey_interval + jitter (0 .. 0.3 s), the
    # participant's request and the venue's own timer racing for the earlier one.
    lo = int(elapsed // (cfg.rekey_interval + cfg.rekey_jitter))
    hi = int(elapsed // cfg.rekey_interval)
    assert (lo, hi) == (718, 720)
    assert lo <= v.rekeys <= hi, v.rekeys
    assert lo <= p.rekeys <= hi, p.rekeys
    assert abs(p.rekeys - v.rekeys) <= 1
    # Tier-1 ratchets: a key epoch lasts >= ratchet_interval; between two rekeys
    # (>= 120 s) a step is due after 20 s (+ jitter) and rides the next frame,
    # at most heartbeat_interval later; so each >= 120 s rekey period holds at least
    # floor(120 / (20 + 0.3 + 15)) = 3 ratchets of each sending key.
    per_period = int(cfg.rekey_interval // (cfg.ratchet_interval + 0.3 + cfg.heartbeat_interval))
    assert per_period == 3
    for ratchets, rekeys in ((p.ratchets, p.rekeys), (v.ratchets, v.rekeys)):
        assert per_period * (rekeys - 1) <= ratchets <= elapsed // cfg.ratchet_interval, (
            ratchets,
            rekeys,
        )


# -- 4. slow consumer ----------------------------------------------------------------------


async def test_venue_closes_slow_consumer_and_participant_gets_typed_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cap, v_out = 16, 8
    cfg_p = ts.SessionConfig(inbound_capacity=cap)
    cfg_v = ts.SessionConfig(slow_consumer_timeout=10.0, outbound_capacity=v_out)
    sent_by_venue: list[int] = []
    handler_error: list[BaseException] = []
    handler_done = trio.Event()

    async def handler(session: ts.Session) -> None:
        try:
            for i in range(1000):
                await session.send(b"%04d" % i)
                sent_by_venue.append(i)
        except ts.SessionError as exc:
            handler_error.append(exc)
        finally:
            handler_done.set()

    with trio.fail_after(120):
        async with (
            memory_venue(handler, VENUE, registry(), config=cfg_v) as venue,
            venue.connect(PARTICIPANT, config=cfg_p, restart=NO_RESTART) as session,
        ):
            t0 = trio.current_time()
            (vs,) = venue.sessions
            # The venue fills the participant's credit, then its own outbound queue.
            await trio.testing.wait_all_tasks_blocked()
            assert not handler_done.is_set()
            assert cap + v_out <= len(sent_by_venue) <= cap + v_out + 1, len(sent_by_venue)
            assert session.stats.received == cap
            assert await session.wait_state(ts.State.CLOSED) is ts.State.CLOSED
            closed_after = trio.current_time() - t0
            assert cfg_v.slow_consumer_timeout <= closed_after
            assert closed_after <= cfg_v.slow_consumer_timeout + STEP
            # What was delivered before the close is still delivered, in order ...
            got = []
            for _ in range(cap):
                got.append(await session.receive())
            assert got == [b"%04d" % i for i in range(cap)]
            # ... then the typed error with the venue's close code.
            with pytest.raises(ts.SessionClosed) as info:
                await session.receive()
            err = info.value
            assert err.code is ts.CloseCode.SLOW_CONSUMER
            assert err.remote
            assert err.category is ts.Category.REAUTHENTICATE
            assert session.error is err
            assert session.stats.connections == 1
            # On the venue: the session is over, with the same code, and the
            # handler blocked in send() is released with that error (no orphan).
            assert vs.state is ts.State.CLOSED
            assert vs.error is not None and vs.error.code is ts.CloseCode.SLOW_CONSUMER
            with trio.move_on_after(cfg_v.close_timeout):
                await handler_done.wait()
            assert handler_done.is_set(), "venue handler still blocked in send() after close"
            (herr,) = handler_error
            assert isinstance(herr, ts.SessionError)
            assert herr.code is ts.CloseCode.SLOW_CONSUMER


# -- 5. backpressure policies ------------------------------------------------------------


class _Reader:
    """A venue handler that does not read until told to."""

    def __init__(self) -> None:
        self.sessions: list[ts.Session] = []
        self.go = trio.Event()
        self.got: list[bytes] = []
        self._more = trio.Event()

    async def __call__(self, session: ts.Session) -> None:
        self.sessions.append(session)
        await self.go.wait()
        async for message in session:
            self.got.append(message)
            self._more.set()
            self._more = trio.Event()

    async def wait_for(self, n: int) -> list[bytes]:
        while len(self.got) < n:
            await self._more.wait()
        await trio.testing.wait_all_tasks_blocked()
        return self.got


def _policy_configs(outbound: int) -> tuple[ts.SessionConfig, ts.SessionConfig]:
    # The venue's inbound capacity is the participant's credit window.
    return ts.SessionConfig(outbound_capacity=outbound), ts.SessionConfig(inbound_capacity=8)


async def _fill_credit(session: ts.Session, credit: int) -> list[bytes]:
    first = [b"o%d" % i for i in range(credit)]
    for m in first:
        await session.send(m)
    await trio.testing.wait_all_tasks_blocked()
    assert session.stats.sent == credit  # on the wire; the window is now closed
    assert session.stats.outbound_depth == 0
    return first


async def test_send_latest_conflates_to_latest_value_per_key(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cfg_p, cfg_v = _policy_configs(outbound=64)
    reader = _Reader()
    with trio.fail_after(30):
        async with (
            memory_venue(reader, VENUE, registry(), config=cfg_v) as venue,
            venue.connect(PARTICIPANT, config=cfg_p) as session,
        ):
            first = await _fill_credit(session, cfg_v.inbound_capacity)
            updates = 0
            for i in range(10):
                for key in ("A", "B", "C"):
                    session.send_latest(key, b"%s%d" % (key.encode(), i))
                    updates += 1
            session.send_latest("A", b"A10")  # re-queued at the end: FIFO by last update
            updates += 1
            await trio.testing.wait_all_tasks_blocked()
            stats = session.stats
            assert stats.conflated == updates - 3
            assert stats.outbound_depth == 3
            assert stats.sent == len(first) and stats.dropped == 0
            reader.go.set()
            got = await reader.wait_for(len(first) + 3)
            assert got == [*first, b"B9", b"C9", b"A10"]
            assert session.stats.sent == len(first) + 3
            # With credit available, a lone update is sent, not conflated.
            session.send_latest("A", b"A11")
            assert await reader.wait_for(len(first) + 4) == [*first, b"B9", b"C9", b"A10", b"A11"]
            assert session.stats.conflated == updates - 3


async def test_send_lossy_drops_oldest_when_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbound = 4
    cfg_p, cfg_v = _policy_configs(outbound=outbound)
    reader = _Reader()
    with trio.fail_after(30):
        async with (
            memory_venue(reader, VENUE, registry(), config=cfg_v) as venue,
            venue.connect(PARTICIPANT, config=cfg_p) as session,
        ):
            first = await _fill_credit(session, cfg_v.inbound_capacity)
            for i in range(10):
                session.send_lossy(b"l%d" % i)
            await trio.testing.wait_all_tasks_blocked()
            stats = session.stats
            assert stats.dropped == 10 - outbound
            assert stats.outbound_depth == outbound
            assert stats.conflated == 0
            reader.go.set()
            got = await reader.wait_for(len(first) + outbound)
            assert got == [*first, b"l6", b"l7", b"l8", b"l9"]
            assert session.stats.dropped == 10 - outbound


async def test_send_blocks_while_outbound_queue_is_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbound = 4
    cfg_p, cfg_v = _policy_configs(outbound=outbound)
    credit = cfg_v.inbound_capacity
    reader = _Reader()
    total = 40
    done: list[int] = []
    with trio.fail_after(120):
        async with (
            memory_venue(reader, VENUE, registry(), config=cfg_v) as venue,
            venue.connect(PARTICIPANT, config=cfg_p) as session,
        ):

            async def sender() -> None:
                for i in range(total):
                    await session.send(b"%02d" % i)
                    done.append(i)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                await trio.testing.wait_all_tasks_blocked()
                # credit on the wire, outbound_capacity queued, the next send blocked
                assert len(done) == credit + outbound, len(done)
                assert session.stats.sent == credit
                assert session.stats.outbound_depth == outbound
                await trio.sleep(60)  # blocked for good, not just slow
                assert len(done) == credit + outbound
                reader.go.set()  # consuming grants credit: the sender resumes
                got = await reader.wait_for(total)
            assert done == list(range(total))
            assert got == [b"%02d" % i for i in range(total)]
            assert session.stats.dropped == 0 and session.stats.conflated == 0
