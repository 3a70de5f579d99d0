"""Who may open or resume a session at the venue, and when a detached one ends.

The venue runner (``_server.py``) keeps sessions; this module decides, for each
ClientHello, what it may cost the venue before anything is signed, in this
order: the registry (an unregistered key id is refused before any state exists
for it), the resume binder (a MAC: a proven resume is charged to its own key's
budget), the handshake budgets of ``_admission.py``, and the per-key session cap
of ``_key_sessions.py``.  Once a new session's signature verified, it makes room
for it under the cap.  It also knows when a detached session ends: at its resume
TTL, or at its slow-consumer deadline if its participant had stopped consuming.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import final

import trio

from ._admission import Admission
from ._config import SessionConfig
from ._control import SessionControl
from ._errors import AuthenticationError, CloseCode, SessionError, SessionExpired, SlowConsumer
from ._identity import KeyRegistry
from ._key_sessions import KeySessions
from .protocol import HelloReceived, VenueConnection

__all__ = ["VenueGate", "detached_end", "end_session", "sid_of"]

logger = logging.getLogger("trio_session.server")


@final
class VenueGate:
    """Admission of each ClientHello, and the sessions of each key (see the module
    docstring).  ``sessions`` is the venue's own map of sessions by id."""

    def __init__(
        self,
        config: SessionConfig,
        registry: KeyRegistry,
        sessions: Mapping[bytes, SessionControl],
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.registry = registry
        self.sessions = sessions
        self.admission = Admission(config, clock)
        #: The venue's sessions by key, for ``max_sessions_per_key``.
        self.by_key = KeySessions(config.max_sessions_per_key)
        self._clock = clock

    def admit_address(self, remote_address: str) -> None:
        self.admission.admit_address(remote_address)

    def accept(
        self, conn: VenueConnection, address: str, hello: HelloReceived
    ) -> SessionControl | None:
        """Admit ``hello`` and sign M2 (``conn.accept``); returns the session it
        resumes (its binder verified), or None for a new session.  Raises the
        refusal: ``UNKNOWN_KEY``/``KEY_REVOKED``, ``RATE_LIMITED``,
        ``SESSION_LIMIT``, a binder's ``AUTH_FAILED``/``BINDER_REUSED``."""
        key_id = hello.key_id
        public_key = self.registry.lookup(key_id)  # unknown keys allocate nothing
        existing = self.resumable(hello)
        if existing is not None and _binder_verifies(conn, existing):
            self.admission.admit_verified(key_id)
        else:
            existing = None
            self.admission.admit_unverified(key_id, address)
            self.by_key.check_room(key_id)
        conn.accept(public_key, existing.record if existing else None)
        return existing

    def resumable(self, hello: HelloReceived) -> SessionControl | None:
        """The session a ClientHello asks to resume, if it can be: not one that is
        ending (the venue closed it, or is closing it), which gets a new session."""
        sid = hello.resume_session_id
        existing = self.sessions.get(sid) if sid is not None else None
        if existing is None or existing.ending or existing.session.key_id != hello.key_id:
            return None
        return existing

    def make_room(self, key_id: str) -> None:
        """A new session of ``key_id`` verified (M3): it spends the key's budgets,
        and ends the key's longest-detached sessions if it is at its cap (raises
        :class:`~trio_session.TooManySessions` when none is detached)."""
        self.admission.verified_handshake(key_id)
        for old in self.by_key.make_room(key_id):
            logger.info(
                "key %s opened a new session at max_sessions_per_key (%d): ending its "
                "detached session %s",
                key_id,
                self.by_key.cap,
                old.session.session_id,
            )
            old.finish(
                SessionExpired(
                    "replaced: the participant opened a new session while this one was "
                    f"detached and its key had max_sessions_per_key ({self.by_key.cap})"
                )
            )

    # -- the sessions of each key ---------------------------------------------------------

    def opened(self, control: SessionControl) -> None:
        self.by_key.add(control.session.key_id, sid_of(control), control)

    def detached(self, control: SessionControl) -> None:
        self.by_key.detached(sid_of(control), self._clock())

    def attached(self, control: SessionControl) -> None:
        self.by_key.attached(sid_of(control))

    def ended(self, control: SessionControl) -> None:
        self.by_key.remove(control.session.key_id, sid_of(control))


def _binder_verifies(conn: VenueConnection, existing: SessionControl) -> bool:
    """Check the resume binder (a MAC: cheap); raises for a bad or reused one."""
    assert existing.record is not None
    try:
        return conn.verify_resume(existing.record)
    except AuthenticationError as exc:
        if exc.code is CloseCode.BINDER_REUSED:
            # The session is left alone: a replayed ClientHello cannot complete M3.
            logger.error(
                "resume binder reused for session %s (replayed ClientHello?)",
                existing.session.session_id,
            )
        raise


def detached_end(
    control: SessionControl, config: SessionConfig, ttl_left: float | None = None
) -> tuple[float, SessionError]:
    """When a session just detached ends unless resumed, and with which error.

    At its resume TTL (``ttl_left``: what remains of it, for a session restored
    from a store) with :class:`SessionExpired`; but at its slow-consumer deadline,
    if that comes first, with :class:`SlowConsumer`: a participant that had
    stopped consuming before its connection was lost leaves its queue waiting no
    longer than ``slow_consumer_timeout``, connected or not.
    """
    now = trio.current_time()
    ttl = config.resume_ttl
    ttl_at = now + (ttl if ttl_left is None else ttl_left)
    stalled = control.stalled_since
    if stalled is not None and stalled + config.slow_consumer_timeout < ttl_at:
        limit = config.slow_consumer_timeout
        return stalled + limit, SlowConsumer(
            f"participant consumed nothing for {limit}s while messages waited "
            "(and its connection was lost)"
        )
    return ttl_at, SessionExpired(f"participant did not resume within {ttl}s")


def end_session(control: SessionControl, err: SessionError) -> None:
    """End a venue session for good.  A slow consumer's unsent data is dropped at
    once (the participant consumed none of it); what it sent is still delivered."""
    control.finish(err)
    if isinstance(err, SlowConsumer):
        control.drop_unsent()


def sid_of(control: SessionControl) -> bytes:
    """A venue session's id (venue sessions are bound when created)."""
    record = control.record
    assert record is not None
    return record.session_id
