"""Wire format: fixed ``struct`` header, msgspec msgpack body, 16-byte tag.

Why this shape: the header is parsed with ``struct`` and checked (size, type,
epoch, sequence, tag) before the body is touched, so unauthenticated bytes never
reach the msgpack decoder after the handshake.  Bodies are msgspec Structs:
handshake bodies are msgpack *maps* (readable, extensible), hot-path bodies are
msgpack *arrays* (``array_like``) to keep per-frame cost low.  Every decode
error becomes :class:`~trio_session.FrameError`.

    frame  = header(14) || body || trailer
    header = type u8 | flags u8 | epoch u32 | seq u64      (big-endian)

Authenticated frames end in a 16-byte tag; handshake frames end in a trailer
whose length the header implies (signature and finish MAC, or resume binders).
"""

from __future__ import annotations

import enum
import struct
from typing import Annotated, Any, Final, TypeVar

import msgspec

from .._config import MODE_AEAD, MODE_MAC, MODES
from .._errors import FrameError

__all__ = [
    "HEADER",
    "HEADER_LEN",
    "MODES",
    "MODE_AEAD",
    "MODE_MAC",
    "Ack",
    "ClientFinish",
    "ClientHello",
    "Close",
    "Data",
    "FrameType",
    "Heartbeat",
    "Notice",
    "Reject",
    "Rekey",
    "RekeyAck",
    "RekeyRequest",
    "ResumeRequest",
    "ServerHello",
    "decode_body",
    "encode_body",
]

HEADER: Final = struct.Struct("!BBIQ")
HEADER_LEN: Final = HEADER.size  # 14
SIG_LEN: Final = 64
FIN_LEN: Final = 16
BINDER_ENTRY: Final = struct.Struct("!I16s")  # generation u32 || binder 16 bytes
FLAG_PROBE: Final = 0x01  # on HEARTBEAT: answer at once (FIX TestRequest)
FLAG_SYSTEM: Final = 0x02  # on DATA: the messages are session-layer notices (rejects)
PROTOCOL_VERSION: Final = 1
MAX_U64: Final = 2**64 - 1
SEQ_LIMIT: Final = 2**63  # sessions close before a sequence number reaches this


class FrameType(enum.IntEnum):
    """The ``type`` byte of the header."""

    CLIENT_HELLO = 0x01
    SERVER_HELLO = 0x02
    CLIENT_FINISH = 0x03
    REJECT = 0x04
    DATA = 0x10
    ACK = 0x11
    HEARTBEAT = 0x12
    HEARTBEAT_ACK = 0x13
    REKEY = 0x14
    REKEY_ACK = 0x15
    REKEY_REQUEST = 0x16
    CLOSE = 0x17


HANDSHAKE_TYPES: Final = frozenset(
    {FrameType.CLIENT_HELLO, FrameType.SERVER_HELLO, FrameType.CLIENT_FINISH, FrameType.REJECT}
)

Bytes16 = Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
Bytes32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
U32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
U63 = Annotated[int, msgspec.Meta(ge=0, le=SEQ_LIMIT - 1)]
KeyId = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Text = Annotated[str, msgspec.Meta(max_length=256)]


# -- handshake bodies (msgpack maps) ------------------------------------------------


class ResumeRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Resume part of ClientHello: which session, and what the participant has received."""

    session_id: Bytes16
    next_rx_seq: U63


class ClientHello(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ver: Annotated[list[U32], msgspec.Meta(min_length=1, max_length=8)]
    modes: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=16)]], msgspec.Meta(min_length=1, max_length=8)
    ]
    key_id: KeyId
    p_nonce: Bytes32
    e_p: Bytes32
    window: U63
    resume: ResumeRequest | None = None


class ServerHello(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ver: U32
    mode: Annotated[str, msgspec.Meta(max_length=16)]
    session_id: Bytes16
    v_nonce: Bytes32
    e_v: Bytes32
    ts_ms: U63
    heartbeat_ms: Annotated[int, msgspec.Meta(ge=1, le=2**31)]
    heartbeat_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=2**31)]
    resumed: bool
    next_rx_seq: U63
    window: U63
    #: The venue's next data seq: a resuming participant is caught up (its
    #: replay is complete) once it has received everything below it.
    next_tx_seq: U63 = 0
    #: Generation of the resume secret whose binder the venue accepted (resumes only).
    resume_gen: U32 | None = None


class ClientFinish(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of M3; its substance is the trailer (signature and finish MAC)."""


class Reject(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Unauthenticated handshake refusal (sent before any keys exist)."""

    code: Annotated[int, msgspec.Meta(ge=0, le=65535)]
    reason: Text = ""
    retry_after_ms: U32 | None = None


# -- post-handshake bodies (msgpack arrays) -----------------------------------------


class Data(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A batch of application messages with piggybacked ack and window."""

    ack: U63
    window: U63
    msgs: list[bytes]


class Ack(msgspec.Struct, frozen=True, array_like=True, gc=False):
    ack: U63
    window: U63


class Heartbeat(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """HEARTBEAT and HEARTBEAT_ACK: ``id`` is echoed back to measure RTT.

    ``next_seq`` is the sender's next data seq: a receiver whose ``next_rx_seq``
    is lower lost a DATA frame (e.g. a WebSocket frame mangled into something
    the WebSocket layer drops) and must fail the connection so it resumes.
    """

    id: U32
    ack: U63
    window: U63
    next_seq: U63


class Rekey(msgspec.Struct, frozen=True, array_like=True, gc=False):
    rekey_id: U32
    e_v: Bytes32


class RekeyAck(msgspec.Struct, frozen=True, array_like=True, gc=False):
    rekey_id: U32
    e_p: Bytes32


class RekeyRequest(msgspec.Struct, frozen=True, array_like=True, gc=False):
    pass


class Close(msgspec.Struct, frozen=True, array_like=True, gc=False):
    code: Annotated[int, msgspec.Meta(ge=0, le=65535)]
    reason: Text = ""
    retry_after_ms: U32 | None = None


class Notice(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A session-layer notice carried in a FLAG_SYSTEM DATA frame.

    ``kind`` 1 = reject: the peer's message ``ref_seq`` was not accepted
    (``code`` is a :class:`~trio_session.RejectCode`); the session continues.
    """

    kind: Annotated[int, msgspec.Meta(ge=0, le=255)]
    ref_seq: U63
    code: Annotated[int, msgspec.Meta(ge=0, le=65535)]
    reason: Text = ""
    retry_after_ms: U32 | None = None


NOTICE_REJECT: Final = 1
_NOTICE_DECODER: Final = msgspec.msgpack.Decoder(Notice)


def decode_notice(data: bytes) -> Notice:
    try:
        return _NOTICE_DECODER.decode(data)
    except (msgspec.MsgspecError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise FrameError(f"malformed notice: {exc}", remote=True) from exc


BODY_TYPES: Final[dict[FrameType, type[msgspec.Struct]]] = {
    FrameType.CLIENT_HELLO: ClientHello,
    FrameType.SERVER_HELLO: ServerHello,
    FrameType.CLIENT_FINISH: ClientFinish,
    FrameType.REJECT: Reject,
    FrameType.DATA: Data,
    FrameType.ACK: Ack,
    FrameType.HEARTBEAT: Heartbeat,
    FrameType.HEARTBEAT_ACK: Heartbeat,
    FrameType.REKEY: Rekey,
    FrameType.REKEY_ACK: RekeyAck,
    FrameType.REKEY_REQUEST: RekeyRequest,
    FrameType.CLOSE: Close,
}

_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODERS: Final[dict[FrameType, msgspec.msgpack.Decoder[Any]]] = {
    t: msgspec.msgpack.Decoder(cls) for t, cls in BODY_TYPES.items()
}

T = TypeVar("T", bound=msgspec.Struct)


def encode_body(body: msgspec.Struct) -> bytes:
    return _ENCODER.encode(body)


def decode_body(frame_type: FrameType, data: bytes | memoryview, expected: type[T]) -> T:
    """Decode a body of a known type; any msgspec error becomes FrameError."""
    try:
        body = _DECODERS[frame_type].decode(data)
    # msgspec raises its own errors for schema problems but plain ValueError
    # (UnicodeDecodeError) for invalid UTF-8 in map keys, and RecursionError for
    # absurd nesting: all of them are the peer's fault.
    except (msgspec.MsgspecError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise FrameError(f"malformed {frame_type.name} body: {exc}", remote=True) from exc
    if not isinstance(body, expected):  # pragma: no cover - table and caller agree
        raise FrameError(f"unexpected body for {frame_type.name}", remote=True)
    return body


def pack_header(frame_type: FrameType, flags: int, epoch: int, seq: int) -> bytes:
    return HEADER.pack(frame_type, flags, epoch, seq)


#: ``type`` byte -> FrameType; a dict lookup is several times cheaper than
#: ``FrameType(value)`` and this runs for every frame received.
_FRAME_TYPES: Final[dict[int, FrameType]] = {t.value: t for t in FrameType}


def parse_header(frame: bytes | memoryview) -> tuple[FrameType, int, int, int]:
    """Unpack and validate the header; raises FrameError for short frames or unknown types."""
    if len(frame) < HEADER_LEN:
        raise FrameError(f"frame too short for a header ({len(frame)} bytes)", remote=True)
    raw_type, flags, epoch, seq = HEADER.unpack_from(frame)
    frame_type = _FRAME_TYPES.get(raw_type)
    if frame_type is None:
        raise FrameError(f"unknown frame type 0x{raw_type:02x}", remote=True)
    return frame_type, flags, epoch, seq
