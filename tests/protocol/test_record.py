"""The logical-session record on its own: replay buffer, resume secret generations,
snapshots a store can persist and restore."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from trio_session import LocalProtocolError, SessionConfig
from trio_session.protocol import Role, SessionRecord, SessionState
from trio_session.protocol._empty import EMPTY
from trio_session.protocol._record import MAX_SPENT_SECRETS

from .helpers import SESSION_ID, Link


def _record_with_replay() -> SessionRecord:
    record = SessionRecord(SESSION_ID, "key", Role.PARTICIPANT, next_tx_seq=10, peer_ack=4)
    record.replay = deque([(4, [b"a", b"bb"], 0), (6, [b"ccc"], 2), (7, [b"d", b"e", b"f"], 0)])
    record.replay_messages, record.replay_bytes = 6, 9
    return record


def test_old_name_is_an_alias() -> None:
    assert SessionState is SessionRecord


def test_records_share_one_empty_deque_until_their_first_entry() -> None:
    """An idle session's record owns no replay buffer or held-frame deque."""
    from trio_session.protocol._record import NO_ENTRIES

    a = SessionRecord(SESSION_ID, "key", Role.PARTICIPANT, next_rx_seq=1)
    b = SessionRecord(SESSION_ID, "key", Role.PARTICIPANT)
    assert a.replay is b.replay is NO_ENTRIES and a.rx_frames is b.rx_frames is NO_ENTRIES
    a.add_replay((0, [b"m"], 0))
    a.hold(1, 1)
    assert list(a.replay) == [(0, [b"m"], 0)] and list(a.rx_frames) == [(1, 1)]
    assert b.replay is NO_ENTRIES and b.rx_frames is NO_ENTRIES
    a.trim(1)
    a.consume(1)
    assert not a.replay and not a.rx_frames and not NO_ENTRIES


def test_trim_drops_and_cuts_acknowledged_entries() -> None:
    record = _record_with_replay()
    record.trim(5)  # cuts into the first entry
    assert record.replay[0] == (5, [b"bb"], 0)
    assert (record.replay_messages, record.replay_bytes, record.peer_ack) == (5, 8, 5)
    record.trim(8)  # drops two entries, cuts the third
    assert list(record.replay) == [(8, [b"e", b"f"], 0)]
    assert (record.replay_messages, record.replay_bytes, record.peer_ack) == (2, 2, 8)
    record.trim(3)  # an older ack changes nothing
    assert record.peer_ack == 8 and record.replay_messages == 2


def test_unacked_from_slices_without_changing_the_buffer() -> None:
    record = _record_with_replay()
    assert record.unacked_from(5) == [(5, [b"bb"], 0), (6, [b"ccc"], 2), (7, [b"d", b"e", b"f"], 0)]
    assert record.unacked_from(9) == [(9, [b"f"], 0)]
    assert record.unacked_from(10) == []
    assert record.replay_messages == 6


def test_consume_refuses_more_than_was_received() -> None:
    record = SessionRecord(SESSION_ID, "key", Role.VENUE, next_rx_seq=3)
    record.consume(2)
    with pytest.raises(LocalProtocolError):
        record.consume(2)
    with pytest.raises(LocalProtocolError):
        record.consume(-1)
    assert record.rx_consumed == 2


def test_resume_secret_generations() -> None:
    venue = SessionRecord(SESSION_ID, "key", Role.VENUE)
    assert venue.resume_gen == -1
    for gen in range(MAX_SPENT_SECRETS + 3):
        venue.install_resume_secret(gen, bytes([gen]) * 32, keep_previous=False)
    assert venue.resume_secrets == {10: bytes([10]) * 32}  # the venue holds exactly one
    assert venue.spent_secrets == [bytes([g]) * 32 for g in range(2, 10)]  # the last 8
    participant = SessionRecord(SESSION_ID, "key", Role.PARTICIPANT)
    participant.install_resume_secret(0, b"0" * 32, keep_previous=False)
    participant.install_resume_secret(1, b"1" * 32, keep_previous=True)  # a DH rekey
    assert participant.resume_gen == 1 and set(participant.resume_secrets) == {0, 1}
    participant.confirm_latest_resume_secret()
    assert participant.resume_secrets == {1: b"1" * 32}
    participant.install_resume_secret(2, b"2" * 32, keep_previous=True)
    participant.keep_accepted_generation(1, 2, b"n" * 32)  # resumed with gen 1
    assert participant.resume_secrets == {1: b"1" * 32, 2: b"n" * 32}


def test_repr_names_the_session_but_no_secret() -> None:
    record = _record_with_replay()
    record.install_resume_secret(0, b"S" * 32, keep_previous=False)
    text = repr(record)
    assert SESSION_ID.hex() in text and "unacked=6" in text and "SS" not in text


def test_snapshot_round_trips_through_plain_values() -> None:
    record = _record_with_replay()
    record.next_rx_seq, record.rx_consumed, record.peer_window = 12, 11, 40
    record.install_resume_secret(3, b"r" * 32, keep_previous=False)
    record.spent_secrets.append(b"s" * 32)
    record.compromised = True
    snapshot = record.to_snapshot()
    # Plain values only: msgpack carries it unchanged.
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(snapshot)) == snapshot
    restored = SessionRecord.from_snapshot(snapshot)
    for field in SessionRecord.__attrs_attrs__:
        assert getattr(restored, field.name) == getattr(record, field.name), field.name
    assert isinstance(restored.replay, deque)
    # The snapshot shares nothing mutable with the record.
    snapshot["replay"][0][1].append(b"x")
    snapshot["resume_secrets"].clear()
    assert record.replay[0][1] == [b"a", b"bb"] and record.resume_secrets


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "version"),
        ({"session_id": b"short"}, "session_id"),
        ({"role": "broker"}, "role"),
        ({"next_tx_seq": -1}, "next_tx_seq"),
        ({"surprise": 1}, "surprise"),
        ({"resume_secrets": [[0, b"short"]]}, "resume_secrets"),
        ({"rx_consumed": 99}, "rx_consumed"),
        ({"peer_ack": 11}, "peer_ack"),
        ({"replay": [[4, [b"a"], 0], [6, [b"b"], 0]]}, "gap"),
        ({"replay": [[4, [b"a"], 0]]}, "does not end at next_tx_seq"),
        ({"replay": [[9, [], 0]]}, "replay"),
    ],
)
def test_invalid_snapshots_are_refused_naming_the_problem(
    change: dict[str, Any], message: str
) -> None:
    snapshot = {**_record_with_replay().to_snapshot(), **change}
    with pytest.raises(ValueError, match=message):
        SessionRecord.from_snapshot(snapshot)


def test_a_session_resumes_from_restored_snapshots_losing_nothing() -> None:
    link = Link(SessionConfig())
    link.send("p", [b"a", b"b"])
    link.send("v", [b"x"])
    link.flush()
    link.send("p", [b"c"])  # in flight when everything stops
    link.send("v", [b"y", b"z"])
    assert link.p_state is not None and link.v_state is not None
    # Both ends persist their records, "restart", and load them back.
    link.p_state = SessionRecord.from_snapshot(link.p_state.to_snapshot())
    link.v_state = SessionRecord.from_snapshot(link.v_state.to_snapshot())
    link.cut_and_resume()
    link.flush()
    assert link.received["v"] == [b"a", b"b", b"c"]
    assert link.received["p"] == [b"x", b"y", b"z"]


def test_the_shared_empty_deque_refuses_every_mutation() -> None:
    """Idle records and queues share one empty deque; adding to it without owning a
    deque first would put one session's messages in another's: it raises instead."""
    mutators: list[Callable[[], object]] = [
        lambda: EMPTY.append(1),
        lambda: EMPTY.appendleft(1),
        lambda: EMPTY.extend([1]),
        lambda: EMPTY.extendleft([1]),
        lambda: EMPTY.insert(0, 1),
    ]
    for mutate in mutators:
        with pytest.raises(TypeError, match="read-only"):
            mutate()
    assert len(EMPTY) == 0 and list(EMPTY) == []
    a = SessionRecord(bytes(16), "a", Role.VENUE)
    b = SessionRecord(bytes(16), "b", Role.VENUE)
    a.add_replay((1, [b"secret order"], 0))
    assert list(b.replay) == [] and len(EMPTY) == 0
