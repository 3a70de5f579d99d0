"""docs/protocol.md against the code, for the parts a strict peer depends on that the
vectors do not cover: notices, observable close codes, the venue's WebSocket-level limits,
the vectors' random stream and heartbeat flag, the key id label, and the key file formats.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import nacl.bindings
import pytest

import trio_session as ts
from trio_session._identity import key_id_for
from trio_session._transport import observable_close
from trio_session._transport_guard import MAX_FRAGMENTS, MAX_REQUEST_HEAD
from trio_session.protocol._vectors import BEGIN, END, generate
from trio_session.protocol._wire import Notice, encode_body

ROOT = Path(__file__).resolve().parent.parent
SPEC = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The text of the section headed ``title`` (up to the next heading of any level)."""
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#)", SPEC, re.MULTILINE | re.DOTALL)
    assert match, f"no section {title!r} in docs/protocol.md"
    return match[1]


def hexbytes(spaced: str) -> bytes:
    return bytes.fromhex(spaced.replace(" ", ""))


def test_notice_examples_are_what_the_code_encodes() -> None:
    text = section("Notice (array; each message of a SYSTEM `DATA` frame)")
    examples = re.findall(r"`(95 [0-9a-f ]+)`", text)
    assert [hexbytes(e) for e in examples] == [
        encode_body(Notice(1, 5, 3, "out of hours")),
        encode_body(Notice(1, 5, 2, "", 1500)),
    ]
    # The reject codes named in the table are the library's.
    for value, name in re.findall(r"`(\d)` (INVALID|RATE_LIMITED|REJECTED)", text):
        assert ts.RejectCode[name] == int(value)


def test_flag_table_names_system_on_data() -> None:
    flags = section("Flags")
    assert "| `DATA` | bit 1 (`0x02`) = `SYSTEM`" in flags
    assert "`0x02` on a `DATA` frame" in section("Receiving an authenticated frame")


def test_observable_close_codes_follow_the_table() -> None:
    text = section("Observable close codes")
    for code in ts.CloseCode:
        ws_code, reason = observable_close(code)
        assert ws_code == (1000 if code == 0 else 4000 + code)
        assert reason == code.name
        assert 1000 <= ws_code <= 4999
    assert observable_close(ts.CloseCode.RATE_LIMITED, "slow down") == (
        4400,
        "RATE_LIMITED: slow down",
    )
    assert observable_close(499) == (4499, "CODE_499")
    assert observable_close(1000) == (1011, "CODE_1000")  # not representable
    for ws_code, name in re.findall(r"`(4\d{3}) \"([A-Z_]+)\"`", text):
        assert observable_close(ts.CloseCode[name]) == (int(ws_code), name)


def test_websocket_level_limits_quoted_are_the_defaults() -> None:
    text = section("WebSocket-level checks of the venue")
    config = ts.SessionConfig()
    assert f"`max_preauth_connections` ({config.max_preauth_connections})" in text
    assert f"`max_preauth_per_address` ({config.max_preauth_per_address})" in text
    assert f"`websocket_ping_rate` ({config.websocket_ping_rate:g})" in text
    assert f"more than {MAX_FRAGMENTS} frames" in text
    assert f"at most {MAX_REQUEST_HEAD // 1024} KiB" in text
    assert f"`handshake_timeout` ({config.handshake_timeout:g} s)" in text


def test_keyid_label_row() -> None:
    row = next(line for line in SPEC.splitlines() if "`tsess/v1 keyid`" in line and "|" in line)
    assert b"tsess/v1 keyid".hex() in row and "| 14 |" in row
    pk = bytes(range(32))
    expected = hashlib.blake2b(pk, digest_size=16, person=b"tsess/v1 keyid").hexdigest()
    assert (
        ts.Identity.from_seed(bytes(32)).key_id
        == hashlib.blake2b(
            ts.Identity.from_seed(bytes(32)).public_key, digest_size=16, person=b"tsess/v1 keyid"
        ).hexdigest()
    )
    assert key_id_for(pk) == expected


def _vectors() -> dict[str, object]:
    block = SPEC[SPEC.index(BEGIN) : SPEC.index(END)]
    data: dict[str, object] = json.loads(block[block.index("{") : block.rindex("}") + 1])
    assert data == json.loads(json.dumps(generate()))
    return data


def _block(label: str, k: int) -> bytes:
    return hashlib.blake2b(label.encode("ascii") + k.to_bytes(4, "big")).digest()


def test_random_stream_as_described_reproduces_the_vectors() -> None:
    """Every draw starts a fresh 64-byte block: the spec's reading, checked on the bytes."""
    data = _vectors()
    rnd = data["random"]
    assert isinstance(rnd, dict)
    frames = {f["name"]: bytes.fromhex(f["hex"]) for f in data["frames"]}  # type: ignore[attr-defined]
    m1, m2 = frames["M1 ClientHello"], frames["M2 ServerHello"]
    p_label, v_label = rnd["participant_label"], rnd["venue_label"]
    p_nonce = _block(p_label, 0)[:32]
    e_p = nacl.bindings.crypto_kx_seed_keypair(_block(p_label, 1)[:32])[0]
    assert b"\xa7p_nonce\xc4\x20" + p_nonce in m1
    assert b"\xa3e_p\xc4\x20" + e_p in m1
    session_id = _block(v_label, 0)[:16]
    v_nonce = _block(v_label, 1)[:32]
    e_v = nacl.bindings.crypto_kx_seed_keypair(_block(v_label, 2)[:32])[0]
    assert b"\xaasession_id\xc4\x10" + session_id in m2
    assert b"\xa7v_nonce\xc4\x20" + v_nonce in m2
    assert b"\xa3e_v\xc4\x20" + e_v in m2
    # A continuous stream would have given these instead:
    assert _block(v_label, 0)[16:48] != v_nonce


def test_idle_heartbeat_vector_is_a_probe_as_the_text_says() -> None:
    data = _vectors()
    (hb,) = [f for f in data["frames"] if f["name"] == "HEARTBEAT c2v (idle 5 s)"]  # type: ignore[attr-defined]
    assert bytes.fromhex(hb["hex"])[:2] == b"\x12\x01"  # HEARTBEAT, flags = PROBE
    text = section("Heartbeats")
    assert '"HEARTBEAT c2v (idle 5 s)"' in text and "`0x01`" in text


@pytest.mark.skipif(os.name != "posix", reason="identity files are checked for mode 0600")
def test_key_file_examples_load(tmp_path: Path) -> None:
    text = section("Key files")
    identity_doc, registry_doc = re.findall(r"```json\n(.*?)```", text, re.DOTALL)
    path = tmp_path / "participant.json"
    path.write_text(identity_doc)
    path.chmod(0o600)
    identity = ts.Identity.load(path)
    vectors = _vectors()["identities"]
    assert isinstance(vectors, dict)
    assert identity.key_id == vectors["participant"]["key_id"]
    assert identity.public_key_hex == vectors["participant"]["public_key"]
    registry_path = tmp_path / "registry.json"
    registry_path.write_text(registry_doc)
    registry = ts.KeyRegistry.load(registry_path)
    assert registry.lookup(identity.key_id) == identity.public_key


def test_spec_is_self_contained() -> None:
    for page in ("protocol.md", "security.md"):
        text = (ROOT / "docs" / page).read_text(encoding="utf-8")
        assert "research/" not in text and "DESIGN" not in text, page
