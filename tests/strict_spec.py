"""What tests/strict_peer.py needs from docs/protocol.md: constants, primitives, strict
msgpack bodies and frame protection in both modes, written from the spec's text alone
(hashlib, PyNaCl and generic msgpack; nothing of ``trio_session``).

Section names in comments are those of docs/protocol.md.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nacl.bindings
import nacl.exceptions

# -- constants (Frame format, Frame types, Flags, Close codes, Size limits) -----------------

HEADER = struct.Struct("!BBIQ")
TAG = 16
M1, M2, M3, REJECT = 0x01, 0x02, 0x03, 0x04
DATA, ACK, HEARTBEAT, HEARTBEAT_ACK = 0x10, 0x11, 0x12, 0x13
REKEY, REKEY_ACK, REKEY_REQUEST, CLOSE = 0x14, 0x15, 0x16, 0x17
FROM_VENUE = {DATA, ACK, HEARTBEAT, HEARTBEAT_ACK, REKEY, CLOSE}
PROBE, SYSTEM = 0x01, 0x02
C2V, V2C = b"\x01", b"\x02"
PROTOCOL_ERROR, INTEGRITY_FAILURE, SEQUENCE_ERROR = 100, 101, 102
AUTH_FAILED, VERSION_MISMATCH = 300, 303
RESUMABLE = {100, 101, 102, 103, 104, 105, 106}
MAX_FRAME = 2**20
MAX_MESSAGE = 2**18
SEQ_LIMIT = 2**63


class Violation(Exception):
    """The venue broke a rule of the spec; ``code`` is the close code the spec names."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code


# -- Primitives --------------------------------------------------------------------------


def H(*parts: bytes) -> bytes:
    return hashlib.blake2b(b"".join(parts), digest_size=32, person=b"tsess/v1 th").digest()


def KDF(k: bytes, label: bytes, x: bytes) -> bytes:
    return hashlib.blake2b(x, digest_size=32, key=k, person=label).digest()


def MAC(k: bytes, x: bytes) -> bytes:
    return hashlib.blake2b(x, digest_size=16, key=k, person=b"tsess/v1 mac").digest()


def key_id_of(public_key: bytes) -> str:
    """The default key id (Ed25519)."""
    return hashlib.blake2b(public_key, digest_size=16, person=b"tsess/v1 keyid").hexdigest()


def crypto_kx_client(e_sk: bytes, e_pk: bytes, venue_e: bytes, code: int) -> tuple[bytes, bytes]:
    """(kx_c2v, kx_v2c); an all-zero shared secret is refused with ``code``."""
    try:
        rx, tx = nacl.bindings.crypto_kx_client_session_keys(e_pk, e_sk, venue_e)
    except (nacl.exceptions.CryptoError, nacl.exceptions.RuntimeError, ValueError) as exc:
        raise Violation(code, "low-order ephemeral key from the venue") from exc
    return tx, rx


# -- Bodies: strict generic msgpack --------------------------------------------------------


def decode(data: bytes) -> Any:
    try:
        return msgspec.msgpack.decode(data)
    except msgspec.DecodeError as exc:
        raise Violation(PROTOCOL_ERROR, f"malformed body: {exc}") from exc


def check(ok: bool, what: str) -> None:
    if not ok:
        raise Violation(PROTOCOL_ERROR, what)


def is_uint(x: object, bits: int) -> bool:
    return type(x) is int and 0 <= x < 2**bits


def is_bin(x: object, n: int | None = None) -> bool:
    return type(x) is bytes and (n is None or len(x) == n)


def is_text(x: object) -> bool:
    return type(x) is str and len(x) <= 256


def strict_map(
    body: Any, required: dict[str, Any], optional: dict[str, tuple[Any, Any]]
) -> dict[str, Any]:
    """A handshake map: keys are str, unknown keys refused, absent optional ones take their
    default.  ``required`` maps a key to its test, ``optional`` to (default, test)."""
    check(type(body) is dict and all(type(k) is str for k in body), "body is not a str map")
    known = set(required) | set(optional)
    check(set(body) <= known, f"unknown keys {set(body) - known}")
    check(set(required) <= set(body), f"missing keys {set(required) - set(body)}")
    out: dict[str, Any] = {name: default for name, (default, _) in optional.items()} | body
    tests = required | {name: test for name, (_, test) in optional.items()}
    for name, test in tests.items():
        check(test(out[name]), f"bad field {name}={out[name]!r}")
    return out


def strict_array(body: Any, fields: list[Any], defaults: list[Any]) -> list[Any]:
    """A post-handshake array: trailing defaults may be absent, extra elements ignored."""
    check(type(body) is list, "body is not an array")
    need = len(fields) - len(defaults)
    check(len(body) >= need, f"array of {len(body)} items, need {need}")
    out = list(body[: len(fields)]) + defaults[len(body) - need :]
    for value, test in zip(out, fields, strict=True):
        check(test(value), f"bad field {value!r}")
    return out


def u63(x: object) -> bool:
    return is_uint(x, 63)


def u32(x: object) -> bool:
    return is_uint(x, 32)


def u32_or_nil(x: object) -> bool:
    return x is None or is_uint(x, 32)


SERVER_HELLO = {
    "ver": u32,
    "mode": lambda x: type(x) is str and len(x) <= 16,
    "session_id": lambda x: is_bin(x, 16),
    "v_nonce": lambda x: is_bin(x, 32),
    "e_v": lambda x: is_bin(x, 32),
    "ts_ms": u63,
    "heartbeat_ms": lambda x: type(x) is int and 1 <= x <= 2**31,
    "heartbeat_timeout_ms": lambda x: type(x) is int and 1 <= x <= 2**31,
    "resumed": lambda x: type(x) is bool,
    "next_rx_seq": u63,
    "window": u63,
}
SERVER_HELLO_OPTIONAL = {"next_tx_seq": (0, u63), "resume_gen": (None, u32_or_nil)}
REJECT_BODY = {"code": lambda x: is_uint(x, 16)}
REJECT_OPTIONAL = {"reason": ("", is_text), "retry_after_ms": (None, u32_or_nil)}
CLOSE_FIELDS = [lambda x: is_uint(x, 16), is_text, u32_or_nil]
NOTICE_FIELDS = [lambda x: is_uint(x, 8), u63, lambda x: is_uint(x, 16), is_text, u32_or_nil]


# -- Frame protection (Frame MAC, Frame AEAD, Epoch keys) ---------------------------------


class Direction:
    """One direction's chain, epoch and (for the receiving side) a pending DH chain."""

    def __init__(self, mode: str, session_id: bytes, dir_byte: bytes, chain: bytes) -> None:
        self.mode, self.sid, self.dir = mode, session_id, dir_byte
        self.epoch, self.chain = 0, chain
        self.pending: bytes | None = None
        self.frames_in_epoch = 0

    def key(self, chain: bytes) -> bytes:
        label = b"tsess ek" if self.mode == "aead" else b"tsess mk"
        return KDF(chain, label, b"\x01")

    def next_chain(self) -> bytes:
        return self.pending if self.pending is not None else KDF(self.chain, b"tsess ck", b"\x02")

    def advance(self) -> bool:
        """Epoch + 1 (the old chain forgotten); True when it was the pending DH chain."""
        dh = self.pending is not None
        self.chain, self.pending = self.next_chain(), None
        self.epoch += 1
        self.frames_in_epoch = 0
        return dh

    def seal(self, ftype: int, flags: int, seq: int, body: bytes) -> bytes:
        header = HEADER.pack(ftype, flags, self.epoch, seq)
        self.frames_in_epoch += 1
        prefix = self.sid + self.dir
        if self.mode == "mac":
            frame = header + body
            return frame + MAC(self.key(self.chain), prefix + frame)
        nonce = struct.pack("!IQ", self.epoch, seq if ftype == DATA else seq + 2**63)
        return header + nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
            body, prefix + header, nonce, self.key(self.chain)
        )

    def open(self, frame: bytes, chain: bytes, epoch: int, ftype: int, seq: int) -> bytes:
        """The body of a frame under ``chain``'s key, or INTEGRITY_FAILURE."""
        key, prefix = self.key(chain), self.sid + self.dir
        if self.mode == "mac":
            if not hmac.compare_digest(MAC(key, prefix + frame[:-TAG]), frame[-TAG:]):
                raise Violation(INTEGRITY_FAILURE, "bad tag")
            return frame[14:-TAG]
        nonce = struct.pack("!IQ", epoch, seq if ftype == DATA else seq + 2**63)
        try:
            return nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
                frame[14:], prefix + frame[:14], nonce, key
            )
        except nacl.exceptions.CryptoError:
            raise Violation(INTEGRITY_FAILURE, "frame does not decrypt") from None


# -- the session (what outlives a connection) ---------------------------------------------


@dataclass
class Session:
    session_id: bytes
    next_tx: int = 0  # our next data seq
    next_rx: int = 0  # the venue's next data seq we expect
    consumed: int = 0  # messages handed to the test
    peer_ack: int = 0
    peer_window: int = 0
    replay: list[tuple[int, list[bytes], int]] = field(default_factory=list)
    secrets: dict[int, bytes] = field(default_factory=dict)  # resume generations

    def trim(self, ack: int) -> None:
        if ack > self.next_tx:
            raise Violation(PROTOCOL_ERROR, f"ack {ack} beyond what we sent ({self.next_tx})")
        if ack > self.peer_ack:
            self.peer_ack = ack
            kept: list[tuple[int, list[bytes], int]] = []
            for seq, msgs, flags in self.replay:
                rest = [(seq + i, m) for i, m in enumerate(msgs) if seq + i >= ack]
                if rest:
                    kept.append((rest[0][0], [m for _, m in rest], flags))
            self.replay = kept


@dataclass
class Delivered:
    """Messages (or reject notices, decoded) from the venue, in stream order."""

    seq: int
    msgs: list[bytes]
    notices: list[list[Any]] | None = None


@dataclass
class Closed:
    code: int
    reason: str


@dataclass
class Lost:
    """The WebSocket closed without a CLOSE (``ws_code`` as the close frame said)."""

    ws_code: int | None


class Refused(Exception):
    """The venue refused the handshake with a REJECT."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"REJECT {code} {reason!r}")
        self.code, self.reason = code, reason
