"""Forging frames for attack tests, through the public sans-IO surface only.

An attacker who holds a connection's keys (a hostile but authenticated peer, or
a thief of the current traffic key) can seal any header and body.  These helpers
do exactly that with :meth:`Connection.channel <trio_session.protocol.Connection.channel>`,
so attack tests never reach into a connection's private state and survive
refactors of it.
"""

from __future__ import annotations

from trio_session.protocol import Connection
from trio_session.protocol._channel import Channel
from trio_session.protocol._crypto import TAG_LEN, FrameKey
from trio_session.protocol._wire import HEADER, Data, FrameType, encode_body


def channel_of(conn: Connection) -> Channel:
    """The connection's authenticated channel (the handshake must have completed)."""
    channel = conn.channel
    assert channel is not None, f"{conn!r} has no keys yet"
    return channel


def seal(
    conn: Connection, frame_type: FrameType, body: bytes, *, seq: int, flags: int = 0
) -> bytes:
    """A frame with any type, seq and body, validly tagged under ``conn``'s sending key."""
    return channel_of(conn).seal(frame_type, flags, seq, body)


def seal_control(conn: Connection, frame_type: FrameType, body: bytes, flags: int = 0) -> bytes:
    """A control frame with ``conn``'s next control seq, validly tagged."""
    return channel_of(conn).seal_control(frame_type, body, flags)


def current_sending_key(conn: Connection) -> FrameKey:
    """The frame key (MAC or AEAD) of ``conn``'s current sending epoch, as a thief would
    keep it."""
    return channel_of(conn).tx.frame_key


def seal_under(key: FrameKey, frame_type: FrameType, body: bytes, *, epoch: int, seq: int) -> bytes:
    """A frame sealed with a kept ``key`` whatever epoch the sender has moved to."""
    return key.seal(HEADER.pack(frame_type, 0, epoch, seq), body, seq, frame_type is FrameType.DATA)


def data_body(ack: int, window: int, msgs: list[bytes]) -> bytes:
    """A DATA body (ack, window, messages)."""
    return encode_body(Data(ack, window, msgs))


def change_body_tail(frame: bytes, old: bytes, new: bytes) -> bytes:
    """``frame`` whose body ends in ``old`` (a message), changed to end in ``new``, the
    tag kept.  In mode "mac" the body is in clear; in mode "aead" the stream cipher puts
    the same bytes at the same place, so XOR-ing ``old ^ new`` in is the classic bit-flip
    on a ciphertext.  Either way only the tag can catch it."""
    end = len(frame) - TAG_LEN
    start = end - len(old)
    flipped = bytes(a ^ b ^ c for a, b, c in zip(frame[start:end], old, new, strict=True))
    return frame[:start] + flipped + frame[end:]
