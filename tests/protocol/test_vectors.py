"""The known-answer vectors in docs/protocol.md are current and independently reproducible."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import msgspec
import nacl.bindings
import nacl.encoding
import nacl.hash
import nacl.signing

from trio_session.protocol import _vectors

SPEC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _spec_vectors() -> dict[str, Any]:
    return _vectors.extract(SPEC.read_text(encoding="utf-8"))


def test_spec_vectors_match_the_implementation() -> None:
    assert _spec_vectors() == _vectors.generate(), (
        "run: python -m trio_session.protocol._vectors --update docs/protocol.md"
    )


def test_generation_is_deterministic() -> None:
    assert _vectors.generate() == _vectors.generate()


def test_primitives_match_libsodium_directly() -> None:
    prim = _spec_vectors()["primitives"]
    raw = nacl.encoding.RawEncoder
    h = nacl.hash.blake2b(
        bytes.fromhex(prim["H"]["input"]), digest_size=32, person=b"tsess/v1 th", encoder=raw
    )
    assert h.hex() == prim["H"]["output"]
    kdf = prim["KDF"]
    out = nacl.hash.blake2b(
        bytes.fromhex(kdf["input"]),
        digest_size=32,
        key=bytes.fromhex(kdf["key"]),
        person=kdf["label"].encode(),
        encoder=raw,
    )
    assert out.hex() == kdf["output"]
    m = prim["MAC"]
    out = nacl.hash.blake2b(
        bytes.fromhex(m["input"]),
        digest_size=16,
        key=bytes.fromhex(m["key"]),
        person=b"tsess/v1 mac",
        encoder=raw,
    )
    assert out.hex() == m["output"]


def test_identities_and_key_ids_from_seeds() -> None:
    ids = _spec_vectors()["identities"]
    for ident in ids.values():
        sk = nacl.signing.SigningKey(bytes.fromhex(ident["seed"]))
        assert sk.verify_key.encode().hex() == ident["public_key"]
        kid = hashlib.blake2b(
            bytes.fromhex(ident["public_key"]), digest_size=16, person=b"tsess/v1 keyid"
        )
        assert kid.hexdigest() == ident["key_id"]


def test_handshake_signatures_and_transcript_recomputed_from_first_principles() -> None:
    vec = _spec_vectors()
    frames = {f["name"]: bytes.fromhex(f["hex"]) for f in vec["frames"]}
    m1, m2, m3 = frames["M1 ClientHello"], frames["M2 ServerHello"], frames["M3 ClientFinish"]
    v_pk = bytes.fromhex(vec["identities"]["venue"]["public_key"])
    p_pk = bytes.fromhex(vec["identities"]["participant"]["public_key"])

    def H(*parts: bytes) -> bytes:
        return hashlib.blake2b(b"".join(parts), digest_size=32, person=b"tsess/v1 th").digest()

    prefix2, sig_v, fin_v = m2[:-80], m2[-80:-16], m2[-16:]
    th2 = H(b"tsess/v1", v_pk, m1, prefix2)
    nacl.signing.VerifyKey(v_pk).verify(b"tsess/v1 server" + th2, sig_v)
    th2s = H(th2, sig_v)
    th3 = H(th2s, fin_v, p_pk)
    prefix3, sig_p, fin_p = m3[:-80], m3[-80:-16], m3[-16:]
    assert prefix3 == bytes.fromhex("0300000000000000000000000000") + b"\x80"  # header + empty map
    nacl.signing.VerifyKey(p_pk).verify(b"tsess/v1 client" + th3, sig_p)
    th3s = H(th3, sig_p)
    assert H(th3s, fin_p).hex() == vec["derived"]["th"]
    # The ServerHello body is a msgpack map carrying the session id.
    body = msgspec.msgpack.decode(prefix2[14:])
    assert body["session_id"].hex() == vec["derived"]["session_id"]
    # fin_v = MAC(KDF(kx_v2c, "tsess fin v", th2), th2s) with crypto_kx from the seeded ephemerals.
    draws = _vectors.DeterministicRandom(b"tsess vectors participant")
    draws(32)  # p_nonce
    e_pk, e_sk = nacl.bindings.crypto_kx_seed_keypair(draws(32))
    m1_body = msgspec.msgpack.decode(m1[14:])
    assert m1_body["e_p"] == e_pk
    rx, _tx = nacl.bindings.crypto_kx_client_session_keys(e_pk, e_sk, body["e_v"])
    k_fin_v = hashlib.blake2b(th2, digest_size=32, key=rx, person=b"tsess fin v").digest()
    assert (
        hashlib.blake2b(th2s, digest_size=16, key=k_fin_v, person=b"tsess/v1 mac").digest() == fin_v
    )


def test_data_frame_header_layout() -> None:
    vec = _spec_vectors()
    frame = next(
        bytes.fromhex(f["hex"]) for f in vec["frames"] if f["name"].startswith("DATA c2v seq 0")
    )
    assert frame[0] == 0x10 and frame[1] == 0
    assert int.from_bytes(frame[2:6], "big") == 0  # epoch
    assert int.from_bytes(frame[6:14], "big") == 0  # seq of the first message
    ack, window, msgs = msgspec.msgpack.decode(frame[14:-16])
    assert msgs == [b"order-1", b"order-2"] and ack == 0 and window == 1024
