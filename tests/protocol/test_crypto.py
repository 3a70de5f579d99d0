"""The primitives on their own: what they compute, and that bad keys fail typed."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_session import AuthenticationError, CloseCode
from trio_session.protocol import _crypto as c

from .helpers import PARTICIPANT

KEY = bytes(range(32))


@given(st.lists(st.binary(max_size=40), max_size=5))
def test_transcript_hash_is_blake2b_of_the_concatenation(parts: list[bytes]) -> None:
    expected = hashlib.blake2b(b"".join(parts), digest_size=32, person=b"tsess/v1 th").digest()
    assert c.h(*parts) == expected


def test_kdf_labels_separate_domains() -> None:
    assert c.kdf(KEY, c.L_CK_C2V, b"x") != c.kdf(KEY, c.L_CK_V2C, b"x")
    assert len(c.kdf(KEY, c.L_ROOT, b"x")) == 32
    assert c.kdf(KEY, c.L_ROOT, b"x") == c.kdf(KEY, c.L_ROOT, b"x")


@given(st.binary(max_size=200), st.sampled_from([0x01, 0x02]))
def test_frame_mac_is_the_spec_mac_over_session_direction_and_frame(
    frame: bytes, direction: int
) -> None:
    sid = bytes(range(16))
    mac = c.FrameMac(KEY, sid, direction)
    tag = mac.tag(frame)
    assert tag == c.mac(KEY, sid + bytes([direction]) + frame)
    assert len(tag) == c.TAG_LEN
    assert mac.verify(memoryview(frame), tag)
    assert not mac.verify(frame, bytes(16) if tag != bytes(16) else b"\x01" * 16)
    assert not c.FrameMac(KEY, sid, direction ^ 0x03).verify(frame, tag)  # direction bound


def test_chain_steps_forward_and_hides_its_key() -> None:
    chain = c.ChainKey(KEY)
    step = chain.step()
    assert step.message_key() != chain.message_key()
    assert step.message_key() == c.ChainKey(KEY).step().message_key()  # deterministic
    assert chain.message_key() == c.kdf(KEY, c.L_MK, b"\x01")
    assert "hidden" in repr(chain) and KEY.hex() not in repr(chain)
    assert "hidden" in repr(c.FrameMac(KEY, bytes(16), 1))


def test_key_exchange_agrees_and_refuses_low_order_keys() -> None:
    p_pk, p_sk = c.kx_keypair(bytes(32))
    v_pk, v_sk = c.kx_keypair(bytes([1]) * 32)
    assert c.kx_client(p_pk, p_sk, v_pk) == c.kx_server(v_pk, v_sk, p_pk)
    kx_c2v, kx_v2c = c.kx_client(p_pk, p_sk, v_pk)
    assert kx_c2v != kx_v2c
    with pytest.raises(AuthenticationError) as info:
        c.kx_client(p_pk, p_sk, bytes(32))  # a low-order point: all-zero shared secret
    assert info.value.code is CloseCode.AUTH_FAILED and info.value.remote
    with pytest.raises(AuthenticationError) as info:
        c.kx_server(v_pk, v_sk, b"")
    assert info.value.code is CloseCode.AUTH_FAILED and info.value.remote


def test_signature_check_never_raises() -> None:
    message = b"tsess/v1 client" + bytes(32)
    signature = PARTICIPANT.sign(message)
    assert c.verify_signature(PARTICIPANT.public_key, message, signature)
    assert not c.verify_signature(PARTICIPANT.public_key, message + b"x", signature)
    assert not c.verify_signature(PARTICIPANT.public_key, message, signature[:10])
    assert not c.verify_signature(b"short", message, signature)
    assert not c.verify_signature(bytes(32), message, bytes(64))
