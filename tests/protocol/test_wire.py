"""The wire format on its own: header layout, body codecs, typed errors for bad bytes."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_session import FrameError
from trio_session.protocol._wire import (
    BODY_TYPES,
    HANDSHAKE_TYPES,
    HEADER_LEN,
    Ack,
    ClientFinish,
    ClientHello,
    Close,
    Data,
    FrameType,
    Heartbeat,
    Notice,
    Reject,
    Rekey,
    RekeyAck,
    RekeyRequest,
    ResumeRequest,
    ServerHello,
    decode_body,
    decode_notice,
    encode_body,
    pack_header,
    parse_header,
)

SAMPLES: dict[FrameType, msgspec.Struct] = {
    FrameType.CLIENT_HELLO: ClientHello(
        ver=[1],
        modes=["mac"],
        key_id="k",
        p_nonce=bytes(32),
        e_p=bytes(32),
        window=7,
        resume=ResumeRequest(bytes(16), 3),
    ),
    FrameType.SERVER_HELLO: ServerHello(
        ver=1,
        mode="mac",
        session_id=bytes(16),
        v_nonce=bytes(32),
        e_v=bytes(32),
        ts_ms=1,
        heartbeat_ms=5000,
        heartbeat_timeout_ms=15000,
        resumed=True,
        next_rx_seq=2,
        window=9,
        next_tx_seq=4,
        resume_gen=0,
    ),
    FrameType.CLIENT_FINISH: ClientFinish(),
    FrameType.REJECT: Reject(code=1008, reason="slow down", retry_after_ms=250),
    FrameType.DATA: Data(1, 2, [b"a", b""]),
    FrameType.ACK: Ack(1, 2),
    FrameType.HEARTBEAT: Heartbeat(1, 2, 3, 4),
    FrameType.HEARTBEAT_ACK: Heartbeat(5, 6, 7, 8),
    FrameType.REKEY: Rekey(1, bytes(32)),
    FrameType.REKEY_ACK: RekeyAck(1, bytes(32)),
    FrameType.REKEY_REQUEST: RekeyRequest(),
    FrameType.CLOSE: Close(1000, "bye", None),
}


@given(
    st.sampled_from(list(FrameType)),
    st.integers(0, 255),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
)
def test_header_round_trips_for_every_type(
    frame_type: FrameType, flags: int, epoch: int, seq: int
) -> None:
    header = pack_header(frame_type, flags, epoch, seq)
    assert len(header) == HEADER_LEN == 14
    assert parse_header(header + b"body") == (frame_type, flags, epoch, seq)
    assert header[0] == frame_type.value and header[2:6] == epoch.to_bytes(4, "big")


def test_short_frames_and_unknown_types_are_frame_errors() -> None:
    with pytest.raises(FrameError, match="too short") as info:
        parse_header(bytes(HEADER_LEN - 1))
    assert info.value.remote
    with pytest.raises(FrameError, match="unknown frame type 0x7f"):
        parse_header(bytes([0x7F]) + bytes(HEADER_LEN - 1))


def test_every_body_type_round_trips() -> None:
    assert set(SAMPLES) == set(BODY_TYPES)
    for frame_type, body in SAMPLES.items():
        assert decode_body(frame_type, encode_body(body), type(body)) == body


def test_handshake_bodies_are_maps_and_hot_path_bodies_are_arrays() -> None:
    for frame_type, body in SAMPLES.items():
        raw = msgspec.msgpack.decode(encode_body(body))
        assert isinstance(raw, dict) == (frame_type in HANDSHAKE_TYPES), frame_type
    assert msgspec.msgpack.decode(encode_body(Data(1, 2, [b"x"]))) == [1, 2, [b"x"]]


@pytest.mark.parametrize(
    ("frame_type", "raw"),
    [
        (FrameType.DATA, b"\xc1"),  # never used in msgpack
        (FrameType.DATA, b"\x93\x01"),  # truncated array
        (FrameType.DATA, b"\x92\x01\x02"),  # DATA needs three fields
        (FrameType.DATA, b"\x93\xff\x02\x90"),  # negative ack
        (FrameType.DATA, b"\x81\xa1a\x01"),  # a map where an array belongs
        (FrameType.DATA, b"\x91" * 100_000 + b"\xc0"),  # absurd nesting
        (FrameType.CLIENT_HELLO, b"\x81\xa1\xff\x01"),  # invalid UTF-8 in a map key
        (FrameType.CLIENT_HELLO, b"\xdd\xff\xff\xff\xff"),  # a 2**32-element array
    ],
)
def test_malformed_bodies_are_remote_frame_errors(frame_type: FrameType, raw: bytes) -> None:
    with pytest.raises(FrameError) as info:
        decode_body(frame_type, raw, BODY_TYPES[frame_type])
    assert info.value.remote and f"malformed {frame_type.name} body" in str(info.value)


def test_handshake_bodies_refuse_unknown_fields_and_bad_sizes() -> None:
    good = msgspec.msgpack.decode(encode_body(SAMPLES[FrameType.CLIENT_HELLO]))
    with pytest.raises(FrameError):
        decode_body(FrameType.CLIENT_HELLO, msgspec.msgpack.encode({**good, "x": 1}), ClientHello)
    with pytest.raises(FrameError):
        short = {**good, "p_nonce": bytes(31)}
        decode_body(FrameType.CLIENT_HELLO, msgspec.msgpack.encode(short), ClientHello)


def test_notices_decode_or_fail_typed() -> None:
    notice = Notice(1, 42, 3, "rejected", None)
    assert decode_notice(encode_body(notice)) == notice
    with pytest.raises(FrameError, match="malformed notice"):
        decode_notice(b"\x90")
