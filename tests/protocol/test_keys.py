"""The key schedule and per-direction key epochs on their own."""

from __future__ import annotations

import pytest

from trio_session import CloseCode, SessionError
from trio_session.protocol import _crypto as c
from trio_session.protocol._keys import MAX_EPOCH, EpochKeys, KeySchedule, KeyState
from trio_session.protocol._types import DIR_C2V, DIR_V2C

from .helpers import KX_C2V, KX_V2C, SESSION_ID, TH, current

FRAME = b"\x10" + bytes(13) + b"body"


def _same(a: c.FrameKey, b: c.FrameKey) -> bool:
    header, body = FRAME[:14], FRAME[14:]
    return a.seal(header, body, 0, True) == b.seal(header, body, 0, True)


def test_both_ends_derive_the_same_chains_and_resume_secret() -> None:
    _, mine = KeySchedule.from_handshake(KX_C2V, KX_V2C, TH, None)
    theirs_schedule, theirs = KeySchedule.from_handshake(KX_C2V, KX_V2C, TH, None)
    assert mine.c2v.message_key() == theirs.c2v.message_key()
    assert mine.v2c.message_key() == theirs.v2c.message_key()
    assert mine.c2v.message_key() != mine.v2c.message_key()
    assert mine.resume == theirs.resume and len(mine.resume) == 32
    assert mine.for_direction(DIR_C2V) is mine.c2v and mine.for_direction(DIR_V2C) is mine.v2c
    assert theirs_schedule.th == TH
    assert "hidden" in repr(theirs_schedule) and "hidden" in repr(mine)


def test_a_resume_secret_changes_every_key() -> None:
    _, fresh = KeySchedule.from_handshake(KX_C2V, KX_V2C, TH, None)
    _, resumed = KeySchedule.from_handshake(KX_C2V, KX_V2C, TH, bytes(32))
    assert fresh.c2v.message_key() != resumed.c2v.message_key()
    assert fresh.resume != resumed.resume


def test_dh_rekeys_agree_and_each_moves_the_root() -> None:
    a, _ = KeySchedule.from_handshake(KX_C2V, KX_V2C, TH, None)
    b, _ = KeySchedule.from_handshake(KX_C2V, KX_V2C, TH, None)
    args = (1, bytes(32), bytes([1]) * 32, KX_V2C, KX_C2V)
    first_a, first_b = a.rekey(*args), b.rekey(*args)
    assert first_a.c2v.message_key() == first_b.c2v.message_key()
    assert first_a.resume == first_b.resume
    second = a.rekey(*args)  # same inputs, but the root moved on
    assert second.c2v.message_key() != first_a.c2v.message_key()


def test_epoch_keys_step_tier1_then_switch_to_a_pending_dh_chain() -> None:
    _, chains = KeySchedule.from_handshake(KX_C2V, KX_V2C, TH, None)
    keys = EpochKeys(DIR_C2V, SESSION_ID, chains.c2v, now=5.0)
    assert (keys.epoch, keys.state, keys.epoch_started) == (0, KeyState.STEADY, 5.0)
    assert _same(keys.frame_key, c.FrameMac(chains.c2v.message_key(), SESSION_ID, DIR_C2V))
    chain, mac = keys.candidate()
    assert chain.message_key() == chains.c2v.step().message_key()
    keys.frames_in_epoch = 3
    assert keys.advance(chain, mac, now=6.0) is False  # a tier-1 step
    assert (keys.epoch, keys.frames_in_epoch, keys.epoch_started) == (1, 0, 6.0)
    assert _same(keys.frame_key, mac)

    keys.install_pending(chains.v2c)
    assert current(keys.state) is KeyState.DH_PENDING
    chain, mac = keys.candidate()
    assert chain is chains.v2c
    assert keys.advance(chain, mac, now=7.0) is True  # the DH switch
    assert (keys.epoch, keys.state) == (2, KeyState.STEADY)

    keys.switch_to(chains.c2v, now=8.0)  # a sender's DH switch in one call
    assert keys.epoch == 3 and current(keys.state) is KeyState.STEADY
    assert _same(keys.frame_key, c.FrameMac(chains.c2v.message_key(), SESSION_ID, DIR_C2V))
    assert "epoch=3" in repr(keys)


def test_the_epoch_space_ends_with_session_expired() -> None:
    _, chains = KeySchedule.from_handshake(KX_C2V, KX_V2C, TH, None)
    keys = EpochKeys(DIR_V2C, SESSION_ID, chains.v2c, now=0.0)
    keys.epoch = MAX_EPOCH - 1
    keys.advance(*keys.candidate(), now=1.0)
    assert keys.epoch == MAX_EPOCH
    with pytest.raises(SessionError) as info:
        keys.advance(*keys.candidate(), now=2.0)
    assert info.value.code is CloseCode.SESSION_EXPIRED
    assert keys.epoch == MAX_EPOCH
