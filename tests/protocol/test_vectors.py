"""The known-answer vectors in docs/protocol.md are current and independently reproducible."""

from __future__ import annotations

import base64
import hashlib
import struct
from pathlib import Path
from typing import Any

import msgspec
import nacl.bindings
import nacl.encoding
import nacl.hash
import nacl.signing

from trio_session.protocol import _crypto as c
from trio_session.protocol import _vectors

SPEC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _spec_vectors(mode: str = "mac") -> dict[str, Any]:
    return _vectors.extract(SPEC.read_text(encoding="utf-8"), mode)


def test_spec_vectors_match_the_implementation() -> None:
    assert _spec_vectors() == _vectors.generate(), (
        "run: python -m trio_session.protocol._vectors --update docs/protocol.md"
    )
    assert _spec_vectors("aead") == _vectors.generate_aead(), (
        "run: python -m trio_session.protocol._vectors --update docs/protocol.md"
    )


def test_generation_is_deterministic() -> None:
    assert _vectors.generate() == _vectors.generate()
    assert _vectors.generate_aead() == _vectors.generate_aead()


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


# -- mode "aead", recomputed with hashlib and PyNaCl only -------------------------------


def _blake(data: bytes, size: int, key: bytes = b"", person: bytes = b"") -> bytes:
    return hashlib.blake2b(data, digest_size=size, key=key, person=person).digest()


def _aead_th_and_kx() -> tuple[bytes, bytes, bytes, dict[str, Any]]:
    """The mode "aead" session's handshake hash and key exchange, from its frames alone."""
    mac_vec, vec = _spec_vectors(), _spec_vectors("aead")
    frames = {f["name"]: bytes.fromhex(f["hex"]) for f in vec["frames"]}
    m1, m2, m3 = frames["M1 ClientHello"], frames["M2 ServerHello"], frames["M3 ClientFinish"]
    v_pk = bytes.fromhex(mac_vec["identities"]["venue"]["public_key"])
    p_pk = bytes.fromhex(mac_vec["identities"]["participant"]["public_key"])

    def H(*parts: bytes) -> bytes:
        return _blake(b"".join(parts), 32, person=b"tsess/v1 th")

    th2 = H(b"tsess/v1", v_pk, m1, m2[:-80])
    nacl.signing.VerifyKey(v_pk).verify(b"tsess/v1 server" + th2, m2[-80:-16])
    th3 = H(H(th2, m2[-80:-16]), m2[-16:], p_pk)
    th = H(H(th3, m3[-80:-16]), m3[-16:])
    assert th.hex() == vec["derived"]["th"]
    draws = _vectors.DeterministicRandom(b"tsess vectors participant")
    draws(32)  # p_nonce
    e_pk, e_sk = nacl.bindings.crypto_kx_seed_keypair(draws(32))
    e_v = msgspec.msgpack.decode(m2[14:-80])["e_v"]
    rx, tx = nacl.bindings.crypto_kx_client_session_keys(e_pk, e_sk, e_v)
    return th, tx, rx, vec


def test_aead_session_negotiated_aead_in_the_signed_transcript() -> None:
    vec = _spec_vectors("aead")
    frames = {f["name"]: bytes.fromhex(f["hex"]) for f in vec["frames"]}
    assert msgspec.msgpack.decode(frames["M1 ClientHello"][14:])["modes"] == ["aead", "mac"]
    assert msgspec.msgpack.decode(frames["M2 ServerHello"][14:-80])["mode"] == "aead"
    # Same draws as the mode "mac" session, different transcript.
    assert vec["derived"]["session_id"] == _spec_vectors()["derived"]["session_id"]
    assert vec["derived"]["th"] != _spec_vectors()["derived"]["th"]


def test_aead_primitives_match_libsodium_directly() -> None:
    prim = _spec_vectors("aead")["primitives"]
    ek = prim["KDF_EK"]
    assert ek["label"] == "tsess ek" and ek["input"] == "01"
    assert _blake(b"\x01", 32, bytes.fromhex(ek["key"]), b"tsess ek").hex() == ek["output"]
    a = prim["AEAD"]
    out = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
        bytes.fromhex(a["plaintext"]),
        bytes.fromhex(a["ad"]),
        bytes.fromhex(a["nonce"]),
        bytes.fromhex(a["key"]),
    )
    assert out.hex() == a["output"] and len(out) == 3 + 16


def test_aead_frames_recomputed_from_first_principles() -> None:
    """Key schedule, nonce and associated data as the spec says, checked with PyNaCl."""
    th, kx_c2v, kx_v2c, vec = _aead_th_and_kx()
    frames = {f["name"]: bytes.fromhex(f["hex"]) for f in vec["frames"]}
    sid = bytes.fromhex(vec["derived"]["session_id"])
    root = _blake(th, 32, _blake(kx_c2v + kx_v2c, 32, person=b"tsess/v1 th"), b"tsess root")
    ck0 = _blake(th, 32, root, b"tsess ck c2v")
    ck1 = _blake(b"\x02", 32, ck0, b"tsess ck")  # the tier-1 step before the heartbeat
    cases = [
        ("DATA c2v seq 0 (2 messages)", ck0, struct.pack("!IQ", 0, 0)),
        ("HEARTBEAT c2v (idle 5 s)", ck1, struct.pack("!IQ", 1, 0 + 2**63)),
    ]
    inputs = vec["aead_inputs"]
    bodies = []
    for name, ck, nonce in cases:
        frame = frames[name]
        ek = _blake(b"\x01", 32, ck, b"tsess ek")
        ad = sid + b"\x01" + frame[:14]
        assert inputs[name] == {
            "ek": ek.hex(),
            "nonce": nonce.hex(),
            "ad": ad.hex(),
            "body": inputs[name]["body"],
        }
        body = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(frame[14:], ad, nonce, ek)
        assert body.hex() == inputs[name]["body"]
        assert len(frame) == 14 + len(body) + 16  # as long as in mode "mac"
        again = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(body, ad, nonce, ek)
        assert frame[:14] + again == frame
        bodies.append(msgspec.msgpack.decode(body))
    assert bodies[0] == [0, 1024, [b"order-1", b"order-2"]]
    hb_id, _ack, _window, next_seq = bodies[1]
    assert (hb_id, next_seq) == (1, 3)
    # The messages are not in clear, as they are in the mode "mac" frame.
    name = "DATA c2v seq 0 (2 messages)"
    mac_frames = {f["name"]: bytes.fromhex(f["hex"]) for f in _spec_vectors()["frames"]}
    assert b"order-1" in mac_frames[name] and b"order-1" not in frames[name]


def test_labels_table_is_consistent_and_matches_the_code() -> None:
    """Every row of "Labels and context strings": the hex is the ASCII, the length is right,
    and each KDF label is the constant the implementation uses."""
    text = SPEC.read_text(encoding="utf-8")
    start = text.index("### Labels and context strings")
    table = text[start : text.index("## Frame format", start)]
    rows = [r.split("|")[1:-1] for r in table.splitlines() if r.startswith("| ")][1:]
    labels = {}
    for row in rows:
        name, _use, ascii_, length, hex_ = (cell.strip().strip("`") for cell in row)
        assert ascii_.encode().hex() == hex_ and len(ascii_) == int(length), row
        labels[name] = ascii_.encode()
    assert labels["L_EK"] == c.L_EK and labels["L_MK"] == c.L_MK
    for name in ("L_FIN_V", "L_FIN_P", "L_ROOT", "L_CK_C2V", "L_CK_V2C", "L_RESUME", "L_CK"):
        assert labels[name] == getattr(c, name), name


def test_upgrade_headers_carry_m1_and_m2_in_base64url() -> None:
    """The first messages in the upgrade: each header decodes (RFC 4648 section 5, padding
    restored) to exactly the frame's bytes."""
    vec = _spec_vectors()
    frames = {f["name"]: bytes.fromhex(f["hex"]) for f in vec["frames"]}
    for which, name in (("request", "M1 ClientHello"), ("response", "M2 ServerHello")):
        header, _, value = vec["upgrade_headers"][which].partition(": ")
        assert header == "Tsess-Hello"
        assert "=" not in value and "+" not in value and "/" not in value
        raw = value.encode() + b"=" * (-len(value) % 4)
        assert base64.urlsafe_b64decode(raw) == frames[name]
