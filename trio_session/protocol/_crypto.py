"""Cryptographic primitives of the session protocol (docs/protocol.md, "Primitives").

Why these choices: Ed25519 and X25519 only in the handshake and DH rekeys
(public-key operations cost tens of microseconds each); on the hot path a keyed
BLAKE2b-128 MAC from the stdlib ``hashlib`` (byte-identical to libsodium's
``crypto_generichash`` but ~8x cheaper than going through cffi).  PyNaCl has
no KDF binding, so ``kdf`` is keyed BLAKE2b-256 with the label as BLAKE2b's
``person`` parameter, the same construction as libsodium's ``crypto_kdf``.
Tags are compared with ``hmac.compare_digest``.

A connection protects its frames in one of two modes (docs/protocol.md,
"Frame protection"): :class:`FrameMac` (mode ``"mac"``: the body in clear, a
BLAKE2b tag) or :class:`FrameAead` (mode ``"aead"``: the body encrypted with
ChaCha20-Poly1305, the header as associated data).  Both seal and open whole
frames, so the channel does not care which one it holds.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Final

import nacl.bindings
import nacl.exceptions
import nacl.signing

from .._config import MODE_AEAD, MODE_MAC
from .._errors import AuthenticationError, CloseCode
from ._wire import HEADER_LEN

__all__ = [
    "TAG_LEN",
    "ChainKey",
    "FrameAead",
    "FrameKey",
    "FrameMac",
    "aead_decrypt",
    "aead_encrypt",
    "aead_nonce",
    "frame_key",
    "h",
    "kdf",
    "kx_client",
    "kx_keypair",
    "kx_server",
    "mac",
    "verify_signature",
]

TAG_LEN: Final = 16
KEY_LEN: Final = 32

PERSON_TH: Final = b"tsess/v1 th"
PERSON_MAC: Final = b"tsess/v1 mac"

# KDF labels (BLAKE2b ``person``, at most 16 bytes each).
L_FIN_V: Final = b"tsess fin v"
L_FIN_P: Final = b"tsess fin p"
L_ROOT: Final = b"tsess root"
L_CK_C2V: Final = b"tsess ck c2v"
L_CK_V2C: Final = b"tsess ck v2c"
L_RESUME: Final = b"tsess resume"
L_MK: Final = b"tsess mk"
L_EK: Final = b"tsess ek"
L_CK: Final = b"tsess ck"
L_DH: Final = b"tsess dh"
L_BINDER: Final = b"tsess binder"

# Signature context prefixes (domain separation between the two signers).
SIG_CTX_SERVER: Final = b"tsess/v1 server"
SIG_CTX_CLIENT: Final = b"tsess/v1 client"
SIG_CTX_REKEY: Final = b"tsess/v1 rekey"


def h(*parts: bytes) -> bytes:
    """Transcript hash H: BLAKE2b-256 with person ``tsess/v1 th`` over the concatenation."""
    hasher = hashlib.blake2b(digest_size=32, person=PERSON_TH)
    for part in parts:
        hasher.update(part)
    return hasher.digest()


def kdf(key: bytes, label: bytes, data: bytes) -> bytes:
    """KDF(k, label, x) = BLAKE2b-256(x, key=k, person=label)."""
    return hashlib.blake2b(data, digest_size=32, key=key, person=label).digest()


def mac(key: bytes, data: bytes) -> bytes:
    """MAC(k, x) = BLAKE2b-128(x, key=k, person=``tsess/v1 mac``)."""
    return hashlib.blake2b(data, digest_size=TAG_LEN, key=key, person=PERSON_MAC).digest()


class FrameMac:
    """Per-(epoch, direction) frame MAC with the key and the session prefix absorbed once.

    Why: keyed BLAKE2b spends a whole compression on the key block; copying a
    prepared state is cheaper than re-keying for every frame.  The MAC input is
    ``session_id || dir || frame_without_tag`` (docs/protocol.md, "Frame MAC").
    """

    __slots__ = ("_base",)

    def __init__(self, key: bytes, session_id: bytes, direction: int) -> None:
        base = hashlib.blake2b(digest_size=TAG_LEN, key=key, person=PERSON_MAC)
        base.update(session_id)
        base.update(bytes((direction,)))
        self._base = base

    def tag(self, data: bytes | memoryview) -> bytes:
        hasher = self._base.copy()
        hasher.update(data)
        return hasher.digest()

    def verify(self, data: bytes | memoryview, tag: bytes | memoryview) -> bool:
        return hmac.compare_digest(self.tag(data), tag)

    def seal(self, header: bytes, body: bytes, seq: int, data: bool) -> bytes:
        """``header || body || tag`` (``seq`` and ``data`` only matter to the AEAD)."""
        frame = header + body
        hasher = self._base.copy()
        hasher.update(frame)
        return frame + hasher.digest()

    def open(self, frame: bytes, seq: int, data: bool) -> memoryview | None:
        """The body of a frame whose tag verifies, else None."""
        view = memoryview(frame)
        if hmac.compare_digest(self.tag(view[:-TAG_LEN]), view[-TAG_LEN:]):
            return view[HEADER_LEN:-TAG_LEN]
        return None

    def __repr__(self) -> str:
        return "<FrameMac (key hidden)>"


#: The AEAD nonce: u32 epoch || u64 (seq, with the top bit set for control frames).
_NONCE: Final = struct.Struct("!IQ")
#: Separates the control seq space from the data seq space in the nonce; both
#: stay below 2^63 (docs/protocol.md, "Nonces").
CONTROL_NONCE_BIT: Final = 1 << 63
_encrypt: Final = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt
_decrypt: Final = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt


def aead_encrypt(plaintext: bytes, ad: bytes, nonce: bytes, key: bytes) -> bytes:
    """ChaCha20-Poly1305 (IETF): ``ciphertext || tag``."""
    return _encrypt(plaintext, ad, nonce, key)


def aead_decrypt(ciphertext: bytes, ad: bytes, nonce: bytes, key: bytes) -> bytes:
    """ChaCha20-Poly1305 (IETF) decryption; raises ``nacl.exceptions.CryptoError``."""
    return _decrypt(ciphertext, ad, nonce, key)


def aead_nonce(epoch: int, seq: int, data: bool) -> bytes:
    """The 12-byte nonce of a frame: unique per key, since each key is one epoch of one
    direction of one connection, and the two seq spaces never overlap."""
    return _NONCE.pack(epoch, seq if data else seq | CONTROL_NONCE_BIT)


class FrameAead:
    """Per-(epoch, direction) ChaCha20-Poly1305 (IETF, RFC 8439) for mode ``"aead"``.

    The body is encrypted; the associated data is ``session_id || dir || header``,
    the same prefix the MAC covers, and the 16-byte Poly1305 tag ends the frame
    where the MAC tag would.  Why ChaCha20-Poly1305 with a 12-byte nonce rather
    than XChaCha20: the nonces are counters, never random, so the longer nonce
    buys nothing, and the IETF construction is in every mainstream library.
    """

    __slots__ = ("_epoch", "_key", "_prefix")

    def __init__(self, key: bytes, session_id: bytes, direction: int, epoch: int) -> None:
        self._key = key
        self._prefix = session_id + bytes((direction,))
        self._epoch = epoch

    def seal(self, header: bytes, body: bytes, seq: int, data: bool) -> bytes:
        """``header || ciphertext || tag``; the frame is as long as in mode ``"mac"``."""
        nonce = aead_nonce(self._epoch, seq, data)
        return header + _encrypt(body, self._prefix + header, nonce, self._key)

    def open(self, frame: bytes, seq: int, data: bool) -> memoryview | None:
        """The decrypted body of a frame whose tag verifies, else None."""
        nonce = aead_nonce(self._epoch, seq, data)
        try:
            body = _decrypt(frame[HEADER_LEN:], self._prefix + frame[:HEADER_LEN], nonce, self._key)
        except nacl.exceptions.CryptoError:
            return None
        return memoryview(body)

    def __repr__(self) -> str:
        return f"<FrameAead epoch={self._epoch} (key hidden)>"


#: What protects the frames of one epoch of one direction, in either mode.
FrameKey = FrameMac | FrameAead


class ChainKey:
    """A per-direction KDF chain: the tier-1 symmetric ratchet (docs/protocol.md,
    "Epoch keys and the tier-1 ratchet").

    ``message_key()`` is the MAC key of the current epoch; ``step()`` returns the
    next chain key, and the caller drops this one (forward secrecy: a key stolen
    later cannot recompute earlier epochs' keys).
    """

    __slots__ = ("_ck",)

    def __init__(self, ck: bytes) -> None:
        self._ck = ck

    def message_key(self) -> bytes:
        """Mode ``"mac"``: the epoch's BLAKE2b MAC key."""
        return kdf(self._ck, L_MK, b"\x01")

    def encryption_key(self) -> bytes:
        """Mode ``"aead"``: the epoch's ChaCha20-Poly1305 key (its own label, so the two
        modes never share a key)."""
        return kdf(self._ck, L_EK, b"\x01")

    def step(self) -> ChainKey:
        return ChainKey(kdf(self._ck, L_CK, b"\x02"))

    def __repr__(self) -> str:
        return "<ChainKey (hidden)>"


def frame_key(
    mode: str, chain: ChainKey, session_id: bytes, direction: int, epoch: int
) -> FrameKey:
    """The frame protection of one epoch of one direction in ``mode``."""
    if mode == MODE_AEAD:
        return FrameAead(chain.encryption_key(), session_id, direction, epoch)
    assert mode == MODE_MAC, mode
    return FrameMac(chain.message_key(), session_id, direction)


#: What PyNaCl raises for an invalid (e.g. low-order) peer key.
_KX_ERRORS: Final = (
    nacl.exceptions.CryptoError,
    nacl.exceptions.RuntimeError,
    TypeError,
    ValueError,
)


def kx_keypair(seed: bytes) -> tuple[bytes, bytes]:
    """X25519 ephemeral key pair ``(pk, sk)`` from a 32-byte seed (crypto_kx_seed_keypair).

    Seeded so that known-answer vectors are reproducible; callers pass fresh
    randomness in production.
    """
    pk, sk = nacl.bindings.crypto_kx_seed_keypair(seed)
    return pk, sk


def kx_client(pk: bytes, sk: bytes, server_pk: bytes) -> tuple[bytes, bytes]:
    """Participant side of crypto_kx: returns ``(kx_c2v, kx_v2c)``.

    Raises AuthenticationError for an invalid (e.g. low-order) peer key.
    """
    try:
        rx, tx = nacl.bindings.crypto_kx_client_session_keys(pk, sk, server_pk)
    except _KX_ERRORS as exc:
        raise AuthenticationError(
            "invalid ephemeral key from venue", code=CloseCode.AUTH_FAILED, remote=True
        ) from exc
    return tx, rx


def kx_server(pk: bytes, sk: bytes, client_pk: bytes) -> tuple[bytes, bytes]:
    """Venue side of crypto_kx: returns ``(kx_c2v, kx_v2c)``."""
    try:
        rx, tx = nacl.bindings.crypto_kx_server_session_keys(pk, sk, client_pk)
    except _KX_ERRORS as exc:
        raise AuthenticationError(
            "invalid ephemeral key from participant", code=CloseCode.AUTH_FAILED, remote=True
        ) from exc
    return rx, tx


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Ed25519 detached-signature check that never raises for bad input."""
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (
        nacl.exceptions.BadSignatureError,
        nacl.exceptions.ValueError,
        nacl.exceptions.TypeError,
        ValueError,
        TypeError,
    ):
        return False
    return True


def u32(value: int) -> bytes:
    return struct.pack("!I", value)
