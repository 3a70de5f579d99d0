"""Liveness on its own (beats, probes, deadlines, dead-peer detection), then back to
back through connections."""

from __future__ import annotations

import itertools

import pytest

from trio_session import HeartbeatTimeout, SessionConfig
from trio_session.protocol import (
    ConnectionState,
    ConnectionStats,
    HeartbeatAcked,
)
from trio_session.protocol._liveness import (
    ACK_DELAY,
    LivenessState,
    ParticipantLiveness,
    VenueLiveness,
)
from trio_session.protocol._wire import FLAG_PROBE, FrameType, parse_header

from .helpers import FakeClock, current, handshake, pump

STEADY = SessionConfig(heartbeat_interval=1.0, heartbeat_timeout=3.0, heartbeat_jitter=0.0)


def test_the_participant_beats_every_interval_and_probes_when_it_hears_nothing() -> None:
    stats = ConnectionStats()
    live = ParticipantLiveness(STEADY, stats, now=0.0)
    assert live.deadline(None) == 1.0 and not live.beat_due(0.5)
    live.last_rx = 0.5  # heard from the peer
    live.last_tx = 0.9  # and sent something: a busy link beats all the same (RTT)
    assert live.next_beat(1.0) == (1, False)  # a plain heartbeat
    assert live.deadline(None) == 1.5  # the probe comes first now
    assert live.next_beat(1.5) == (2, True)
    assert current(live.state) is LivenessState.PROBING and stats.probes_sent == 1
    assert live.next_beat(1.6) is None  # one probe at a time
    assert stats.heartbeats_sent == 2


def test_an_answer_ends_a_probe_and_measures_rtt_for_known_ids_only() -> None:
    stats = ConnectionStats()
    live = ParticipantLiveness(STEADY, stats, now=0.0)
    assert live.next_beat(1.0) == (1, True)
    assert live.on_heartbeat(FrameType.HEARTBEAT_ACK, 999, 1.1) == []  # unknown id
    assert current(live.state) is LivenessState.LISTENING  # any answer ends the probe
    assert live.next_beat(2.0) == (2, True)
    assert live.on_heartbeat(FrameType.HEARTBEAT_ACK, 2, 2.25) == [HeartbeatAcked(0.25)]
    assert stats.last_rtt == 0.25
    for n in range(40):  # only the last 16 send times are kept
        live.last_rx = live.last_tx = float(n)
        live.next_beat(n + 1.0)
    assert live.on_heartbeat(FrameType.HEARTBEAT_ACK, 3, 50.0) == []


def test_heartbeats_are_answered_once_with_the_latest_id() -> None:
    live = VenueLiveness(STEADY, ConnectionStats(), now=0.0)
    assert live.on_heartbeat(FrameType.HEARTBEAT, 4, 0.1) == []
    assert live.on_heartbeat(FrameType.HEARTBEAT, 5, 0.2) == []
    assert live.owed_ack == 5


def test_the_venue_only_probes_half_way_to_the_timeout() -> None:
    live = VenueLiveness(STEADY, ConnectionStats(), now=0.0)
    assert live.stale_after == 2.5  # the default, within (1.5 intervals, timeout)
    assert live.deadline(None) == 2.0
    assert live.next_beat(1.5) is None  # it never beats when idle
    assert live.next_beat(2.0) == (1, True)
    assert live.deadline(None) == 2.5  # then the silence, then only the timeout
    assert live.check(2.5) is True and live.silent
    assert live.deadline(None) == 3.0


def test_the_venue_beats_once_per_interval_while_it_sends_data() -> None:
    # So that its RTT is measured under traffic; an idle venue never beats.
    stats = ConnectionStats()
    live = VenueLiveness(STEADY, stats, now=0.0)
    live.last_data_tx = 0.2
    assert live.deadline(None) == 1.0 and not live.beat_due(0.9)
    live.last_rx = 1.0
    assert live.next_beat(1.0) == (1, False)  # a plain heartbeat, no probe
    assert live.next_beat(1.5) is None
    live.last_rx = 1.9
    assert live.next_beat(2.0) is None  # no data since that beat: idle again
    live.last_data_tx = 2.1
    assert live.deadline(None) == 2.0  # due at once: the last beat is an interval old
    assert live.on_heartbeat(FrameType.HEARTBEAT_ACK, 1, 1.25) == [HeartbeatAcked(0.25)]
    assert stats.last_rtt == 0.25


def test_deadlines_include_the_delayed_ack_and_the_timeout_kills() -> None:
    live = VenueLiveness(STEADY, ConnectionStats(), now=0.0)
    assert live.deadline(0.5) == 0.5 + ACK_DELAY
    assert live.check(2.4) is False
    assert live.check(2.5) is True  # silent: reported once
    assert live.check(2.9) is False and live.silent
    with pytest.raises(HeartbeatTimeout, match=r"no frame from the peer for 3\.000s"):
        live.check(3.0)
    assert current(live.state) is LivenessState.DEAD


def test_silence_is_reported_once_and_cleared_by_the_next_frame() -> None:
    cfg = SessionConfig(
        heartbeat_interval=1.0, stale_after=2.0, heartbeat_timeout=8.0, heartbeat_jitter=0.0
    )
    live = ParticipantLiveness(cfg, ConnectionStats(), now=0.0)
    assert live.stale_after == 2.0
    assert live.check(1.99) is False
    assert live.check(2.0) is True and live.check(2.1) is False
    # While silent the participant beats four times as often, so that it finds out
    # within a quarter interval that the link is back.
    assert live.next_beat(2.0) is not None
    assert live.deadline(None) == 2.25
    live.last_rx = 2.3
    live.heard()
    assert not live.silent and live.check(4.2) is False and live.check(4.3) is True


def test_stale_after_stays_between_one_and_a_half_intervals_and_the_timeout() -> None:
    low = SessionConfig(heartbeat_interval=2.0, stale_after=1.0, heartbeat_timeout=10.0)
    assert ParticipantLiveness(low, ConnectionStats(), 0.0).stale_after == 3.0
    high = SessionConfig(heartbeat_interval=1.0, stale_after=20.0, heartbeat_timeout=5.0)
    assert VenueLiveness(high, ConnectionStats(), 0.0).stale_after == 5.0


def test_the_participant_adopts_the_venues_timing_with_a_floor() -> None:
    live = ParticipantLiveness(SessionConfig(), ConnectionStats(), now=0.0)
    live.adopt_venue_timing(2000, 2500)
    assert (live.interval, live.timeout) == (2.0, 3.0)  # at least 1.5 intervals
    assert live.stale_after == 3.0  # within them too

    # Each beat draws the next interval from (1 - jitter) .. 1 times the interval.
    jittered = ParticipantLiveness(
        SessionConfig(heartbeat_interval=5.0, heartbeat_timeout=15.0, heartbeat_jitter=0.5),
        ConnectionStats(),
        0.0,
    )
    deadlines = set()
    for n in range(20):
        jittered.last_rx = jittered.last_tx = jittered.last_beat = float(n)
        deadlines.add(jittered.deadline(None) - n)
        jittered.next_beat(n + 5.0)
        jittered.on_heartbeat(FrameType.HEARTBEAT_ACK, 0, n + 5.0)
    assert all(2.5 <= d <= 5.0 for d in deadlines) and len(deadlines) > 1


def test_heartbeat_when_idle_and_rtt_measured() -> None:
    clock = FakeClock()
    cfg = SessionConfig(heartbeat_interval=1.0, heartbeat_timeout=3.0, heartbeat_jitter=0.0)
    p, v, _, _ = handshake(cfg, clock=clock)
    assert p.data_to_send() == []
    assert p.heartbeat_deadline() == pytest.approx(1.0)
    clock.advance(1.0)
    assert p.has_pending_control()
    frames = p.data_to_send()
    assert [parse_header(f)[0] for f in frames] == [FrameType.HEARTBEAT]
    for f in frames:
        v.receive_data(f)
    clock.advance(0.25)
    events = pump(v, p)
    assert events == [HeartbeatAcked(0.25)]
    assert p.stats.last_rtt == 0.25


def test_silent_peer_gets_probe_then_heartbeat_timeout() -> None:
    clock = FakeClock()
    cfg = SessionConfig(heartbeat_interval=1.0, heartbeat_timeout=3.0, heartbeat_jitter=0.0)
    p, _v, _, _ = handshake(cfg, clock=clock)
    clock.advance(1.0)
    (probe,) = p.data_to_send()
    assert parse_header(probe)[:2] == (FrameType.HEARTBEAT, FLAG_PROBE)
    p.handle_heartbeat_timer()  # not dead yet
    assert p.heartbeat_deadline() == pytest.approx(2.0)  # next idle beat
    clock.advance(1.0)
    (beat,) = p.data_to_send()
    assert parse_header(beat)[:2] == (FrameType.HEARTBEAT, 0)  # one probe outstanding only
    clock.advance(1.0)
    assert p.heartbeat_deadline() <= clock.now
    with pytest.raises(HeartbeatTimeout):
        p.handle_heartbeat_timer()
    assert current(p.state) is ConnectionState.ERROR


def test_only_the_participant_beats_on_an_idle_link_with_jittered_intervals() -> None:
    # Idle links cost one HEARTBEAT + one HEARTBEAT_ACK per interval (not two of
    # each), and the beats of many sessions spread out.
    clock = FakeClock()
    cfg = SessionConfig(heartbeat_interval=1.0, heartbeat_timeout=3.0, heartbeat_jitter=0.2)
    p, v, _, _ = handshake(cfg, clock=clock)
    beats_at: list[float] = []
    venue_types: list[FrameType] = []
    for _ in range(2000):  # 20 s in 10 ms steps
        clock.advance(0.01)
        v.handle_heartbeat_timer()
        p.handle_heartbeat_timer()
        for f in p.data_to_send():
            if parse_header(f)[0] is FrameType.HEARTBEAT:
                beats_at.append(clock.now)
            v.receive_data(f)
        for f in v.data_to_send():
            venue_types.append(parse_header(f)[0])
            p.receive_data(f)
    gaps = [b - a for a, b in itertools.pairwise(beats_at)]
    assert venue_types and set(venue_types) == {FrameType.HEARTBEAT_ACK}
    assert len(venue_types) == len(beats_at)
    assert all(0.8 - 0.011 <= g <= 1.0 + 0.011 for g in gaps), gaps
    assert max(gaps) - min(gaps) >= 0.05  # jittered, not a fixed period
    assert p.stats.last_rtt is not None and v.stats.heartbeats_sent == 0


def test_venue_probes_a_silent_participant_half_way_to_the_timeout() -> None:
    clock = FakeClock()
    cfg = SessionConfig(heartbeat_interval=1.0, heartbeat_timeout=3.0)
    _p, v, _, _ = handshake(cfg, clock=clock)
    assert v.data_to_send() == []
    assert v.heartbeat_deadline() == pytest.approx(2.0)
    clock.advance(1.99)
    assert not v.has_pending_control()
    clock.advance(0.01)
    (probe,) = v.data_to_send()
    assert parse_header(probe)[:2] == (FrameType.HEARTBEAT, FLAG_PROBE)
    assert v.heartbeat_deadline() == pytest.approx(2.5)  # then the silence (STALE) ...
    clock.advance(0.5)
    assert v.handle_heartbeat_timer() is True and v.peer_silent
    assert v.heartbeat_deadline() == pytest.approx(3.0)  # ... then only the timeout
    clock.advance(0.5)
    with pytest.raises(HeartbeatTimeout):
        v.handle_heartbeat_timer()
