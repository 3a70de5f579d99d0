"""Identities (Ed25519 key pairs, key files) and the venue's KeyRegistry."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import pickle
import stat
import traceback
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.signing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trio_session as ts
from trio_session._identity import key_id_for

# RFC 8032 §7.1, TEST 1: seed, public key, and the signature of the empty message.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PK = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIG = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)
SEED_HEX = RFC8032_SEED.hex()

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write_private(path: Path, content: str | bytes) -> None:
    data = content.encode() if isinstance(content, str) else content
    path.write_bytes(data)
    path.chmod(0o600)


def _valid_doc() -> dict[str, Any]:
    return {
        "format": "trio_session.identity",
        "version": 1,
        "key_id": key_id_for(RFC8032_PK),
        "public_key": RFC8032_PK.hex(),
        "seed": SEED_HEX,
    }


def _full_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


# ------------------------------------------------------------------ key_id_for


def test_key_id_for_is_personalised_blake2b_hex() -> None:
    expected = hashlib.blake2b(RFC8032_PK, digest_size=16, person=b"tsess/v1 keyid").hexdigest()
    kid = key_id_for(RFC8032_PK)
    assert kid == expected
    assert len(kid) == 32
    assert kid != hashlib.blake2b(RFC8032_PK, digest_size=16).hexdigest()


def test_key_id_for_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        key_id_for(b"\x00" * 31)
    with pytest.raises(TypeError):
        key_id_for(RFC8032_PK.hex())  # type: ignore[arg-type]


# ------------------------------------------------------------------ Identity


def test_from_seed_matches_rfc8032_vector() -> None:
    ident = ts.Identity.from_seed(RFC8032_SEED)
    assert ident.public_key == RFC8032_PK
    assert ident.public_key_hex == RFC8032_PK.hex()
    assert ident.key_id == key_id_for(RFC8032_PK)
    assert ident.sign(b"") == RFC8032_SIG


def test_generate_makes_distinct_valid_identities() -> None:
    a, b = ts.Identity.generate(), ts.Identity.generate()
    assert a.public_key != b.public_key
    assert a.key_id != b.key_id
    assert isinstance(a.public_key, bytes)
    assert len(a.public_key) == 32
    assert a.key_id == key_id_for(a.public_key)


def test_signature_verifies_and_is_detached() -> None:
    ident = ts.Identity.generate()
    sig = ident.sign(b"transcript")
    assert len(sig) == 64
    verify_key = nacl.signing.VerifyKey(ident.public_key)
    assert verify_key.verify(b"transcript", sig) == b"transcript"
    with pytest.raises(nacl.exceptions.BadSignatureError):
        verify_key.verify(b"transcripT", sig)


def test_explicit_key_id() -> None:
    ident = ts.Identity.from_seed(RFC8032_SEED, key_id="desk-7")
    assert ident.key_id == "desk-7"
    assert ts.Identity.generate(key_id="x").key_id == "x"


@pytest.mark.parametrize("seed", [b"", b"\x01" * 31, b"\x01" * 33, b"\x01" * 64])
def test_from_seed_rejects_wrong_length(seed: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        ts.Identity.from_seed(seed)


def test_from_seed_rejects_non_bytes() -> None:
    with pytest.raises(TypeError):
        ts.Identity.from_seed(SEED_HEX)  # type: ignore[arg-type]


@pytest.mark.parametrize("key_id", ["", "has space", "x" * 129, "caf\u00e9", "tab\there"])
def test_from_seed_rejects_bad_explicit_key_id(key_id: str) -> None:
    with pytest.raises(ValueError, match="key_id"):
        ts.Identity.from_seed(RFC8032_SEED, key_id=key_id)


def test_repr_and_str_show_no_secret() -> None:
    ident = ts.Identity.from_seed(RFC8032_SEED)
    for text in (repr(ident), str(ident), f"{ident}"):
        assert SEED_HEX not in text
        assert ident.key_id in text
        assert ident.public_key_hex in text


def test_pickling_is_refused() -> None:
    ident = ts.Identity.from_seed(RFC8032_SEED)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="cannot be pickled") as info:
            pickle.dumps(ident, protocol=protocol)
        assert SEED_HEX not in _full_text(info.value)


def test_copy_returns_same_object() -> None:
    ident = ts.Identity.generate()
    assert copy.copy(ident) is ident
    assert copy.deepcopy(ident) is ident


def test_equality_is_identity_not_key_comparison() -> None:
    assert ts.Identity.__eq__ is object.__eq__
    a = ts.Identity.from_seed(RFC8032_SEED)
    b = ts.Identity.from_seed(RFC8032_SEED)
    assert a == a
    assert a != b


def test_no_instance_dict_exposes_the_key() -> None:
    ident = ts.Identity.from_seed(RFC8032_SEED)
    assert not hasattr(ident, "__dict__")
    assert not hasattr(ident, "seed")
    with pytest.raises(AttributeError):
        ident.key_id = "other"  # type: ignore[misc]


# ------------------------------------------------------------------ Identity files


def test_save_load_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "venue.key"
    ident = ts.Identity.from_seed(RFC8032_SEED, key_id="venue-1")
    ident.save(path)
    loaded = ts.Identity.load(path)
    assert loaded.key_id == "venue-1"
    assert loaded.public_key == RFC8032_PK
    assert loaded.sign(b"") == RFC8032_SIG
    assert json.loads(path.read_text()) == {**_valid_doc(), "key_id": "venue-1"}
    assert os.listdir(tmp_path) == ["venue.key"]  # no temporary file left behind


def test_save_accepts_str_path(tmp_path: Path) -> None:
    path = str(tmp_path / "id.json")
    ts.Identity.from_seed(RFC8032_SEED).save(path)
    assert ts.Identity.load(path).public_key == RFC8032_PK


@posix_only
def test_saved_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    ts.Identity.generate().save(path)
    assert _mode(path) == 0o600


@posix_only
def test_save_replaces_an_open_file_with_a_private_one(tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    path.write_text("old")
    path.chmod(0o644)
    ts.Identity.from_seed(RFC8032_SEED).save(path)
    assert _mode(path) == 0o600
    assert ts.Identity.load(path).public_key == RFC8032_PK


@posix_only
def test_save_is_private_even_under_a_strict_umask(tmp_path: Path) -> None:
    path = tmp_path / "id.json"
    old = os.umask(0o277)
    try:
        ts.Identity.generate().save(path)
    finally:
        os.umask(old)
    assert _mode(path) == 0o600


@posix_only
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o606, 0o700 | 0o004])
def test_load_refuses_open_permissions(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "id.json"
    ts.Identity.from_seed(RFC8032_SEED).save(path)
    path.chmod(mode)
    with pytest.raises(ValueError, match="permissions too open, chmod 600") as info:
        ts.Identity.load(path)
    assert str(path) in str(info.value)
    assert SEED_HEX not in _full_text(info.value)


def test_load_missing_file_is_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ts.Identity.load(tmp_path / "nope.json")


def _bad_identity_docs() -> list[tuple[str, str | bytes]]:
    def doc(**changes: Any) -> str:
        d = _valid_doc()
        for k, v in changes.items():
            if v is _DROP:
                del d[k]
            else:
                d[k] = v
        return json.dumps(d)

    other_pk = ts.Identity.generate().public_key_hex
    return [
        ("empty", ""),
        ("not json", "{"),
        ("binary", b"\xff\xfe" + RFC8032_SEED),
        ("seed as raw text", SEED_HEX),
        ("list", "[]"),
        ("wrong format", doc(format="trio_session.registry")),
        ("no format", doc(format=_DROP)),
        ("version 2", doc(version=2)),
        ("version str", doc(version="1")),
        ("version bool", doc(version=True)),
        ("no seed", doc(seed=_DROP)),
        ("no key_id", doc(key_id=_DROP)),
        ("no public_key", doc(public_key=_DROP)),
        ("extra field", doc(comment=SEED_HEX)),
        ("seed short", doc(seed=SEED_HEX[:-2])),
        ("seed long", doc(seed=SEED_HEX + "00")),
        ("seed not hex", doc(seed="zz" + SEED_HEX[2:])),
        ("seed number", doc(seed=12345)),
        ("seed null", doc(seed=None)),
        ("pk short", doc(public_key=RFC8032_PK.hex()[:-2])),
        ("pk not hex", doc(public_key="g" * 64)),
        ("pk mismatch", doc(public_key=other_pk)),
        ("key_id empty", doc(key_id="")),
        ("key_id space", doc(key_id="a b")),
        ("key_id number", doc(key_id=7)),
        ("key_id too long", doc(key_id="k" * 129)),
    ]


_DROP = object()


@pytest.mark.parametrize(
    ("case", "content"), [pytest.param(c, v, id=c) for c, v in _bad_identity_docs()]
)
def test_load_malformed_is_one_line_valueerror_without_seed(
    tmp_path: Path, case: str, content: str | bytes
) -> None:
    path = tmp_path / "id.json"
    _write_private(path, content)
    with pytest.raises(ValueError) as info:
        ts.Identity.load(path)
    message = str(info.value)
    assert str(path) in message, case
    assert "\n" not in message, case
    assert SEED_HEX not in _full_text(info.value), case
    assert SEED_HEX[:16] not in message, case
    # No chained decoder error either: its message could quote file content.
    exc = info.value
    assert exc.__cause__ is None, case
    assert exc.__context__ is None or exc.__suppress_context__, case


def test_load_refuses_directory_and_huge_file(tmp_path: Path) -> None:
    with pytest.raises((ValueError, IsADirectoryError)):
        ts.Identity.load(tmp_path)
    big = tmp_path / "big.json"
    _write_private(big, b" " * (1024 * 1024))
    with pytest.raises(ValueError, match="too large"):
        ts.Identity.load(big)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_load_corrupted_file_never_leaks_or_crashes(tmp_path: Path, data: st.DataObject) -> None:
    """Any corruption of a valid file loads the same key or raises a clean ValueError."""
    path = tmp_path / "fuzz.json"
    original = json.dumps(_valid_doc()).encode()
    mutation = data.draw(st.sampled_from(["truncate", "flip", "insert"]))
    pos = data.draw(st.integers(0, len(original) - 1))
    if mutation == "truncate":
        content = original[:pos]
    elif mutation == "flip":
        content = original[:pos] + bytes([original[pos] ^ data.draw(st.integers(1, 255))])
        content += original[pos + 1 :]
    else:
        content = original[:pos] + data.draw(st.binary(min_size=1, max_size=8)) + original[pos:]
    _write_private(path, content)
    try:
        ident = ts.Identity.load(path)
    except ValueError as exc:
        assert str(path) in str(exc)
        assert "\n" not in str(exc)
        assert SEED_HEX not in _full_text(exc)
    else:
        # Only a change that keeps the content valid (e.g. whitespace or key_id) loads.
        assert ident.public_key == RFC8032_PK
        assert ident.sign(b"") == RFC8032_SIG


# ------------------------------------------------------------------ KeyRegistry


@pytest.fixture
def alice() -> ts.Identity:
    return ts.Identity.generate()


@pytest.fixture
def bob() -> ts.Identity:
    return ts.Identity.generate()


def test_registry_add_lookup_contains_len(alice: ts.Identity, bob: ts.Identity) -> None:
    reg = ts.KeyRegistry()
    assert len(reg) == 0
    assert alice.key_id not in reg
    reg.add(alice.key_id, alice.public_key)
    reg.add("bob", bytearray(bob.public_key))
    assert reg.lookup(alice.key_id) == alice.public_key
    assert reg.lookup("bob") == bob.public_key
    assert type(reg.lookup("bob")) is bytes
    assert alice.key_id in reg
    assert "bob" in reg
    assert 42 not in reg
    assert len(reg) == 2
    assert "active=2" in repr(reg)


def test_registry_readd_identical_is_noop(alice: ts.Identity) -> None:
    reg = ts.KeyRegistry()
    reg.add(alice.key_id, alice.public_key)
    reg.add(alice.key_id, alice.public_key)
    assert len(reg) == 1


def test_registry_rejects_rebinding(alice: ts.Identity, bob: ts.Identity) -> None:
    reg = ts.KeyRegistry()
    reg.add("a", alice.public_key)
    with pytest.raises(ValueError, match="different key"):
        reg.add("a", bob.public_key)
    with pytest.raises(ValueError, match="already registered under key id 'a'"):
        reg.add("a2", alice.public_key)
    assert reg.lookup("a") == alice.public_key
    assert len(reg) == 1


@pytest.mark.parametrize("key_id", ["", " ", "a b", "x" * 129, "\u00e9", "nl\n", "\x7f"])
def test_registry_rejects_bad_key_id(alice: ts.Identity, key_id: str) -> None:
    reg = ts.KeyRegistry()
    with pytest.raises(ValueError, match="key_id"):
        reg.add(key_id, alice.public_key)
    assert len(reg) == 0


def test_registry_accepts_edge_key_ids(alice: ts.Identity) -> None:
    reg = ts.KeyRegistry()
    reg.add("!" + "~" * 127, alice.public_key)
    reg.add("k", ts.Identity.generate().public_key)
    assert len(reg) == 2


def test_registry_rejects_bad_public_key(alice: ts.Identity) -> None:
    reg = ts.KeyRegistry()
    with pytest.raises(ValueError, match="32 bytes"):
        reg.add("a", alice.public_key[:-1])
    with pytest.raises(ValueError, match="32 bytes"):
        reg.add("a", alice.public_key + b"\x00")
    with pytest.raises(TypeError):
        reg.add("a", alice.public_key_hex)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        reg.add(7, alice.public_key)  # type: ignore[arg-type]
    assert len(reg) == 0


def test_lookup_unknown_is_authentication_error() -> None:
    reg = ts.KeyRegistry()
    with pytest.raises(ts.AuthenticationError, match="unknown key id") as info:
        reg.lookup("nobody")
    assert info.value.code is ts.CloseCode.UNKNOWN_KEY
    assert info.value.category is ts.Category.FATAL


def test_revoke(alice: ts.Identity, bob: ts.Identity) -> None:
    reg = ts.KeyRegistry()
    reg.add("a", alice.public_key)
    reg.add("b", bob.public_key)
    assert not reg.is_revoked("a")
    reg.revoke("a")
    assert reg.is_revoked("a")
    assert not reg.is_revoked("b")
    assert not reg.is_revoked("unknown")
    assert "a" not in reg
    assert len(reg) == 1
    with pytest.raises(ts.AuthenticationError) as info:
        reg.lookup("a")
    assert info.value.code is ts.CloseCode.KEY_REVOKED
    assert reg.lookup("b") == bob.public_key


def test_revoked_key_stays_revoked(alice: ts.Identity) -> None:
    reg = ts.KeyRegistry()
    reg.add("a", alice.public_key)
    reg.revoke("a")
    with pytest.raises(ValueError, match="revoked"):
        reg.add("a", alice.public_key)
    with pytest.raises(ValueError, match="revoked"):
        reg.add("a-new", alice.public_key)  # same key, fresh id: still blocked
    with pytest.raises(ValueError, match="revoked"):
        reg.add("a", ts.Identity.generate().public_key)
    assert len(reg) == 0
    assert reg.is_revoked("a")


def test_revoke_unknown_is_valueerror() -> None:
    reg = ts.KeyRegistry()
    with pytest.raises(ValueError, match="unknown key id"):
        reg.revoke("ghost")


def test_revocation_listeners(alice: ts.Identity, caplog: pytest.LogCaptureFixture) -> None:
    reg = ts.KeyRegistry()
    reg.add("a", alice.public_key)
    calls: list[tuple[str, str]] = []

    def first(kid: str) -> None:
        calls.append(("first", kid))

    def broken(kid: str) -> None:
        calls.append(("broken", kid))
        raise RuntimeError("listener bug")

    def last(kid: str) -> None:
        calls.append(("last", kid))

    for fn in (first, broken, last, first):
        reg.add_revocation_listener(fn)
    with caplog.at_level(logging.ERROR, logger="trio_session"):
        reg.revoke("a")
    assert calls == [("first", "a"), ("broken", "a"), ("last", "a")]
    assert any("listener bug" in (r.exc_text or "") for r in caplog.records)
    assert any(r.levelno == logging.ERROR for r in caplog.records)

    reg.revoke("a")  # already revoked: nothing happens, nobody is called again
    assert len(calls) == 3


def test_remove_revocation_listener(alice: ts.Identity, bob: ts.Identity) -> None:
    reg = ts.KeyRegistry()
    reg.add("a", alice.public_key)
    reg.add("b", bob.public_key)
    seen: list[str] = []
    reg.add_revocation_listener(seen.append)
    reg.revoke("a")
    reg.remove_revocation_listener(seen.append)
    reg.revoke("b")
    assert seen == ["a"]
    with pytest.raises(ValueError, match="not registered"):
        reg.remove_revocation_listener(seen.append)
    with pytest.raises(TypeError):
        reg.add_revocation_listener("not callable")  # type: ignore[arg-type]


def test_listener_may_remove_itself(alice: ts.Identity) -> None:
    reg = ts.KeyRegistry()
    reg.add("a", alice.public_key)
    seen: list[str] = []

    def once(kid: str) -> None:
        seen.append(kid)
        reg.remove_revocation_listener(once)

    reg.add_revocation_listener(once)
    reg.revoke("a")
    assert seen == ["a"]


def test_listener_baseexception_propagates(alice: ts.Identity) -> None:
    reg = ts.KeyRegistry()
    reg.add("a", alice.public_key)

    def interrupt(kid: str) -> None:
        raise KeyboardInterrupt

    reg.add_revocation_listener(interrupt)
    with pytest.raises(KeyboardInterrupt):
        reg.revoke("a")
    assert reg.is_revoked("a")  # the revocation itself happened before listeners ran


# ------------------------------------------------------------------ KeyRegistry files


def test_registry_save_load_roundtrip(tmp_path: Path, alice: ts.Identity, bob: ts.Identity) -> None:
    reg = ts.KeyRegistry()
    reg.add(alice.key_id, alice.public_key)
    reg.add("bob", bob.public_key)
    reg.revoke("bob")
    reg.add_revocation_listener(lambda kid: None)
    path = tmp_path / "registry.json"
    reg.save(path)
    assert json.loads(path.read_text()) == {
        "format": "trio_session.registry",
        "version": 1,
        "keys": {alice.key_id: alice.public_key_hex, "bob": bob.public_key_hex},
        "revoked": ["bob"],
    }
    loaded = ts.KeyRegistry.load(path)
    assert loaded.lookup(alice.key_id) == alice.public_key
    assert loaded.is_revoked("bob")
    assert len(loaded) == 1
    with pytest.raises(ValueError, match="revoked"):
        loaded.add("bob2", bob.public_key)
    assert os.listdir(tmp_path) == ["registry.json"]


def _bad_registry_docs() -> list[tuple[str, str]]:
    pk = ts.Identity.generate().public_key_hex

    def doc(**changes: Any) -> str:
        d: dict[str, Any] = {
            "format": "trio_session.registry",
            "version": 1,
            "keys": {"a": pk},
            "revoked": [],
        }
        d.update(changes)
        return json.dumps(d)

    return [
        ("not json", "nope"),
        ("array", "[1]"),
        ("format", doc(format="trio_session.identity")),
        ("version", doc(version=9)),
        ("keys list", doc(keys=[pk])),
        ("revoked dict", doc(revoked={})),
        ("bad hex", doc(keys={"a": "x" * 64})),
        ("short key", doc(keys={"a": pk[:-2]})),
        ("bad key id", doc(keys={"a b": pk})),
        ("duplicate key", doc(keys={"a": pk, "b": pk})),
        ("revoked unknown", doc(revoked=["zz"])),
        ("revoked non-str", doc(revoked=[1])),
        ("extra", doc(extra=1)),
        ("missing", json.dumps({"format": "trio_session.registry", "version": 1, "keys": {}})),
    ]


@pytest.mark.parametrize(
    ("case", "content"), [pytest.param(c, v, id=c) for c, v in _bad_registry_docs()]
)
def test_registry_load_malformed(tmp_path: Path, case: str, content: str) -> None:
    path = tmp_path / "registry.json"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        ts.KeyRegistry.load(path)
    assert str(path) in str(info.value), case
    assert "\n" not in str(info.value), case


def test_public_names_are_exported() -> None:
    assert {"Identity", "KeyRegistry"} <= set(ts.__all__)
    assert ts.Identity.__module__ == "trio_session"
    assert repr(ts.Identity.generate()).startswith("<trio_session.Identity ")
