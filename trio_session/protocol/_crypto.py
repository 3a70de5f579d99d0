"""Cryptographic primitives of the session protocol (docs/protocol.md, "Primitives").

Why these choices: Ed25519 and X25519 only in the handshake and DH rekeys
(public-key operations cost tens of microseconds each); on the hot path a keyed
BLAKE2b-128 MAC from the stdlib ``hashlib`` (byte-identical to libsodium's
``crypto_generichash`` but ~8x cheaper than going through cffi).  PyNaCl has
no KDF binding, so ``kdf`` is keyed BLAKE2b-256 with the label as BLAKE2b's
``person`` parameter, the same construction as libsodium's ``crypto_kdf``.
Tags are compared with ``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Final

import nacl.bindings
import nacl.exceptions
import nacl.signing

from .._errors import AuthenticationError, CloseCode

__all__ = [
    "TAG_LEN",
    "ChainKey",
    "FrameMac",
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

    def __repr__(self) -> str:
        return "<FrameMac (key hidden)>"


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
        return kdf(self._ck, L_MK, b"\x01")

    def step(self) -> ChainKey:
        return ChainKey(kdf(self._ck, L_CK, b"\x02"))

    def __repr__(self) -> str:
        return "<ChainKey (hidden)>"


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
