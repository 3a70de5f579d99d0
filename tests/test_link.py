"""One attached connection (``_link.py``): its four tasks, timers and teardown.

Timer tests run on ``trio.testing.MockClock(autojump_threshold=0)`` (pytest-trio's
``autojump_clock`` fixture) over in-memory transports: no sockets, no real
sleeps, and virtual time is exact, so the assertions state exact windows.
Teardown is checked over real sockets.
"""

from __future__ import annotations

import gc

import pytest
import trio
import trio.testing

import trio_session as ts
from trio_session._transport import MemoryTransport, memory_transport_pair
from trio_session.protocol import CloseReceived, Event, VenueConnection
from trio_session.testing import memory_venue

from .runtime_helpers import (
    NO_RESTART,
    PARTICIPANT,
    STEP,
    VENUE,
    memory_pair,
    open_fds,
    registry,
    state_of,
    task_names,
    url,
    venue,
)

# -- a frozen peer is detected -----------------------------------------------------------------


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


# -- heartbeats are never blocked by data backpressure -----------------------------------------


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


# -- rekeys for 24 h ---------------------------------------------------------------------------


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


# -- slow consumer -----------------------------------------------------------------------------


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
            assert isinstance(err, ts.SlowConsumer)
            assert err.code is ts.CloseCode.SLOW_CONSUMER
            assert err.remote
            assert err.category is ts.Category.REAUTHENTICATE
            assert session.error is err
            assert session.stats.connections == 1
            # On the venue: the session is over, with the same code, and the
            # handler blocked in send() is released with that error (no orphan).
            assert vs.state is ts.State.CLOSED
            assert vs.error is not None and vs.error.code is ts.CloseCode.SLOW_CONSUMER
            assert isinstance(vs.error, ts.SlowConsumer) and not vs.error.remote
            with trio.move_on_after(cfg_v.close_timeout):
                await handler_done.wait()
            assert handler_done.is_set(), "venue handler still blocked in send() after close"
            (herr,) = handler_error
            assert isinstance(herr, ts.SessionError)
            assert herr.code is ts.CloseCode.SLOW_CONSUMER


# -- teardown ----------------------------------------------------------------------------------


#: The task names of a Link's nursery.
LINK_TASKS = ("reader", "writer", "heartbeat", "key-rotation")


async def test_participant_cancel_mid_stream_tears_everything_down() -> None:
    venue_sessions: list[ts.Session] = []

    async def handler(session: ts.Session) -> None:
        venue_sessions.append(session)
        async for message in session:
            await session.send(message)

    fds_before = open_fds()
    baseline = task_names()
    close_deadline = ts.SessionConfig().close_timeout
    with trio.fail_after(20):
        async with venue(handler) as server:
            with trio.CancelScope() as scope:
                async with ts.connect(url(server), PARTICIPANT, VENUE.public_key) as session:
                    for i in range(200):
                        await session.send(b"%d" % i)
                    await session.receive()
                    # Both ends run the four link tasks now (the names checked below).
                    names = task_names()
                    assert all(names.count(t) == 2 for t in LINK_TASKS), names
                    assert any("reader_task" in n for n in names), names
                    cancelled_at = trio.current_time()
                    scope.cancel()  # cancelled mid-stream: an abrupt loss, not a logout
            assert scope.cancelled_caught
            assert trio.current_time() - cancelled_at <= close_deadline
            assert session.state is ts.State.CLOSED
            (vs,) = venue_sessions
            # The venue notices the drop at once and keeps the session for resume.
            with trio.fail_after(close_deadline):
                await vs.wait_state(ts.State.STALE)
            await trio.testing.wait_all_tasks_blocked()
            names = task_names()
            assert not any(n in LINK_TASKS or "reader_task" in n for n in names), names
    await trio.testing.wait_all_tasks_blocked()
    assert [n for n in task_names() if n not in baseline] == []
    gc.collect()
    assert open_fds() <= fds_before + 1


# -- one typed error out -----------------------------------------------------------------------


async def test_a_broken_connection_ends_both_links_with_connection_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            p, v, p_end, v_end = await memory_pair(nursery, ts.SessionConfig())
            await p.session.send(b"x")
            assert await v.session.receive() == b"x"
            p_end.break_()
            for control in (p, v):
                assert await control.session.wait_state(ts.State.CLOSED) is ts.State.CLOSED
                assert type(control.error) is ts.ConnectionLost
            assert p_end.closed and v_end.closed
            with pytest.raises(ts.ConnectionLost):
                await v.session.receive()


async def test_a_failing_task_is_an_internal_error_the_peer_is_told_about(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(self: VenueConnection) -> None:
        raise RuntimeError("a bug")

    # The first ratchet step (~20 s in) fails; nothing else is due then (no
    # heartbeats), so the venue's CLOSE follows the frames already sent.
    monkeypatch.setattr(VenueConnection, "handle_rotation_timer", broken)
    config = ts.SessionConfig(heartbeat_interval=100.0, heartbeat_timeout=300.0)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            p, v, _, _ = await memory_pair(nursery, config)
            assert await v.session.wait_state(ts.State.CLOSED) is ts.State.CLOSED
            err = v.error
            assert isinstance(err, ts.SessionError) and not isinstance(err, ExceptionGroup)
            assert err.code is ts.CloseCode.INTERNAL_ERROR and not err.remote
            assert isinstance(err.__cause__, RuntimeError)
            # The participant got CLOSE(INTERNAL_ERROR): the venue told it why.
            assert await p.session.wait_state(ts.State.CLOSED) is ts.State.CLOSED
            assert isinstance(p.error, ts.SessionClosed)
            assert p.error.code is ts.CloseCode.INTERNAL_ERROR and p.error.remote
    assert any(
        "internal error in the _rotation task" in r.getMessage() and r.exc_info
        for r in caplog.records
    )
