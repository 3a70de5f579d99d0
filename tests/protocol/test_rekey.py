"""The DH rekey machine on its own (both roles over a channel pair), then back to back
through connections."""

from __future__ import annotations

import os

import pytest

from trio_session import (
    FrameError,
    LocalProtocolError,
    RekeyTimeout,
    RemoteProtocolError,
    SessionConfig,
)
from trio_session.protocol import ClientConnection, VenueConnection
from trio_session.protocol._keys import KeyState
from trio_session.protocol._rekey import ParticipantRekey, RekeyState, VenueRekey
from trio_session.protocol._wire import FrameType, Rekey, RekeyAck, encode_body, parse_header

from .helpers import PARTICIPANT, VENUE, ChannelPair, FakeClock, Link, current, handshake, pump

S = RekeyState
CONFIG = SessionConfig(rekey_interval=60, reject_after=90, rekey_jitter=0.0, rekey_messages=100)


class Rekeying:
    """Both rekey machines attached to a channel pair, with a way to deliver frames."""

    def __init__(self, config: SessionConfig = CONFIG) -> None:
        self.clock = FakeClock()
        self.pair = ChannelPair(config, self.clock)
        now = self.clock.now
        self.v = VenueRekey(config, self.clock, os.urandom, self.pair.v.stats, now)
        self.p = ParticipantRekey(config, self.clock, os.urandom, self.pair.p.stats, now)
        self.v.attach(self.pair.v, now)
        self.p.attach(self.pair.p, now)
        self.pair.on_switch = {"p": self.p.peer_switched, "v": self.v.peer_switched}
        for record in (self.pair.p.record, self.pair.v.record):
            record.install_resume_secret(0, b"0" * 32, keep_previous=False)

    def to_participant(self, frames: list[bytes]) -> None:
        for frame in frames:
            frame_type, _, _, body = self.pair.p.open(frame)
            self.p.receive(frame_type, body)

    def to_venue(self, frames: list[bytes]) -> None:
        for frame in frames:
            frame_type, _, _, body = self.pair.v.open(frame)
            self.v.receive(frame_type, body)

    def venue_writes(self) -> list[bytes]:
        out: list[bytes] = []
        self.v.write_answers(out)
        self.v.write_requests(out)
        return out

    def participant_writes(self) -> list[bytes]:
        out: list[bytes] = []
        self.p.write_answers(out)
        self.p.write_requests(out)
        return out


def test_a_venue_rekey_switches_both_directions_by_the_switch_rules() -> None:
    r = Rekeying()
    r.v.start(open=True)
    assert current(r.v.state) is S.REKEY_OWED and r.v.has_output()
    (rekey,) = r.venue_writes()
    assert parse_header(rekey)[0] is FrameType.REKEY
    # The next v2c epoch change must be the DH one.
    assert current(r.v.state) is S.IN_FLIGHT and current(r.pair.v.hold_step)
    r.to_participant([rekey])
    assert current(r.p.state) is S.ACK_OWED and r.p.has_output()
    (ack,) = r.participant_writes()
    # Rule 1: the participant's next c2v frame uses the new chain; rule 3: the old
    # v2c key stays until the venue switches; both resume generations are kept.
    assert current(r.p.state) is S.IDLE and r.pair.p.tx.epoch == 1
    assert current(r.pair.p.rx.state) is KeyState.DH_PENDING
    assert set(r.pair.p.record.resume_secrets) == {0, 1}
    r.to_venue([ack])
    # Rule 2: the venue installs the c2v chain and switches its own sending.
    assert current(r.v.state) is S.IDLE and not r.pair.v.hold_step and r.pair.v.stats.rekeys == 1
    assert r.pair.v.tx.epoch == 1 and current(r.pair.v.rx.state) is KeyState.DH_PENDING
    assert set(r.pair.v.record.resume_secrets) == {1} and r.pair.v.record.spent_secrets
    # The first new-epoch frame each way verifies under the new keys.
    r.pair.p.open(r.pair.v.seal_control(FrameType.ACK, b"\x92\x00\x00"))
    assert r.pair.p.stats.rekeys == 1 and set(r.pair.p.record.resume_secrets) == {1}
    r.pair.v.open(r.pair.p.seal_control(FrameType.ACK, b"\x92\x00\x00"))
    assert r.pair.v.rx.epoch == 1 and r.pair.v.record.resume_secrets == {
        1: r.pair.p.record.resume_secrets[1]
    }


def test_venue_timers_start_a_rekey_and_fail_a_stalled_one() -> None:
    r = Rekeying()
    assert r.v.deadline() == 60
    r.v.on_timer(59.9)
    assert current(r.v.state) is S.IDLE
    r.v.on_timer(60)
    assert current(r.v.state) is S.REKEY_OWED and r.v.deadline() == 90
    r.venue_writes()
    r.v.on_timer(89.9)
    with pytest.raises(RekeyTimeout, match=r"not completed 90\.0s after the last one"):
        r.v.on_timer(90)


def test_venue_defers_an_early_request_and_ignores_one_while_a_rekey_runs() -> None:
    r = Rekeying()
    r.clock.advance(0.5)
    r.to_venue([r.pair.p.seal_control(FrameType.REKEY_REQUEST, b"\x90")])
    assert current(r.v.state) is S.REQUEST_DEFERRED and r.v.deadline() == 1.0
    r.v.on_timer(1.0)
    assert current(r.v.state) is S.REKEY_OWED
    r.venue_writes()
    r.to_venue([r.pair.p.seal_control(FrameType.REKEY_REQUEST, b"\x90")])
    assert current(r.v.state) is S.IN_FLIGHT  # the rekey under way answers it


def test_venue_rekeys_after_rekey_messages() -> None:
    r = Rekeying()
    r.v.count_messages(99)
    assert current(r.v.state) is S.IDLE
    r.v.count_messages(1)
    assert current(r.v.state) is S.REKEY_OWED


def test_venue_refuses_unmatched_acks_bad_keys_and_venue_frames() -> None:
    r = Rekeying()
    with pytest.raises(RemoteProtocolError, match="without a matching REKEY"):
        r.v.receive(FrameType.REKEY_ACK, memoryview(encode_body(RekeyAck(1, bytes(32)))))
    r.v.start(open=True)
    r.venue_writes()
    with pytest.raises(RemoteProtocolError, match="without a matching REKEY"):
        r.v.receive(FrameType.REKEY_ACK, memoryview(encode_body(RekeyAck(9, bytes(32)))))
    with pytest.raises(RemoteProtocolError, match="invalid ephemeral key"):
        r.v.receive(FrameType.REKEY_ACK, memoryview(encode_body(RekeyAck(1, bytes(32)))))
    with pytest.raises(FrameError, match="REKEY is not valid from a participant"):
        r.v.receive(FrameType.REKEY, memoryview(encode_body(Rekey(1, bytes(32)))))
    with pytest.raises(LocalProtocolError, match="start_rekey"):
        r.v.request(0.0, open=True)


def test_participant_asks_late_and_gives_up_later() -> None:
    r = Rekeying()
    r.p.request(0.0, open=False)
    assert current(r.p.state) is S.IDLE and r.p.deadline() == 60
    r.clock.advance(60)
    r.p.on_timer(60)
    assert current(r.p.state) is S.REQUEST_OWED and r.p.requested_at == 60
    (request,) = r.participant_writes()
    assert parse_header(request)[0] is FrameType.REKEY_REQUEST and current(r.p.state) is S.REQUESTED
    assert r.p.deadline() == 90  # reject_after - rekey_interval after the request
    with pytest.raises(RekeyTimeout):
        r.p.on_timer(90)
    with pytest.raises(LocalProtocolError, match="only the venue"):
        r.p.start(open=True)


def test_a_rekey_answers_a_request_not_yet_written() -> None:
    r = Rekeying()
    r.p.request(0.0, open=True)
    r.v.start(open=True)
    r.to_participant(r.venue_writes())
    assert current(r.p.state) is S.ACK_OWED
    (ack,) = r.participant_writes()  # no REKEY_REQUEST after it
    assert parse_header(ack)[0] is FrameType.REKEY_ACK and r.p.requested_at is None


def test_participant_refuses_overlapping_rekeys_and_wrong_frames() -> None:
    r = Rekeying()
    r.v.start(open=True)
    r.to_participant(r.venue_writes())
    rekey_again = r.pair.v.seal_control(FrameType.REKEY, encode_body(Rekey(2, bytes(32))))
    with pytest.raises(RemoteProtocolError, match="unfinished"):
        r.to_participant([rekey_again])
    with pytest.raises(FrameError, match="REKEY_REQUEST is not valid from the venue"):
        r.p.receive(FrameType.REKEY_REQUEST, memoryview(b"\x90"))


def test_transition_tables_are_closed_and_role_specific() -> None:
    for machine in (VenueRekey, ParticipantRekey):
        table = machine.transitions
        assert all(target in table for targets in table.values() for target in targets)
    assert set(VenueRekey.transitions).isdisjoint(set(ParticipantRekey.transitions) - {S.IDLE})


def test_resume_survives_cut_between_rekey_and_rekey_ack_both_ways() -> None:
    # Cut after the participant built REKEY_ACK but before the venue saw it:
    # the participant must offer both resume generations.
    link = Link(SessionConfig())
    link.v.start_rekey()
    link.collect()
    link.deliver(to_v=0, to_p=1)  # REKEY reaches the participant
    link.collect()  # REKEY_ACK built, never delivered
    assert link.p.session is not None and len(link.p.session.resume_secrets) == 2
    link.cut_and_resume()
    link.send("p", [b"after"])
    link.flush()
    assert link.received["v"] == [b"after"]
    # Cut after the venue processed REKEY_ACK but before its new-epoch frame arrived.
    link.v.start_rekey()
    link.collect()
    link.deliver(to_v=0, to_p=1)
    link.collect()
    link.deliver(to_v=1, to_p=0)
    link.cut_and_resume()
    link.send("v", [b"again"])
    link.flush()
    assert link.received["p"] == [b"again"]


def test_venue_rekeys_on_time_and_fails_a_stalled_rekey() -> None:
    clock = FakeClock()
    cfg = SessionConfig(
        rekey_interval=120, reject_after=180, rekey_jitter=0.0, ratchet_interval=1000
    )
    _p, v, _, _ = handshake(cfg, clock=clock)
    assert v.rotation_deadline() == pytest.approx(120)
    clock.advance(120)
    v.handle_rotation_timer()
    frames = v.data_to_send()
    # REKEY, plus a probe: nothing was heard from the participant for 120 s
    assert [parse_header(f)[0] for f in frames] == [FrameType.REKEY, FrameType.HEARTBEAT]
    # The participant never answers: reject_after ends the session.
    assert v.rotation_deadline() == pytest.approx(180)
    clock.advance(60)
    with pytest.raises(RekeyTimeout):
        v.handle_rotation_timer()


def test_rekey_jitter_spreads_deadlines() -> None:
    cfg = SessionConfig(rekey_jitter=0.3)
    deadlines = {handshake(cfg, clock=FakeClock())[1].rotation_deadline() for _ in range(5)}
    assert len(deadlines) > 1
    assert all(20.0 <= d <= 20.3 for d in deadlines)  # ratchet_interval 20 s comes first, jittered


def test_participant_requests_rekey_when_venue_is_late() -> None:
    clock = FakeClock()
    cfg = SessionConfig(rekey_interval=60, reject_after=90, rekey_jitter=0.0, ratchet_interval=1000)
    cfg_v = SessionConfig(
        rekey_interval=600, reject_after=900, rekey_jitter=0.0, ratchet_interval=1000
    )
    p = ClientConnection(PARTICIPANT, VENUE.public_key, cfg, clock=clock)
    v = VenueConnection(VENUE, cfg_v, clock=clock)
    pump(p, v)
    v.accept(PARTICIPANT.public_key)
    pump(v, p)
    pump(p, v)
    clock.advance(60)
    p.handle_rotation_timer()
    pump(p, v)  # REKEY_REQUEST -> venue starts a rekey
    pump(v, p)  # REKEY
    pump(p, v)  # REKEY_ACK
    assert v.stats.rekeys == 1
    v.send_data([b"x"])  # not delivered: the participant has not seen the new epoch yet


def test_early_rekey_request_is_deferred_not_dropped() -> None:
    clock = FakeClock()
    cfg = SessionConfig(
        rekey_interval=600, reject_after=900, rekey_jitter=0.0, ratchet_interval=1e4
    )
    p, v, _, _ = handshake(cfg, clock=clock)
    clock.advance(0.5)
    p.request_rekey()
    pump(p, v)  # REKEY_REQUEST within 1 s of the handshake's DH
    assert not v.has_pending_control()
    assert v.rotation_deadline() == pytest.approx(1.0)
    clock.advance(0.5)
    v.handle_rotation_timer()
    frames = v.data_to_send()
    assert FrameType.REKEY in [parse_header(f)[0] for f in frames]
