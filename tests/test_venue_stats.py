"""``VenueServer.stats()``: the numbers an operator's metrics need, and RTT under traffic.

Totals include ended sessions (they never go backwards); gauges are the live
sessions'.  A session's RTT is measured by heartbeats on both ends, including
while it is busy (today's participant beats every interval; the venue while it
sends data).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_session as ts
from trio_session.testing import memory_venue

from .runtime_helpers import OTHER, PARTICIPANT, VENUE, Echo, registry, url, venue


async def test_stats_count_sessions_messages_outages_and_refusals(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(120):
        async with memory_venue(Echo(), VENUE, registry()) as mv:
            empty = mv.stats()
            assert empty.sessions["live"] == 0 and empty.sessions_opened == 0
            async with mv.connect(PARTICIPANT) as session:
                for i in range(10):
                    await session.send(b"%d" % i)
                    await session.receive()
                live = mv.stats()
                assert live.sessions["live"] == 1 and live.sessions_opened == 1
                assert live.messages_received == 10 and live.messages_sent == 10
                assert live.bytes_received > 10 and live.bytes_sent > 10
                # One outage of 3 s with many failed attempts: one STALE spell each side.
                mv.break_all()
                mv.refuse_connections()
                await trio.sleep(3)
                assert mv.stats().sessions["stale"] == 1
                mv.refuse_connections(False)
                await session.wait_state(ts.State.LIVE)
                await session.send(b"again")
                await session.receive()
                assert session.stats.stale_spells == 1
                assert session.stats.resumes == 1
            with pytest.raises(ts.AuthenticationError):
                async with mv.connect(OTHER):
                    pass
            await trio.sleep(1)
            after = mv.stats()
    assert after.sessions == {
        "connecting": 0,
        "live": 0,
        "stale": 0,
        "resuming": 0,
        "closed": 0,
    }
    assert after.logouts == 1 and after.sessions_lost == 0 and after.resets == 0
    assert after.messages_received == 11 and after.messages_sent == 11  # kept after the end
    assert after.resumes == 1 and after.stale_spells == 1 and after.connections == 2
    assert after.handshake_refusals == {"UNKNOWN_KEY": 1}
    assert after.outbound_depth == after.inbound_depth == after.unacked == 0


async def test_rtt_is_measured_on_both_ends_under_traffic() -> None:
    config = ts.SessionConfig(heartbeat_interval=0.2, stale_after=1.0, heartbeat_timeout=2.0)

    async def stream(session: ts.Session) -> None:
        async for message in session:  # every message answered: the venue is busy
            await session.send(message)

    with trio.fail_after(30):
        async with (
            venue(stream, config=config) as server,
            ts.connect(url(server), PARTICIPANT, VENUE.public_key, config=config) as session,
        ):
            deadline = trio.current_time() + 1.0
            while trio.current_time() < deadline:  # never idle: a message every ms
                await session.send(b"tick")
                await session.receive()
                await trio.sleep(0.001)
            participant_rtt = session.stats.rtt
            (venue_side,) = server.sessions
            venue_rtt = venue_side.stats.rtt
            stats = server.stats()
    assert participant_rtt is not None and 0 < participant_rtt < 0.5
    assert venue_rtt is not None and 0 < venue_rtt < 0.5
    assert len(stats.rtt) == 1 and stats.rtt[0] > 0
