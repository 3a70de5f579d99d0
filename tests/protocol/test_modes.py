"""Frame protection modes at the protocol layer: negotiation, the AEAD frame, nonces.

docs/protocol.md, "Frame protection modes" and "Frame AEAD".  The attack catalogue
(test_attacks.py) runs in both modes; this file covers what is particular to the mode
itself.
"""

from __future__ import annotations

import struct

import pytest

from trio_session import (
    AuthenticationError,
    CloseCode,
    IntegrityError,
    LocalProtocolError,
    SessionConfig,
)
from trio_session.protocol import ClientConnection, Connection, MessagesReceived, VenueConnection
from trio_session.protocol import _crypto as c
from trio_session.protocol._modes import choose_mode
from trio_session.protocol._wire import SEQ_LIMIT, FrameType

from .. import forge
from .helpers import PARTICIPANT, VENUE, Link, handshake, pump

AEAD = SessionConfig(modes=("aead",))
MAC = SessionConfig(modes=("mac",))


@pytest.mark.parametrize(
    ("offered", "accepted", "chosen"),
    [
        (["mac", "aead"], None, "mac"),  # no venue preference: the participant's order
        (["aead", "mac"], None, "aead"),
        (["mac", "aead"], ("aead", "mac"), "aead"),  # a venue preference wins
        (["mac"], ("aead", "mac"), "mac"),
        (["mac"], ("aead",), None),  # a venue that requires "aead"
        (["tls13", "aead"], None, "aead"),  # unknown names are skipped
        (["tls13"], None, None),
    ],
)
def test_the_venue_chooses_a_mode_from_the_offer(
    offered: list[str], accepted: tuple[str, ...] | None, chosen: str | None
) -> None:
    assert choose_mode(offered, accepted) == chosen


def _connect(
    p_cfg: SessionConfig, v_cfg: SessionConfig
) -> tuple[ClientConnection, VenueConnection]:
    p = ClientConnection(PARTICIPANT, VENUE.public_key, p_cfg)
    v = VenueConnection(VENUE, v_cfg)
    pump(p, v)
    v.accept(PARTICIPANT.public_key)
    pump(v, p)
    pump(p, v)
    return p, v


@pytest.mark.parametrize(
    ("p_modes", "v_modes", "mode"),
    [
        (None, None, "mac"),  # a participant without a URL offers ("mac", "aead")
        (("aead", "mac"), None, "aead"),
        (("mac", "aead"), ("aead", "mac"), "aead"),  # a venue serving without TLS
        (("mac",), None, "mac"),
        (("aead",), ("aead",), "aead"),
    ],
)
def test_both_ends_agree_on_the_negotiated_mode(
    p_modes: tuple[str, ...] | None, v_modes: tuple[str, ...] | None, mode: str
) -> None:
    p, v = _connect(SessionConfig(modes=p_modes), SessionConfig(modes=v_modes))
    assert p.mode == v.mode == mode
    assert mode in repr(p.channel) and mode in repr(v.channel)
    v.receive_data(p.send_data([b"order"]))
    assert p.receive_data(v.send_data([b"fill"])) == [MessagesReceived(0, [b"fill"])]


def test_a_venue_that_requires_aead_refuses_a_mac_only_offer_before_any_crypto() -> None:
    p = ClientConnection(PARTICIPANT, VENUE.public_key, MAC)
    v = VenueConnection(VENUE, AEAD)
    (m1,) = p.data_to_send()
    with pytest.raises(AuthenticationError) as info:
        v.receive_data(m1)
    assert info.value.code is CloseCode.VERSION_MISMATCH
    assert "['mac']" in str(info.value) and "['aead']" in str(info.value)
    v.close(info.value.code, str(info.value))
    (refusal,) = pump(v, p)
    assert refusal.to_error().code is CloseCode.VERSION_MISMATCH  # type: ignore[attr-defined]
    assert p.mode is None


def test_a_participant_refuses_a_signed_choice_it_did_not_offer() -> None:
    p = ClientConnection(PARTICIPANT, VENUE.public_key, MAC)
    v = VenueConnection(VENUE, SessionConfig())
    pump(p, v)
    v._venue_handshake._mode = "aead"  # a venue that ignores the offer
    v.accept(PARTICIPANT.public_key)
    with pytest.raises(AuthenticationError) as info:
        pump(v, p)
    assert info.value.code is CloseCode.VERSION_MISMATCH
    assert "'aead'" in str(info.value) and "['mac']" in str(info.value)


def _recording_pump(a: Connection, b: Connection, wire: list[bytes]) -> None:
    for frame in a.data_to_send():
        wire.append(frame)
        b.receive_data(frame)


def test_nothing_after_the_handshake_travels_in_clear() -> None:
    """Data, notices, heartbeats, rekeys and CLOSE: no body byte string appears on the wire."""
    p, v, _, _ = handshake(AEAD)
    wire: list[bytes] = []
    secret = b"BUY 100 XYZ @ 42.17"
    for conn, peer in ((p, v), (v, p)):
        wire.append(conn.send_data([secret]))
        peer.receive_data(wire[-1])
        peer.messages_consumed(1)
        wire.append(conn.send_data([secret], system=True))
        peer.receive_data(wire[-1])
    p.ratchet()
    wire.append(p.send_data([secret]))
    v.receive_data(wire[-1])
    v.start_rekey()
    _recording_pump(v, p, wire)  # REKEY (carries e_v')
    _recording_pump(p, v, wire)  # REKEY_ACK (carries e_p')
    p.close(CloseCode.NORMAL, secret.decode())
    _recording_pump(p, v, wire)
    assert {f[0] for f in wire} >= {FrameType.DATA, FrameType.REKEY, FrameType.CLOSE}
    assert p.epochs[0] >= 2 and v.epochs[0] == 1  # ratchet and DH switch both happened
    for frame in wire:
        assert secret not in frame and secret[:8] not in frame


def test_frames_are_as_long_in_both_modes() -> None:
    sizes = {}
    for cfg in (MAC, AEAD):
        p, v, _, _ = handshake(cfg)
        sizes[cfg.modes] = (len(p.send_data([b"x" * 100])), len(v.send_data([b"y" * 6400] * 64)))
    assert sizes[("mac",)] == sizes[("aead",)]


def test_the_nonce_separates_the_two_sequence_spaces() -> None:
    assert c.aead_nonce(7, 5, True) == struct.pack("!IQ", 7, 5)
    assert c.aead_nonce(7, 5, False) == struct.pack("!IQ", 7, 5 | 2**63)
    assert c.aead_nonce(7, SEQ_LIMIT - 1, True) != c.aead_nonce(7, 0, False)
    # The same key, epoch and seq in the two spaces: different nonces, different keystreams.
    key = c.FrameAead(bytes(32), bytes(16), 1, 0)
    header = bytes(14)
    assert key.seal(header, b"same body", 0, True) != key.seal(header, b"same body", 0, False)


def test_a_data_frame_cannot_pose_as_a_control_frame() -> None:
    """Same epoch and seq, type byte changed: the header is associated data and the nonce
    moves to the other space, so decryption fails."""
    p, v, _, _ = handshake(AEAD)
    frame = bytearray(p.send_data([b"a"]))
    frame[0] = FrameType.ACK
    with pytest.raises(IntegrityError, match="bad tag on ACK"):
        v.receive_data(bytes(frame))


def test_control_seqs_stay_below_two_to_the_63() -> None:
    p, _v, _, _ = handshake(AEAD)
    channel = forge.channel_of(p)
    channel.tx_control_seq = SEQ_LIMIT - 1
    channel.seal_control(FrameType.ACK, b"\x92\x00\x00")
    with pytest.raises(LocalProtocolError, match="control sequence space"):
        channel.seal_control(FrameType.ACK, b"\x92\x00\x00")


def test_keys_of_the_two_modes_differ_and_stay_hidden() -> None:
    chain = c.ChainKey(bytes(range(32)))
    assert chain.encryption_key() != chain.message_key()
    key = c.FrameAead(chain.encryption_key(), bytes(16), 1, 3)
    assert chain.encryption_key().hex() not in repr(key) and "epoch=3" in repr(key)


def test_a_resume_negotiates_its_own_mode() -> None:
    """The session continues exactly once across a change of mode (mac, then aead)."""
    link = Link(MAC)
    assert link.p.mode == "mac"
    link.send("p", [b"o1", b"o2"])
    link.send("v", [b"r1"])
    link.deliver(to_v=0, to_p=0)
    link.config = AEAD  # e.g. a failover to a ws:// URL
    link.cut_and_resume()
    assert link.p.mode == link.v.mode == "aead"
    link.send("p", [b"o3"])
    link.flush()
    assert link.received["v"] == [b"o1", b"o2", b"o3"]
    assert link.received["p"] == [b"r1"]
