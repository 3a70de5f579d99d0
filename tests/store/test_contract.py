"""The ``SessionStore`` contract: every store must pass these (``conftest.STORES``).

What a write means is defined once (``trio_session.store._image.Image``); the
differential test drives a store and that reference with the same random
writes and compares what they load, across reopens.
"""

from __future__ import annotations

import random
from collections import deque

import pytest
import trio

import trio_session as ts
from trio_session.protocol import Role, SessionRecord
from trio_session.store import SessionStatus, SessionWrite, StoredState, participant_key
from trio_session.store._image import Image

from .conftest import StoreUnderTest

SECRET = bytes(range(32))


def _state(
    sid: int = 1,
    *,
    role: Role = Role.VENUE,
    tx: int = 0,
    rx: int = 0,
    ack: int = 0,
    done: int = 0,
    status: SessionStatus = SessionStatus.ATTACHED,
    gen: int = 0,
    detached_at: float | None = None,
) -> StoredState:
    record = SessionRecord(sid.to_bytes(16, "big"), "alice", role, next_tx_seq=tx, peer_ack=ack)
    record.install_resume_secret(gen, SECRET, keep_previous=False)
    return StoredState.of(
        record,
        peer="ab" * 32 if role is Role.PARTICIPANT else "",
        status=status,
        detached_at=detached_at,
        updated_at=1000.0,
        rx_committed=rx,
        journal_done=done,
        redeliver_before=rx + 16,
    )


async def _load(
    store: ts.SessionStore, role: Role = Role.VENUE
) -> dict[str, ts.store.StoredSession]:
    contents = await store.load(role)
    return {s.key: s for s in contents.sessions}


async def test_an_empty_store_holds_nothing(sut: StoreUnderTest) -> None:
    await sut.store.open()
    contents = await sut.store.load(Role.VENUE)
    assert contents.sessions == [] and contents.alive_at is None
    await sut.store.aclose()


async def test_a_session_reads_back_as_written(sut: StoreUnderTest) -> None:
    store = sut.store
    await store.open()
    state = _state(tx=3, done=3)
    frames = [(0, [b"a", b"b"], 0), (2, [b"c"], 1)]
    await store.write([SessionWrite(state.key, state, frames, 0, [(3, [b"q"])])], alive_at=7.5)
    await store.aclose()
    store = sut.reopen()
    await store.open()
    contents = await store.load(Role.VENUE)
    (loaded,) = contents.sessions
    assert loaded.state == state and contents.alive_at == 7.5
    assert loaded.frames == frames
    record = loaded.record()
    assert list(record.replay) == frames and record.next_tx_seq == 3
    assert record.resume_secrets == {0: SECRET}
    assert loaded.unsent() == [b"q"]
    assert (await store.load(Role.PARTICIPANT)).sessions == []
    await store.aclose()


async def test_acknowledged_frames_and_sealed_journal_entries_go(sut: StoreUnderTest) -> None:
    store = sut.store
    await store.open()
    key = _state().key
    frames = [(0, [b"a", b"b"], 0), (2, [b"c"], 0), (3, [b"d", b"e"], 0)]
    journal = [(0, [b"a", b"b"]), (2, [b"c", b"d"]), (4, [b"e", b"f"])]
    await store.write([SessionWrite(key, _state(tx=5, done=0), frames, 0, journal)])
    # Frames ending at or below 3 are acknowledged; journal entries below 5 are sealed.
    await store.write([SessionWrite(key, _state(tx=5, ack=3, done=5), [], 3, [])])
    (loaded,) = (await _load(store)).values()
    assert loaded.frames == [(3, [b"d", b"e"], 0)]
    assert loaded.unsent() == [b"f"]
    assert [j for j, _ in loaded.journal] == [4]
    await store.aclose()


async def test_replace_starts_a_new_logical_session_under_the_key(sut: StoreUnderTest) -> None:
    store = sut.store
    await store.open()
    old = _state(1, role=Role.PARTICIPANT, tx=2)
    key = participant_key("alice", bytes.fromhex("ab" * 32))
    assert old.key == key
    await store.write([SessionWrite(key, old, [(0, [b"x", b"y"], 0)])])
    new = _state(2, role=Role.PARTICIPANT, tx=1)
    await store.write([SessionWrite(key, new, [(0, [b"z"], 0)], replace=True)])
    (loaded,) = (await _load(store, Role.PARTICIPANT)).values()
    assert loaded.state.session_id == new.session_id and loaded.frames == [(0, [b"z"], 0)]
    await store.aclose()


async def test_delete_and_purge(sut: StoreUnderTest) -> None:
    store = sut.store
    await store.open()
    states = [_state(i) for i in range(1, 5)]
    await store.write([SessionWrite(s.key, s) for s in states])
    await store.write([SessionWrite(states[0].key, None)])
    assert set(await _load(store)) == {s.key for s in states[1:]}
    assert await store.purge([states[1].key, "no-such-key"]) == 1
    assert set(await _load(store)) == {s.key for s in states[2:]}
    assert await store.purge() == 2
    assert await _load(store) == {}
    await store.aclose()


async def test_a_started_write_completes_even_when_cancelled(sut: StoreUnderTest) -> None:
    store = sut.store
    await store.open()
    state = _state()
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.write([SessionWrite(state.key, state)])
    assert set(await _load(store)) == {state.key}
    await store.aclose()


async def test_statistics_count_what_was_written(sut: StoreUnderTest) -> None:
    store = sut.store
    await store.open()
    state = _state(tx=2)
    await store.write([SessionWrite(state.key, state, [(0, [b"ab", b"c"], 0)], 0, [(0, [b"ab"])])])
    stats = store.statistics()
    assert (stats.commits, stats.session_writes, stats.frames, stats.journal_entries) == (
        1,
        1,
        1,
        1,
    )
    assert stats.bytes_written >= 3 and 0 <= stats.max_write_seconds <= stats.write_seconds
    await store.aclose()


@pytest.mark.parametrize("seed", range(3))
async def test_random_writes_load_back_like_the_reference(sut: StoreUnderTest, seed: int) -> None:
    """Random writes to several sessions, with reopens in between, against ``Image``."""
    rng = random.Random(seed)
    reference = Image()
    sessions: dict[str, dict[str, int]] = {}
    store = sut.store
    await store.open()
    for step in range(300):
        writes = [_random_write(rng, sessions) for _ in range(rng.randint(1, 4))]
        alive = float(step) if rng.random() < 0.2 else None
        await store.write(writes, alive_at=alive)
        for w in writes:
            reference.apply(w)
        if alive is not None:
            reference.alive_at = alive
        if rng.random() < 0.03:
            await store.aclose()
            store = sut.reopen()
            await store.open()
    contents = await store.load(Role.VENUE)
    expected = {s.key: s for s in reference.sessions(Role.VENUE)}
    assert {s.key: s for s in contents.sessions} == expected
    assert contents.alive_at == reference.alive_at
    await store.aclose()


def _random_write(rng: random.Random, sessions: dict[str, dict[str, int]]) -> SessionWrite:
    """A plausible next write for a random session: new frames and journal entries,
    trims, commits, now and then a delete or a brand new session."""
    if not sessions or rng.random() < 0.05:
        sid = rng.randrange(1, 2**64)
        sessions[_state(sid).key] = {"sid": sid, "tx": 0, "j": 0, "done": 0, "ack": 0}
    key = rng.choice(sorted(sessions))
    s = sessions[key]
    if rng.random() < 0.03:
        del sessions[key]
        return SessionWrite(key, None)
    frames = []
    for _ in range(rng.randint(0, 3)):
        n = rng.randint(1, 4)
        frames.append((s["tx"], [rng.randbytes(rng.randint(0, 20)) for _ in range(n)], 0))
        s["tx"] += n
    journal = []
    for _ in range(rng.randint(0, 2)):
        n = rng.randint(1, 3)
        journal.append((s["j"], [rng.randbytes(5) for _ in range(n)]))
        s["j"] += n
    s["done"] = rng.randint(s["done"], s["j"])
    trim = 0
    if rng.random() < 0.3:
        s["ack"] = trim = rng.randint(s["ack"], s["tx"])
    state = _state(s["sid"], tx=s["tx"], ack=s["ack"], done=s["done"], rx=rng.randint(0, 9))
    return SessionWrite(key, state, frames, trim, journal)


async def test_a_record_with_a_gap_is_refused_as_damaged(sut: StoreUnderTest) -> None:
    """A store hands back what it holds; a record that does not add up fails to load."""
    store = sut.store
    await store.open()
    state = _state(tx=5)
    await store.write([SessionWrite(state.key, state, [(0, [b"a"], 0), (3, [b"b", b"c"], 0)])])
    with pytest.raises((ts.StoreError, ValueError), match="gap"):
        contents = await store.load(Role.VENUE)
        for s in contents.sessions:
            s.record()
    await store.aclose()


def test_stored_state_hides_secrets() -> None:
    state = _state()
    assert SECRET.hex() not in repr(state) and str(SECRET) not in repr(state)
    assert "gen=0" in repr(state)
    write = SessionWrite(state.key, state)
    assert SECRET.hex() not in repr(write)
    record = SessionRecord(b"\x01" * 16, "alice", Role.VENUE, replay=deque())
    assert record.rx_stable is None
