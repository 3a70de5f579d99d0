"""The runners' interface (``_control.py``): what a supervisor or venue does to a session.

Without a connection where possible (the queues are fed directly, as the reader
would); attach and preempt over an in-memory connection pair.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

import trio_session as ts
from trio_session._control import SessionControl, open_session
from trio_session.protocol import Role, SessionRecord

from .runtime_helpers import PARTICIPANT, memory_pair, state_of


def _control(role: Role = Role.PARTICIPANT) -> SessionControl:
    return open_session(role, ts.SessionConfig(outbound_capacity=1), None, PARTICIPANT.key_id)


def _error(control: SessionControl) -> ts.SessionError | None:
    return control.error  # a call: type checkers do not narrow it


def _record(sid: bytes, *, received: int = 0) -> SessionRecord:
    return SessionRecord(sid, PARTICIPANT.key_id, Role.PARTICIPANT, next_rx_seq=received)


async def test_finish_once_wakes_everyone_with_the_first_error() -> None:
    control = _control()
    session = control.session
    control.bind(_record(b"a" * 16))
    assert state_of(session) is ts.State.CONNECTING and control.error is None
    assert session.session_id == (b"a" * 16).hex()
    await session.send(b"fills the queue")
    outcome: list[BaseException] = []

    async def blocked_sender() -> None:
        try:
            await session.send(b"waits")
        except ts.SessionError as exc:
            outcome.append(exc)

    async def reader() -> None:
        try:
            await session.receive()
        except ts.SessionError as exc:
            outcome.append(exc)

    first, second = ts.HeartbeatTimeout("first"), ts.ConnectionLost("second")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            with control.supervising() as runner:
                nursery.start_soon(blocked_sender)
                nursery.start_soon(reader)
                await trio.testing.wait_all_tasks_blocked()
                assert outcome == []
                control.finish(first)
                control.finish(second)  # ignored: the first error wins
                await trio.sleep(10)  # the runner's loop: cancelled by finish()
            assert runner.cancelled_caught
    assert outcome == [first, first]
    assert _error(control) is first and session.error is first and control.finished
    assert state_of(session) is ts.State.CLOSED
    control.detach(ts.State.STALE)  # ignored once finished
    assert state_of(session) is ts.State.CLOSED
    with pytest.raises(ts.HeartbeatTimeout):
        await session.send(b"after")


async def test_detach_marks_stale_and_resuming() -> None:
    control = _control()
    states: list[ts.State] = []

    async def follow() -> None:
        async for state in control.session.transitions():
            states.append(state)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            await trio.testing.wait_all_tasks_blocked()
            control.detach(ts.State.STALE)
            control.detach(ts.State.RESUMING)
            control.finish(ts.SessionClosed("bye"))
    assert states == [ts.State.STALE, ts.State.RESUMING, ts.State.CLOSED]
    assert control.session.error is None  # a clean close is not an error
    assert isinstance(control.error, ts.SessionClosed)
    assert control.session.stats.stale_spells == 1


def _resumable(control: SessionControl) -> SessionRecord | None:
    return control.resumable_record  # a call: type checkers do not narrow it


def test_discard_resume_makes_the_next_handshake_start_afresh() -> None:
    control = _control()
    assert _resumable(control) is None  # nothing to resume yet
    record = _record(b"a" * 16)
    control.bind(record)
    assert _resumable(control) is record and control.record is record
    control.discard_resume()
    assert _resumable(control) is None and control.record is record
    assert record.compromised


async def test_reset_delivers_the_old_session_first_then_one_session_reset() -> None:
    control = _control()
    session = control.session
    old, new = _record(b"o" * 16, received=2), _record(b"n" * 16, received=1)
    control.bind(old)
    inbound = control._core.inbound  # as the reader would feed it
    assert inbound.put([b"old0", b"old1"], False)
    control.reset_to(new)
    assert session.session_id == new.session_id.hex()
    assert inbound.put([b"new0"], False)
    with trio.fail_after(5):
        assert await session.receive() == b"old0" and session.last_seq == 0
        assert old.rx_consumed == 2  # consumed messages credit the session they came from
        assert await session.receive() == b"old1" and session.last_seq == 1
        with pytest.raises(ts.SessionReset):
            await session.receive()
        assert await session.receive() == b"new0"
    assert session.last_seq == 0  # numbered from 0 in the new session
    assert (old.rx_consumed, new.rx_consumed) == (2, 1)
    assert session.state is ts.State.CONNECTING and session.error is None


async def test_attach_runs_until_the_connection_ends_and_preempt_ends_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    config = ts.SessionConfig()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            participant, venue, _, venue_end = await memory_pair(nursery, config)
            await trio.testing.wait_all_tasks_blocked()
            assert venue.session.state is ts.State.LIVE  # the venue verified ClientFinish
            await participant.session.send(b"ping")
            assert await venue.session.receive() == b"ping"
            assert participant.session.state is ts.State.LIVE
            assert venue.session.stats.connections == 1
            venue.preempt()  # a resumed connection takes over
            assert await venue.session.wait_state(ts.State.CLOSED) is ts.State.CLOSED
            assert isinstance(venue.error, ts.ConnectionLost)
            assert "replaced by a resumed connection" in str(venue.error)
            assert venue_end.closed
            # The participant sees the connection go, as after any loss.
            assert await participant.session.wait_state(ts.State.CLOSED) is ts.State.CLOSED
            assert isinstance(participant.error, ts.ConnectionLost)
