"""The venue's sessions in a durable store: restored at start, kept through their life.

What a venue started again on its store does (docs/howto/durable.md):

* every session that was attached or detached when it stopped is restored,
  detached: resumable within ``resume_ttl`` counted from its detach.  A session
  that was attached when the process died detached, for this purpose, at the
  venue's last liveness stamp (written every :func:`stamp_interval`);
* its handler is started again (``session.restored`` is True), and the dead
  man's switch is armed for what is left of its TTL;
* a session whose TTL ran out while the venue was down fires
  ``on_session_lost`` at once; so does one whose switch had fired but whose hook
  had not completed (and ``on_logout`` likewise): the entry is removed only
  after the hook returned, so a hook runs once, or again after a crash that
  interrupted it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio

from ._budget import ByteLedger
from ._config import SessionConfig
from ._control import SessionControl, open_session
from ._errors import SessionClosed, SessionExpired, StoreError
from ._lifecycle import State
from ._persist import StoreRuntime, store_runtime
from .protocol import Role
from .store import SessionStatus, SessionStore, StoredSession

__all__ = ["VenueStore", "hook_owed", "stamp_interval", "venue_store"]

logger = logging.getLogger("trio_session.server")


def stamp_interval(resume_ttl: float) -> float:
    """How often a venue writes its liveness stamp: at most a tenth of the TTL, 1 s."""
    return min(1.0, resume_ttl / 10)


@asynccontextmanager
async def venue_store(
    store: SessionStore | None,
    clock: Callable[[], float],
    config: SessionConfig,
    sessions: Callable[[], Iterable[SessionControl]],
) -> AsyncIterator[VenueStore | None]:
    """The venue's durable store for the block (None without one); on leaving, the
    final liveness stamp and exact redelivery bounds of ``sessions()``."""
    if store is None:
        yield None
        return
    async with store_runtime(store, clock) as runtime:
        runtime.claim("venue", "another venue")
        vstore = VenueStore(runtime, config.resume_ttl)
        try:
            yield vstore
        finally:
            await vstore.final_stamp(list(sessions()))
            runtime.release("venue")


@asynccontextmanager
async def hook_owed(
    vstore: VenueStore | None, control: SessionControl, end: SessionStatus
) -> AsyncIterator[None]:
    """Around an end hook: record that it is owed first, forget the session after."""
    if vstore is None:
        yield
        return
    await vstore.ending(control, end)
    yield
    await vstore.forget(control)


class VenueStore:
    """The venue's use of its durable store (see the module docstring)."""

    def __init__(self, runtime: StoreRuntime, resume_ttl: float) -> None:
        self.runtime = runtime
        self.resume_ttl = resume_ttl
        self.clock: Callable[[], float] = runtime.clock

    async def restore_all(
        self, config: SessionConfig, messages: Any, ledger: ByteLedger | None = None
    ) -> list[tuple[SessionControl, float, SessionClosed | None]]:
        """Every stored session, continued: (its control, seconds left of its TTL,
        the end it had already reached or reaches now because its TTL ran out);
        their buffered bytes count in ``ledger`` (the venue's budget)."""
        contents = await self.runtime.store.load(Role.VENUE)
        restored = []
        for stored in contents.sessions:
            control = open_session(Role.VENUE, config, messages, stored.state.key_id, ledger=ledger)
            left = self.restore(control, stored, contents.alive_at)
            control.detach(State.STALE)
            end = self.owed_end(stored)
            if end is None and left <= 0:
                end = SessionExpired("participant did not resume within resume_ttl")
            restored.append((control, left, end))
        if restored:
            logger.info("restored %d sessions from %s", len(restored), self.runtime.store.location)
        return restored

    def adopt(self, control: SessionControl) -> None:
        """A new session: keep it in the store (the writer stores it before its
        first frame)."""
        control.use_store(self.runtime, key=None, peer="")

    def restore(
        self, control: SessionControl, stored: StoredSession, alive_at: float | None
    ) -> float:
        """Continue ``stored`` in ``control``; returns the seconds left of its TTL
        (<= 0: it expired while the venue was down, or its end hook is owed)."""
        control.use_store(self.runtime, key=None, peer="")
        try:
            control.restore(stored)
        except ValueError as exc:
            store = self.runtime.store
            raise StoreError(
                f"store {store.location} is damaged: session {stored.key}: {exc}; move it "
                "aside to start afresh (the sessions in it are lost)",
                path=store.location,
            ) from None
        state = stored.state
        if state.status in (SessionStatus.LOST, SessionStatus.LOGGED_OUT):
            return 0.0
        detached_at = state.detached_at
        if state.status is SessionStatus.ATTACHED or detached_at is None:
            detached_at = alive_at if alive_at is not None else state.updated_at
            self.detached(control, detached_at)
        return self.resume_ttl - (self.clock() - detached_at)

    @staticmethod
    def owed_end(stored: StoredSession) -> SessionClosed | None:
        """The end a restored session had already reached (its hook is owed)."""
        status = stored.state.status
        if status is SessionStatus.LOST:
            return SessionExpired("the session had ended before the venue restarted")
        if status is SessionStatus.LOGGED_OUT:
            return SessionClosed("participant logged out", remote=True)
        return None

    def attached(self, control: SessionControl) -> None:
        if control.persist is not None:
            control.persist.set_status(SessionStatus.ATTACHED)

    def detached(self, control: SessionControl, at: float | None = None) -> None:
        if control.persist is not None:
            when = self.clock() if at is None else at
            control.persist.set_status(SessionStatus.DETACHED, when)

    async def ending(self, control: SessionControl, status: SessionStatus) -> None:
        """Record that an end hook is owed before it runs."""
        persist = control.persist
        if persist is not None:
            persist.set_status(status, persist.detached_at)
            await self._sync()

    async def forget(self, control: SessionControl) -> None:
        """The session is over and its hook (if any) ran: remove it."""
        persist = control.persist
        if persist is not None:
            persist.delete()
            await self._sync()

    async def _sync(self) -> None:
        # A failed write stops the whole venue (see ``watch``); not this task's error.
        try:
            await self.runtime.sync()
        except StoreError:
            await trio.lowlevel.checkpoint()

    async def watch(self, nursery: trio.Nursery) -> None:
        """A failed write stops the venue: it can no longer keep its promises."""
        await self.runtime.failed.wait()
        logger.critical("venue store failed: %s", self.runtime.error)
        nursery.cancel_scope.cancel()

    async def stamp_forever(self) -> None:
        """Write the liveness stamp that dates a crash, and what is pending with it."""
        interval = stamp_interval(self.resume_ttl)
        while True:
            self.runtime.stamp(self.clock())
            await self._sync()
            await trio.sleep(interval)

    async def final_stamp(self, sessions: Iterable[SessionControl]) -> None:
        """On an orderly stop: the last stamp, so restored sessions count from now,
        and exact redelivery bounds (the handlers are gone: nothing more is handed out)."""
        if self.runtime.error is None:
            for control in sessions:
                if control.persist is not None and not control.finished:
                    control.persist.settle_bound()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                self.runtime.stamp(self.clock())
                await self._sync()
        logger.debug("venue store %s: final stamp written", self.runtime.store.location)
