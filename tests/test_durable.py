"""Durable sessions in the runtime, under the mock clock, over memory transports.

A "restart" is a new venue runner (or ``connect``) on the same store; a
"crash" is one on ``store.copy()`` taken while the old one still ran (exactly
what was written, nothing the process held only in memory), after which the
old one is cancelled.  Timers (resume TTL, the dead man's switch) are checked
across restarts on the mock clock.  The kill -9 tests over real processes are
in ``test_durable_kill.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import trio_session as ts
from trio_session.protocol._wire import FrameType, parse_header
from trio_session.store import SessionStatus
from trio_session.testing import MemoryVenue, memory_venue

from .runtime_helpers import PARTICIPANT, VENUE, registry


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


FAST = ts.RestartPolicy(max_delay=0.2, max_restarts=1000, max_outage=None)
CONFIG = ts.SessionConfig(resume_ttl=10.0)


class Board:
    """The participant's way to whichever venue runs now (none: connection refused)."""

    def __init__(self) -> None:
        self.venue: MemoryVenue | None = None

    async def connector(self, nursery: trio.Nursery) -> Any:
        if self.venue is None:
            await trio.lowlevel.checkpoint()
            raise ts.ConnectionLost("connection refused (venue down)")
        return await self.venue.connector(nursery)


class Venue:
    """A venue runner that can be stopped (orderly) or crashed and started again."""

    def __init__(
        self, nursery: trio.Nursery, board: Board, handler: Callable[[ts.Session], Awaitable[None]]
    ) -> None:
        self.nursery = nursery
        self.board = board
        self.handler = handler
        self.lost: list[str] = []
        self.logouts: list[str] = []
        #: Called inside on_session_lost (e.g. to crash right there).
        self.during_lost_hook: Callable[[], None] | None = None
        self.lost_event = trio.Event()
        self._scope: trio.CancelScope | None = None

    async def start(self, store: ts.SessionStore, **options: Any) -> None:
        ready = trio.Event()

        async def run() -> None:
            with trio.CancelScope() as scope:
                self._scope = scope
                async with memory_venue(
                    self.handler,
                    VENUE,
                    registry(),
                    config=options.pop("config", CONFIG),
                    store=store,
                    on_session_lost=self._on_lost,
                    on_logout=lambda s: self.logouts.append(str(s.session_id)),
                    **options,
                ) as venue:
                    self.board.venue = venue
                    ready.set()
                    await trio.sleep_forever()

        self.nursery.start_soon(run)
        await ready.wait()

    def _on_lost(self, session: ts.Session) -> None:
        self.lost.append(str(session.session_id))
        self.lost_event.set()
        if self.during_lost_hook is not None:
            self.during_lost_hook()

    async def stop(self) -> None:
        """Stop (also what a crash does once the store was copied): connections drop."""
        venue, self.board.venue = self.board.venue, None
        if venue is not None:
            venue.break_all()
        assert self._scope is not None
        self._scope.cancel()
        await trio.testing.wait_all_tasks_blocked()


@asynccontextmanager
async def running_venue(
    store: ts.SessionStore,
    handler: Callable[[ts.Session], Awaitable[None]] | None = None,
    **options: Any,
) -> AsyncIterator[Venue]:
    """A :class:`Venue` on ``store`` (``venue.board`` reaches it) for the block."""
    async with trio.open_nursery() as nursery:
        venue = Venue(nursery, Board(), handler or reply_committed)
        await venue.start(store, **options)
        yield venue
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def participant(board: Board, **options: Any) -> AsyncIterator[ts.Session]:
    async with ts.connect(
        "memory://",
        PARTICIPANT,
        VENUE.public_key,
        transport_factory=board.connector,
        restart=options.pop("restart", FAST),
        config=options.pop("config", CONFIG),
        **options,
    ) as session:
        yield session


async def reply_committed(session: ts.Session) -> None:
    async for message in session:
        await session.send(b"re:" + message, commit=True)


async def test_nothing_is_on_the_wire_before_the_store_holds_what_it_depends_on(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """Every venue frame: the store already holds the resume generation it is
    keyed with; a DATA frame: the store already holds the frame.  Lossless,
    conflated and lossy messages, rekeys, resumes."""
    store = ts.MemoryStore(durable=True)
    checked = {"DATA": 0, "other": 0}
    #: What went out too early (the link would turn an assertion into a dropped connection).
    violations: list[str] = []

    def check(conn: Any, frame: bytes) -> None:
        frame_type, _, _, seq = parse_header(frame)
        (entry,) = store._image.entries.values()  # one session
        if entry.state.resume_gen != conn.session.resume_gen:
            violations.append(f"{frame_type.name} under a resume secret not stored yet")
        if frame_type is FrameType.DATA:
            covered = any(f <= seq < f + len(m) for f, m, _ in entry.frames.values())
            if not (covered or seq < entry.state.peer_ack):
                violations.append(f"DATA {seq} not stored before sending")
            checked["DATA"] += 1
        else:
            checked["other"] += 1

    import trio_session._link as link_module

    original = link_module.Link._bounded_send

    async def bounded_send(self: Any, frame: bytes) -> None:
        check(self.conn, frame)
        await original(self, frame)

    monkeypatch.setattr(link_module.Link, "_bounded_send", bounded_send)

    async def handler(session: ts.Session) -> None:
        async for message in session:
            session.send_latest(message[:1], b"quote " + message)  # conflated
            session.send_lossy(b"lossy " + message)
            await session.send(b"re:" + message, commit=True)

    cfg = ts.SessionConfig(rekey_interval=0.5, reject_after=2.0, ratchet_interval=0.1)
    with trio.fail_after(60):
        async with running_venue(store, handler, config=cfg) as venue:
            board = venue.board
            async with participant(board, config=cfg) as session:
                for i in range(200):
                    await session.send_many([b"%d" % i] * 5)
                    if i % 10 == 9:
                        await trio.sleep(0.3)  # key rotation runs meanwhile
                    if i % 50 == 49 and board.venue is not None:
                        board.venue.break_all()  # resumes: retransmissions
                # Exactly once, in order, across the resumes.
                replies = await _replies(session, 1000)
                assert replies == [b"re:%d" % i for i in range(200) for _ in range(5)]
                await trio.sleep(3)  # idle: heartbeats and rekeys only
                assert session.stats.rekeys >= 3
    assert violations == []
    assert checked["DATA"] > 50 and checked["other"] > 20


async def _replies(session: ts.Session, n: int) -> list[bytes]:
    """The next ``n`` replies (``re:…``), skipping conflated and lossy messages."""
    replies: list[bytes] = []
    while len(replies) < n:
        message = await session.receive()
        if message.startswith(b"re:"):
            replies.append(message)
    return replies


async def test_the_peer_keeps_a_message_until_it_is_committed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    held: list[ts.Session] = []
    got = trio.Event()

    async def handler(session: ts.Session) -> None:
        session.auto_commit = False
        held.append(session)
        for _ in range(3):
            await session.receive()
        got.set()
        await trio.sleep_forever()

    with trio.fail_after(60):
        async with running_venue(ts.MemoryStore(durable=True), handler) as venue:
            board = venue.board
            async with participant(board) as session:
                await session.send_many([b"a", b"b", b"c"])
                await got.wait()
                await trio.sleep(5)  # heartbeats and delayed acks come and go
                assert session.stats.unacked == 3  # received, not committed: kept
                await held[0].commit()
                await trio.sleep(0.1)
                assert session.stats.unacked == 0


async def test_a_venue_restarted_on_its_store_resumes_every_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = ts.MemoryStore(durable=True)
    restored: list[bool] = []

    async def handler(session: ts.Session) -> None:
        restored.append(session.restored)
        await reply_committed(session)

    with trio.fail_after(120):
        async with running_venue(store, handler) as venue:
            board = venue.board
            async with participant(board) as alice:
                sid = alice.session_id
                await alice.send(b"1")
                assert await alice.receive() == b"re:1"
                await venue.stop()
                await alice.send(b"2")  # queued during the outage
                await trio.sleep(3)
                await venue.start(store)
                assert await alice.receive() == b"re:2"
                assert alice.session_id == sid and alice.stats.resumes >= 1
            assert restored == [False, True]
            assert venue.lost == [] and venue.logouts == [sid]


async def test_after_a_crash_uncommitted_messages_are_redelivered_and_flagged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[tuple[bytes, int, bool, bool]] = []
    stuck = trio.Event()

    async def handler(session: ts.Session) -> None:
        async for message in session:
            seen.append((message, session.last_seq, session.last_redelivered, session.restored))
            if message == b"b" and not session.restored:
                stuck.set()  # it saw b, and dies before answering it
                await trio.sleep_forever()
            await session.send(b"re:" + message, commit=True)

    store = ts.MemoryStore(durable=True)
    with trio.fail_after(120):
        async with running_venue(store, handler) as venue:
            board = venue.board
            async with participant(board) as alice:
                await alice.send_many([b"a", b"b"])
                assert await alice.receive() == b"re:a"
                await stuck.wait()
                crashed = store.copy()
                await venue.stop()
                await venue.start(crashed)
                assert await alice.receive() == b"re:b"
    assert seen[0] == (b"a", 0, False, False)
    assert seen[1] == (b"b", 1, False, False)
    assert seen[2] == (b"b", 1, True, True)  # the same message (seq 1), flagged


async def _detached_session(venue: Venue) -> tuple[str, Callable[[], None]]:
    """A participant that connects and works: (its session id, how it vanishes).

    Vanishing cancels it without a logout and drops its connection, so the venue
    keeps the session detached (a crash of the participant's process)."""
    ready = trio.Event()
    sid: list[str] = []
    scope = trio.CancelScope()

    async def run() -> None:
        with scope:
            async with participant(venue.board, restart=ts.RestartPolicy(enabled=False)) as s:
                await s.send(b"x")
                await s.receive()
                sid.append(str(s.session_id))
                ready.set()
                await trio.sleep_forever()

    def vanish() -> None:
        scope.cancel()
        if venue.board.venue is not None:
            venue.board.venue.break_all()

    venue.nursery.start_soon(run)
    await ready.wait()
    return sid[0], vanish


async def test_the_dead_mans_switch_counts_the_ttl_across_a_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = ts.MemoryStore(durable=True)
    with trio.fail_after(120):
        async with running_venue(store, reply_committed) as venue:
            sid, vanish = await _detached_session(venue)
            vanish()
            detached = trio.current_time()
            await trio.sleep(4)
            await venue.stop()  # orderly stop 4 s after the detach
            await trio.sleep(3)
            await venue.start(store)  # restored with 10 - 7 = 3 s to live
            await venue.lost_event.wait()
            fired = trio.current_time() - detached
            assert 10.0 <= fired <= 10.5, fired
            await trio.sleep(30)
            assert venue.lost == [sid]  # once
            assert store._image.entries == {}  # and forgotten


async def test_sessions_expired_while_the_venue_was_down_fire_at_once_and_refuse_resume(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = ts.MemoryStore(durable=True)
    with trio.fail_after(120):
        async with running_venue(store, reply_committed) as venue:
            board = venue.board
            gone = [await _detached_session(venue) for _ in range(3)]
            async with participant(board) as late:
                late_sid = str(late.session_id)
                await late.send(b"before")
                assert await late.receive() == b"re:before"
                await venue.stop()
                for _, vanish in gone:
                    vanish()
                await trio.sleep(CONFIG.resume_ttl + 5)  # down longer than the TTL
                start = trio.current_time()
                await venue.start(store)
                await trio.testing.wait_all_tasks_blocked()
                # Every session's switch fired at once, exactly once...
                assert sorted(venue.lost) == sorted([sid for sid, _ in gone] + [late_sid])
                assert trio.current_time() - start < 1.0
                # ... and the late participant's resume is refused: a new session.
                with pytest.raises(ts.SessionReset):
                    await late.receive()
                assert late.session_id != late_sid
            await trio.sleep(30)
            assert len(venue.lost) == 4


async def test_an_end_hook_interrupted_by_a_crash_runs_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = ts.MemoryStore(durable=True)
    crashed: list[ts.MemoryStore] = []
    with trio.fail_after(120):
        async with running_venue(store, reply_committed) as venue:
            sid, vanish = await _detached_session(venue)
            statuses: list[SessionStatus] = []

            def crash() -> None:  # inside the hook: the store says the hook is owed
                (entry,) = store._image.entries.values()
                statuses.append(entry.state.status)
                crashed.append(store.copy())

            venue.during_lost_hook = crash
            vanish()
            await venue.lost_event.wait()
            assert statuses == [SessionStatus.LOST]
            venue.during_lost_hook = None
            await venue.stop()
            await venue.start(crashed[0])
            await trio.testing.wait_all_tasks_blocked()
            assert venue.lost == [sid, sid]  # again after the crash, then never again
            await trio.sleep(30)
            assert venue.lost == [sid, sid] and crashed[0]._image.entries == {}


async def test_a_participant_restarted_on_its_store_resumes_the_same_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    vstore, pstore = ts.MemoryStore(durable=True), ts.MemoryStore(durable=True)
    with trio.fail_after(120):
        async with running_venue(vstore, reply_committed) as venue:
            board, nursery = venue.board, venue.nursery
            first = trio.CancelScope()
            state: dict[str, Any] = {}
            crashed = trio.Event()

            async def run_first() -> None:
                with first:
                    async with participant(board, store=pstore) as s:
                        state["sid"] = s.session_id
                        await s.send_many([b"1", b"2", b"3"])
                        state["r1"] = await s.receive()
                        state["crash"] = pstore.copy()  # received re:1 (not committed)
                        state["sent"] = s.send_count
                        crashed.set()
                        await trio.sleep_forever()

            nursery.start_soon(run_first)
            await crashed.wait()
            first.cancel()  # the process dies (its connection with it)
            assert board.venue is not None
            board.venue.break_all()
            async with participant(board, store=state["crash"]) as again:
                assert again.session_id == state["sid"] and again.restored
                assert again.send_count == state["sent"] == 3
                replies, flags = [], []
                for _ in range(3):
                    replies.append(await again.receive())
                    flags.append(again.last_redelivered)
                assert replies == [b"re:1", b"re:2", b"re:3"]
                # re:1 had been handed out, not committed: flagged.  (The others are
                # flagged too: the bound is recorded a little ahead of the application.)
                assert flags[0] is True
    assert state["r1"] == b"re:1"


async def test_leaving_connect_logs_out_and_forgets_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    vstore, pstore = ts.MemoryStore(durable=True), ts.MemoryStore(durable=True)
    with trio.fail_after(60):
        async with running_venue(vstore, reply_committed) as venue:
            board = venue.board
            async with participant(board, store=pstore) as s:
                await s.send(b"x")
                assert await s.receive() == b"re:x"
                assert len(pstore._image.entries) == len(vstore._image.entries) == 1
            await trio.testing.wait_all_tasks_blocked()
            assert pstore._image.entries == {} and vstore._image.entries == {}
            assert venue.logouts and not venue.lost


class FailingStore(ts.MemoryStore):
    """A durable memory store whose writes fail once ``broken`` is set (a full disk)."""

    def __init__(self) -> None:
        super().__init__(durable=True)
        self.broken = False

    async def write(self, writes: Any, *, alive_at: float | None = None) -> None:
        if self.broken:
            raise ts.StoreError("cannot write store memory: No space left on device")
        await super().write(writes, alive_at=alive_at)


async def test_a_failed_store_write_ends_the_participants_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pstore = FailingStore()
    with trio.fail_after(60):
        async with running_venue(ts.MemoryStore(durable=True), reply_committed) as venue:
            board = venue.board
            with pytest.raises(ts.StoreError, match="No space left"):
                async with participant(board, store=pstore) as s:
                    pstore.broken = True
                    await s.send(b"x")


async def test_a_failed_store_write_stops_the_venue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    vstore = FailingStore()
    with trio.fail_after(60):
        with pytest.raises(ts.StoreError, match="No space left"):
            async with memory_venue(reply_committed, VENUE, registry(), store=vstore):
                vstore.broken = True
                await trio.sleep(5)  # the next liveness stamp fails


async def test_one_store_holds_one_session_per_key_and_venue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pstore = ts.MemoryStore(durable=True)
    with trio.fail_after(60):
        async with (
            running_venue(ts.MemoryStore(durable=True)) as venue,
            participant(venue.board, store=pstore) as first,
        ):
            with pytest.raises(ts.StoreError, match="another session of key"):
                async with participant(venue.board, store=pstore):
                    pass
            await first.send(b"still here")
            assert await first.receive() == b"re:still here"
