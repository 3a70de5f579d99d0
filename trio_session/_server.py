"""Venue side: ``ts.serve``, and the runner that keeps the venue's sessions.

One logical session can span several connections: when a participant's
connection breaks, the session is *detached* (STALE) and kept for
``resume_ttl`` with its replay buffer; a reconnect that presents a valid binder
takes it over and the handler's ``async for`` just continues.  If nobody
resumes it in time, the dead man's switch fires (``on_session_lost``) so the
venue can cancel the participant's resting orders; a graceful logout fires
``on_logout`` instead — the two are never confused.

Every handshake is admitted cheapest check first (``_admission.py``), then
driven by the shared handshake loop (``_driver.py``).  What one identity and
all sessions together may hold is bounded too: ``max_sessions_per_key``
(``_key_sessions.py``) and ``max_buffered_bytes`` (``_budget.py``).
"""

from __future__ import annotations

import inspect
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, final

import attrs
import trio

from ._admission import Admission
from ._budget import MemoryGuard
from ._config import SessionConfig
from ._control import SessionControl, open_session
from ._driver import run_handshake
from ._errors import (
    AuthenticationError,
    Category,
    CloseCode,
    ConnectionLost,
    RateLimited,
    SessionError,
    SessionExpired,
    SlowConsumer,
    is_clean_close,
)
from ._identity import Identity, KeyRegistry
from ._key_sessions import KeySessions
from ._lifecycle import State
from ._link import close_forcefully
from ._session import Session
from ._transport import (
    Transport,
    TransportLimits,
    TransportServer,
    observable_close,
    serve_transport,
)
from .protocol import HandshakeComplete, HelloReceived, Role, SessionRecord, VenueConnection

__all__ = ["VenueServer", "serve"]

logger = logging.getLogger("trio_session.server")

#: The application's venue handler: called once per logical session.
SessionHandler = Callable[[Session], Awaitable[None]]
#: ``on_session_lost`` / ``on_logout``: a plain or async callable.
Hook = Callable[[Session], Awaitable[None] | None]


@attrs.define(eq=False)
class VenueServer:
    """What ``await nursery.start(ts.serve, ...)`` returns."""

    host: str
    #: The bound port (useful with port 0).
    port: int
    listeners: list[Any]
    _venue: VenueRunner = attrs.field(repr=False, alias="venue")

    @property
    def sessions(self) -> list[Session]:
        """Sessions alive now (LIVE or detached awaiting resume)."""
        return self._venue.live_sessions()


async def serve(
    handler: SessionHandler,
    identity: Identity,
    registry: KeyRegistry,
    host: str,
    port: int,
    *,
    config: SessionConfig | None = None,
    messages: Any | None = None,
    ssl_context: ssl.SSLContext | None = None,
    on_session_lost: Hook | None = None,
    on_logout: Hook | None = None,
    task_status: trio.TaskStatus[VenueServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve participant sessions; use with ``await nursery.start(ts.serve, ...)``.

    ``handler(session)`` is called once per *logical* session and survives the
    participant's reconnects.  When it returns, the session is closed
    gracefully; when it raises, the error is logged, the participant receives
    CLOSE(HANDLER_ERROR), and the server keeps serving everyone else.

    At most one end hook runs per session.  ``on_session_lost(session)`` — the
    dead man's switch — when it ended without a graceful close: usually its
    connection broke and it was not resumed within ``resume_ttl``
    (:class:`~trio_session.SessionExpired`), but also a handler failure, a
    revoked key, a slow consumer or a fatal error.  ``on_logout(session)`` when
    it ended with a graceful close from the participant (a logout, or its
    answer to the venue's close once the handler returned).  Runs until
    cancelled.
    """
    # modes=None prefers "aead" without TLS (docs/api.md, SessionConfig.modes).
    cfg = (config or SessionConfig()).for_venue(tls=ssl_context is not None)
    venue = VenueRunner(handler, identity, registry, cfg, messages, on_session_lost, on_logout)
    async with venue.running() as nursery:
        tserver: TransportServer = await nursery.start(
            partial(
                serve_transport,
                venue.on_transport,
                host,
                port,
                ssl_context=ssl_context,
                handshake_timeout=cfg.handshake_timeout,
                max_message_size=cfg.max_frame_size,
                close_timeout=cfg.close_timeout,
                limits=TransportLimits.from_config(cfg),
            )
        )
        server = VenueServer(host, tserver.port, list(tserver.listeners), venue=venue)
        logger.info("venue serving on %s:%d", host, tserver.port)
        task_status.started(server)
        await trio.sleep_forever()


@final
class VenueRunner:
    """The venue's sessions and what happens to them: admission and handshake of
    each connection, new sessions and their handlers, resume and takeover, the
    resume TTL and the end hooks.  Transport-agnostic: :func:`serve` feeds it
    WebSocket connections, :func:`trio_session.testing.memory_venue` memory ones.
    """

    def __init__(
        self,
        handler: SessionHandler,
        identity: Identity,
        registry: KeyRegistry,
        config: SessionConfig,
        messages: Any | None,
        on_session_lost: Hook | None,
        on_logout: Hook | None,
    ) -> None:
        self.handler = handler
        self.identity = identity
        self.registry = registry
        self.config = config
        self.messages = messages
        self.on_session_lost = on_session_lost
        self.on_logout = on_logout
        #: Sessions by session id, kept until they end.
        self.sessions: dict[bytes, SessionControl] = {}
        self.admission = Admission(config, trio.current_time)
        #: The sessions of each key, for ``max_sessions_per_key``.
        self.by_key = KeySessions(config.max_sessions_per_key)
        #: The bytes all sessions buffer, for ``max_buffered_bytes``.
        self.memory = MemoryGuard(config.max_buffered_bytes, self.sessions.values)
        self._nursery: trio.Nursery | None = None
        self._ttl_scopes: dict[bytes, trio.CancelScope] = {}
        self._takeover: set[bytes] = set()

    def live_sessions(self) -> list[Session]:
        """Sessions alive now (LIVE or detached awaiting resume)."""
        return [c.session for c in self.sessions.values() if c.session.state is not State.CLOSED]

    @asynccontextmanager
    async def running(self) -> AsyncIterator[trio.Nursery]:
        """Run the venue's background work (handlers, TTL timers, hooks) for the
        block; the nursery is yielded for the listener.  An exception from the
        block is re-raised outside the nursery, so it is never an ExceptionGroup.
        """
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.memory.run)
            self.registry.add_revocation_listener(self.on_revoked)
            try:
                yield nursery
            except BaseException as exc:
                failure = exc
            finally:
                self.registry.remove_revocation_listener(self.on_revoked)
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    def _start(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn, *args)

    def on_revoked(self, key_id: str) -> None:
        """A key was revoked: end its sessions (KEY_REVOKED)."""
        for control in list(self.sessions.values()):
            session = control.session
            if session.key_id == key_id and session.state is not State.CLOSED:
                logger.warning("key %s revoked: ending session %s", key_id, session.session_id)
                self._start(session.aclose, CloseCode.KEY_REVOKED, "key revoked")

    # -- one connection ------------------------------------------------------------------

    async def on_transport(self, transport: Transport) -> None:
        """Admit, authenticate and run one participant connection."""
        cfg = self.config
        conn = VenueConnection(self.identity, cfg, clock=trio.current_time)
        resuming: list[SessionControl] = []
        try:
            # One deadline from TCP accept: upgrade and authentication together.
            with transport.handshake_deadline(cfg.handshake_timeout):
                done = await run_handshake(
                    transport,
                    conn,
                    admit=partial(self.admission.admit_address, transport.remote_address),
                    on_hello=partial(self._accept, conn, resuming, transport.remote_address),
                )
                transport.mark_authenticated()
                control = resuming[0] if done.resumed else self._open_new(conn)
        except trio.TooSlowError:
            logger.debug("handshake from %s timed out", transport.remote_address)
            await self._reject(transport, conn, CloseCode.HANDSHAKE_TIMEOUT)
            return
        except RateLimited as exc:
            await self._reject(transport, conn, exc.code, exc.retry_after)
            return
        except AuthenticationError as exc:
            logger.warning("handshake from %s refused: %s", transport.remote_address, exc)
            # Only a mode mismatch says more than its code: both lists are public, and
            # the participant needs them to fix its SessionConfig.modes.
            detail = str(exc) if exc.code is CloseCode.VERSION_MISMATCH else None
            await self._reject(transport, conn, exc.code, reason=detail)
            return
        except SessionError as exc:
            logger.info("handshake from %s failed: %s", transport.remote_address, exc)
            if not isinstance(exc, ConnectionLost):
                await self._reject(transport, conn, exc.code)
            return
        if done.resumed:
            if control.ending:  # the venue began closing it between M1 and M3
                await self._reject(transport, conn, CloseCode.RESUME_REFUSED)
                return
            self._take_over(control)
        await self._run(control, transport, conn, done)

    def _accept(
        self,
        conn: VenueConnection,
        resuming: list[SessionControl],
        remote_address: str,
        hello: HelloReceived,
    ) -> None:
        """ClientHello: registry, then the budget the attempt can prove it may use
        (a verified resume binder, or the unverified one of its key and address),
        then accept().  No public-key operation before all of them passed."""
        key_id = hello.key_id
        public_key = self.registry.lookup(key_id)  # unknown keys allocate nothing
        existing = self._resumable(hello)
        if existing is not None and self._binder_verifies(conn, existing):
            self.admission.admit_verified(key_id)
            resuming.append(existing)
        else:
            existing = None
            self.admission.admit_unverified(key_id, remote_address)
            self.by_key.check_room(key_id)
        conn.accept(public_key, existing.record if existing else None)

    def _binder_verifies(self, conn: VenueConnection, existing: SessionControl) -> bool:
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

    def _resumable(self, hello: HelloReceived) -> SessionControl | None:
        """The session a ClientHello asks to resume, if it can be: not one that is
        ending (the venue closed it, or is closing it), which gets a new session."""
        sid = hello.resume_session_id
        existing = self.sessions.get(sid) if sid is not None else None
        if existing is None or existing.ending or existing.session.key_id != hello.key_id:
            return None
        return existing

    def _open_new(self, conn: VenueConnection) -> SessionControl:
        """The participant's signature verified: a new session, within its key's
        budget and cap (ending the key's longest-detached session to make room)."""
        record = conn.session
        assert record is not None
        key_id = record.key_id
        self.admission.verified_handshake(key_id)
        for old in self.by_key.make_room(key_id):
            logger.info(
                "key %s opened a new session at max_sessions_per_key (%d): ending its "
                "detached session %s",
                key_id,
                self.config.max_sessions_per_key,
                old.session.session_id,
            )
            old.finish(
                SessionExpired(
                    "replaced: the participant opened a new session while this one was "
                    f"detached and its key had max_sessions_per_key ({self.by_key.cap})"
                )
            )
        return self._new_session(record)

    def _new_session(self, record: SessionRecord) -> SessionControl:
        control = open_session(
            Role.VENUE, self.config, self.messages, record.key_id, ledger=self.memory.ledger
        )
        control.bind(record)
        self.sessions[record.session_id] = control
        self.by_key.add(record.key_id, record.session_id, control)
        self._start(self._run_handler, control.session)
        self._start(self._watch_end, control)
        return control

    def _take_over(self, control: SessionControl) -> None:
        """A resume arrived: drop the old connection (if any) and stop the TTL."""
        sid = _sid(control)
        self._takeover.add(sid)
        self.by_key.attached(sid)
        control.preempt()
        self._stop_ttl(sid)

    def _stop_ttl(self, sid: bytes) -> None:
        scope = self._ttl_scopes.pop(sid, None)
        if scope is not None:
            scope.cancel()

    async def _run(
        self,
        control: SessionControl,
        transport: Transport,
        conn: VenueConnection,
        done: HandshakeComplete,
    ) -> None:
        sid = _sid(control)
        async with control.attach_lock:
            self._takeover.discard(sid)
            if control.finished:
                await close_forcefully(transport)
                return
            if done.resumed:
                logger.info(
                    "session %s resumed from %s",
                    control.session.session_id,
                    transport.remote_address,
                )
            err = await control.attach(transport, conn, resumed=done.resumed)
            if sid in self._takeover or control.finished:
                return
            if err.category is Category.RESUMABLE and not control.closing:
                control.detach(State.STALE)
                self.by_key.detached(sid, trio.current_time())
                self._start(self._expire, control)
                return
            self._end(control, err)

    async def _reject(
        self,
        transport: Transport,
        conn: VenueConnection,
        code: CloseCode,
        retry_after: float | None = None,
        *,
        reason: str | None = None,
    ) -> None:
        with trio.move_on_after(self.config.close_timeout):
            try:
                conn.close(code, reason or code.name.lower(), retry_after=retry_after)
                for out in conn.data_to_send():
                    await transport.send(out)
            except SessionError:
                pass
        await transport.fail(*observable_close(code))

    # -- the end of a session --------------------------------------------------------------

    def _end(self, control: SessionControl, err: SessionError) -> None:
        """End a session for good.  A slow consumer's unsent data is dropped at once
        (the participant consumed none of it); what it sent is still delivered."""
        control.finish(err)
        if isinstance(err, SlowConsumer):
            control.drop_unsent()

    async def _expire(self, control: SessionControl) -> None:
        """The dead man's switch timer: end the session unless resumed within the TTL.

        A session whose participant had stopped consuming before its connection
        was lost ends at the slow-consumer deadline if that comes first: queued
        data waits on it no longer than ``slow_consumer_timeout``, connected or not.
        """
        sid = _sid(control)
        cfg = self.config
        ttl_at = trio.current_time() + cfg.resume_ttl
        stalled = control.stalled_since
        stall_at = float("inf") if stalled is None else stalled + cfg.slow_consumer_timeout
        with trio.CancelScope() as scope:
            self._ttl_scopes[sid] = scope
            await trio.sleep_until(min(ttl_at, stall_at))
            self._ttl_scopes.pop(sid, None)
            if control.finished or sid in self._takeover:
                return
            if stall_at < ttl_at:
                logger.warning(
                    "session %s: participant consumed nothing for %ss and is gone: slow consumer",
                    control.session.session_id,
                    cfg.slow_consumer_timeout,
                )
                err: SessionError = SlowConsumer(
                    f"participant consumed nothing for {cfg.slow_consumer_timeout}s while "
                    "messages waited (and its connection was lost)"
                )
            else:
                logger.warning(
                    "session %s not resumed within %ss: dead man's switch",
                    control.session.session_id,
                    cfg.resume_ttl,
                )
                err = SessionExpired(f"participant did not resume within {cfg.resume_ttl}s")
            self._end(control, err)

    async def _watch_end(self, control: SessionControl) -> None:
        """Call at most one end hook per session, once it is over.

        ``on_logout``: it ended with a graceful close from the participant (a
        logout, or the participant's answer to the venue's close after the
        handler returned).  ``on_session_lost`` (the dead man's switch): it
        ended with an error — not resumed in time, slow consumer, revoked key,
        handler failure, a fatal error.  Neither: the venue closed gracefully
        and the participant did not answer within ``close_timeout``.
        """
        await control.wait_finished()
        self._forget(control)
        err = control.error
        if err is not None and is_clean_close(err):
            if err.remote:
                await self._hook(self.on_logout, control)
            return
        await self._hook(self.on_session_lost, control)

    def _forget(self, control: SessionControl) -> None:
        """The session ended: it no longer counts anywhere, and its TTL timer stops."""
        sid = _sid(control)
        self.sessions.pop(sid, None)
        self.by_key.remove(control.session.key_id, sid)
        self._stop_ttl(sid)

    async def _hook(self, hook: Hook | None, control: SessionControl) -> None:
        if hook is None:
            return
        session = control.session
        try:
            result = hook(session)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("hook %r failed for session %s", hook, session.session_id)

    async def _run_handler(self, session: Session) -> None:
        try:
            await self.handler(session)
        except SessionError as exc:
            # The session itself ended (expired, revoked, closed): a normal end
            # for a handler that let the error propagate.
            logger.debug("handler of session %s ended with %r", session.session_id, exc)
        except Exception:
            logger.exception("handler failed for session %s", session.session_id)
            await session.aclose(CloseCode.HANDLER_ERROR, "handler failed")
        else:
            await session.aclose()


def _sid(control: SessionControl) -> bytes:
    record = control.record
    assert record is not None  # venue sessions are bound when created
    return record.session_id
