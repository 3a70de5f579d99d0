"""What happens once a venue session is over: its end hook (the dead man's switch
``on_session_lost``, or ``on_logout``), run at most once, its counts and log record,
and forgetting it (in the store too).  ``VenueRunner`` calls :meth:`EndHooks.ended`
from the task that watches each session."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, final

from ._control import SessionControl
from ._core import final_counts
from ._errors import is_clean_close
from ._session import Session
from ._venue_gate import sid_of
from ._venue_stats import VenueTally
from ._venue_store import VenueStore, hook_owed
from .store import SessionStatus

__all__ = ["EndHooks", "Hook"]

logger = logging.getLogger("trio_session.server")

#: ``on_session_lost`` / ``on_logout``: a plain or async callable.
Hook = Callable[[Session[Any]], Awaitable[None] | None]


@final
class EndHooks:
    """The venue's end hooks, and the bookkeeping of sessions that ended."""

    def __init__(
        self,
        sessions: dict[bytes, SessionControl],
        tally: VenueTally,
        on_session_lost: Hook | None,
        on_logout: Hook | None,
    ) -> None:
        self.sessions = sessions
        self.tally = tally
        self.on_session_lost = on_session_lost
        self.on_logout = on_logout
        #: The venue's durable store, once running (``VenueRunner.running``).
        self.store: VenueStore | None = None
        self._hooked: set[bytes] = set()

    async def ended(self, control: SessionControl) -> None:
        """Call at most one end hook for a session that is over.

        ``on_logout``: it ended with a graceful close from the participant (a
        logout, or the participant's answer to the venue's close after the
        handler returned).  ``on_session_lost`` (the dead man's switch): it
        ended with an error — not resumed in time, slow consumer, revoked key,
        handler failure, a fatal error.  Neither: the venue closed gracefully
        and the participant did not answer within ``close_timeout``.
        """
        err = control.error
        self.tally.retire(control.session.stats, err)
        if err is not None and is_clean_close(err):
            if err.remote:
                self.tally.logouts += 1
                await self._hook(self.on_logout, control, SessionStatus.LOGGED_OUT)
            else:
                self.sessions.pop(sid_of(control), None)
                if self.store is not None:
                    await self.store.forget(control)
            return
        self.tally.sessions_lost += 1
        control.log_event(
            logging.WARNING,
            "dead_mans_switch",
            "participant %s lost: %s: %s; on_session_lost: cancel its orders",
            control.session.key_id,
            type(err).__name__,
            err,
            error=type(err).__name__,
            code=err.code.name if err is not None else None,
            **final_counts(control.session.stats),
        )
        await self._hook(self.on_session_lost, control, SessionStatus.LOST)

    async def _hook(self, hook: Hook | None, control: SessionControl, end: SessionStatus) -> None:
        """Run an end hook once (with a store: recorded as owed before it runs, the
        session forgotten only once it returned)."""
        sid = sid_of(control)
        self.sessions.pop(sid, None)
        async with hook_owed(self.store, control, end):
            if hook is None or sid in self._hooked:
                return
            self._hooked.add(sid)
            try:
                result = hook(control.session)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("hook %r failed for session %s", hook, control.session.session_id)
