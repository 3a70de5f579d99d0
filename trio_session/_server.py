"""Venue side: ``ts.serve``, and the runner that keeps the venue's sessions.

One logical session can span several connections: when a participant's
connection breaks, the session is *detached* (STALE) and kept for
``resume_ttl`` with its replay buffer; a reconnect that presents a valid binder
takes it over and the handler's ``async for`` just continues.  If nobody
resumes it in time, the dead man's switch fires (``on_session_lost``) so the
venue can cancel the participant's resting orders; a graceful logout fires
``on_logout`` instead — the two are never confused.

Every handshake is admitted cheapest check first (``_admission.py``), then
driven by the shared handshake loop (``_driver.py``).
"""

from __future__ import annotations

import inspect
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, final

import attrs
import trio

from ._admission import Admission
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
    is_clean_close,
)
from ._identity import Identity, KeyRegistry
from ._lifecycle import State
from ._link import close_forcefully
from ._persist import store_runtime
from ._session import Session
from ._transport import (
    Transport,
    TransportLimits,
    TransportServer,
    observable_close,
    serve_transport,
)
from ._venue_store import VenueStore
from .protocol import HandshakeComplete, HelloReceived, Role, SessionRecord, VenueConnection
from .store import SessionStatus, SessionStore

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
    store: SessionStore | None = None,
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

    ``store`` keeps sessions across restarts of the venue (e.g.
    ``ts.SqliteStore("venue.db")``): started again on the same store, the venue
    restores every session, resumable within ``resume_ttl`` of its detach, and
    loses no message ``send()`` returned for (docs/howto/durable.md).  Raises
    :class:`~trio_session.StoreError` for a store that cannot be used, and when
    a write to it fails.
    """
    cfg = config or SessionConfig()
    venue = VenueRunner(
        handler, identity, registry, cfg, messages, on_session_lost, on_logout, store=store
    )
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
        *,
        store: SessionStore | None = None,
        wall_clock: Callable[[], float] = time.time,
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
        self._nursery: trio.Nursery | None = None
        self._ttl_scopes: dict[bytes, trio.CancelScope] = {}
        self._takeover: set[bytes] = set()
        self._hooked: set[bytes] = set()
        #: A durable store, and the clock its detach times and stamps use.
        self.store = store if store is not None and store.durable else None
        self.wall_clock = wall_clock
        self._store: VenueStore | None = None

    def live_sessions(self) -> list[Session]:
        """Sessions alive now (LIVE or detached awaiting resume)."""
        return [c.session for c in self.sessions.values() if c.session.state is not State.CLOSED]

    @asynccontextmanager
    async def running(self) -> AsyncIterator[trio.Nursery]:
        """Run the venue's background work (handlers, TTL timers, hooks) for the
        block; the nursery is yielded for the listener.  An exception from the
        block is re-raised outside the nursery, so it is never an ExceptionGroup.

        With a durable store, its sessions are restored first, and a failed
        write to it ends the block with that :class:`~trio_session.StoreError`.
        """
        failure: BaseException | None = None
        async with self._durable() as vstore:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.registry.add_revocation_listener(self.on_revoked)
                try:
                    if vstore is not None:
                        await self._restore(vstore)
                        nursery.start_soon(vstore.stamp_forever)
                        nursery.start_soon(vstore.watch, nursery)
                    yield nursery
                except BaseException as exc:
                    failure = exc
                finally:
                    self.registry.remove_revocation_listener(self.on_revoked)
                    nursery.cancel_scope.cancel()
            if vstore is not None and vstore.runtime.error is not None:
                raise vstore.runtime.error
        if failure is not None:
            raise failure

    @asynccontextmanager
    async def _durable(self) -> AsyncIterator[VenueStore | None]:
        """The venue's store for the block (None without a durable one)."""
        if self.store is None:
            yield None
            return
        async with store_runtime(self.store, self.wall_clock) as runtime:
            runtime.claim("venue", "another venue")
            self._store = vstore = VenueStore(runtime, self.config.resume_ttl)
            try:
                yield vstore
            finally:
                self._store = None
                await vstore.final_stamp(list(self.sessions.values()))
                runtime.release("venue")

    async def _restore(self, vstore: VenueStore) -> None:
        """Continue every stored session (see ``_venue_store``)."""
        contents = await vstore.load()
        for stored in contents.sessions:
            control = open_session(Role.VENUE, self.config, self.messages, stored.state.key_id)
            left = vstore.restore(control, stored, contents.alive_at)
            self.sessions[stored.state.session_id] = control
            control.detach(State.STALE)
            self._start(self._watch_end, control)
            end = vstore.owed_end(stored)
            if end is None and left <= 0:
                end = SessionExpired("participant did not resume within resume_ttl")
            if end is not None:
                control.finish(end)  # its end hook runs now, once
                continue
            self._start(self._run_handler, control.session)
            self._start(self._expire, control, left)
        if contents.sessions:
            logger.info(
                "restored %d sessions from %s",
                len(contents.sessions),
                vstore.runtime.store.location,
            )

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
                    on_hello=partial(self._accept, conn, resuming),
                    eager_confirm=self.store is None,
                )
                transport.mark_authenticated()
        except trio.TooSlowError:
            logger.debug("handshake from %s timed out", transport.remote_address)
            await self._reject(transport, conn, CloseCode.HANDSHAKE_TIMEOUT)
            return
        except RateLimited as exc:
            await self._reject(transport, conn, exc.code, exc.retry_after)
            return
        except AuthenticationError as exc:
            logger.warning("handshake from %s refused: %s", transport.remote_address, exc)
            await self._reject(transport, conn, exc.code)
            return
        except SessionError as exc:
            logger.info("handshake from %s failed: %s", transport.remote_address, exc)
            if not isinstance(exc, ConnectionLost):
                await self._reject(transport, conn, exc.code)
            return
        assert conn.session is not None
        if done.resumed:
            control = resuming[0]
            self._take_over(control)
        else:
            control = self._new_session(conn.session)
        await self._run(control, transport, conn, done)

    def _accept(
        self, conn: VenueConnection, resuming: list[SessionControl], hello: HelloReceived
    ) -> None:
        """ClientHello: key rate, registry, the session to resume, then accept()."""
        self.admission.admit_key(hello.key_id)
        public_key = self.registry.lookup(hello.key_id)
        existing = self._resumable(hello)
        try:
            conn.accept(public_key, existing.record if existing else None)
        except AuthenticationError as exc:
            if exc.code is CloseCode.BINDER_REUSED and existing is not None:
                # The session is left alone: a replayed ClientHello cannot complete M3.
                logger.error(
                    "resume binder reused for session %s (replayed ClientHello?)",
                    existing.session.session_id,
                )
            raise
        if conn.resumed and existing is not None:
            resuming.append(existing)

    def _resumable(self, hello: HelloReceived) -> SessionControl | None:
        sid = hello.resume_session_id
        existing = self.sessions.get(sid) if sid is not None else None
        if existing is None or existing.finished or existing.session.key_id != hello.key_id:
            return None
        return existing

    def _new_session(self, record: SessionRecord) -> SessionControl:
        control = open_session(Role.VENUE, self.config, self.messages, record.key_id)
        if self._store is not None:
            self._store.adopt(control)
        control.bind(record)
        self.sessions[record.session_id] = control
        self._start(self._run_handler, control.session)
        self._start(self._watch_end, control)
        return control

    def _take_over(self, control: SessionControl) -> None:
        """A resume arrived: drop the old connection (if any) and stop the TTL."""
        sid = _sid(control)
        self._takeover.add(sid)
        control.preempt()
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
                if self._store is not None:
                    self._store.attached(control)
            err = await control.attach(transport, conn, resumed=done.resumed)
            if sid in self._takeover or control.finished:
                return
            if err.category is Category.RESUMABLE and not control.closing:
                control.detach(State.STALE)
                if self._store is not None:
                    self._store.detached(control)
                self._start(self._expire, control)
                return
            control.finish(err)

    async def _reject(
        self,
        transport: Transport,
        conn: VenueConnection,
        code: CloseCode,
        retry_after: float | None = None,
    ) -> None:
        with trio.move_on_after(self.config.close_timeout):
            try:
                conn.close(code, code.name.lower(), retry_after=retry_after)
                for out in conn.data_to_send():
                    await transport.send(out)
            except SessionError:
                pass
        await transport.fail(*observable_close(code))

    # -- the end of a session --------------------------------------------------------------

    async def _expire(self, control: SessionControl, left: float | None = None) -> None:
        """The dead man's switch timer: end the session unless resumed within the TTL
        (``left``: what remains of it, for a session restored from a store)."""
        sid = _sid(control)
        ttl = self.config.resume_ttl
        with trio.CancelScope() as scope:
            self._ttl_scopes[sid] = scope
            await trio.sleep(ttl if left is None else left)
            if control.finished or sid in self._takeover:
                return
            logger.warning(
                "session %s not resumed within %ss: dead man's switch",
                control.session.session_id,
                ttl,
            )
            control.finish(SessionExpired(f"participant did not resume within {ttl}s"))
            self._ttl_scopes.pop(sid, None)

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
        err = control.error
        if err is not None and is_clean_close(err):
            if err.remote:
                await self._hook(self.on_logout, control, SessionStatus.LOGGED_OUT)
            else:
                self.sessions.pop(_sid(control), None)
                if self._store is not None:
                    await self._store.forget(control)
            return
        await self._hook(self.on_session_lost, control, SessionStatus.LOST)

    async def _hook(self, hook: Hook | None, control: SessionControl, end: SessionStatus) -> None:
        """Run an end hook once; with a store, ``end`` is recorded first and the
        session is removed only once the hook returned."""
        sid = _sid(control)
        self.sessions.pop(sid, None)
        store = self._store
        if hook is not None and sid not in self._hooked:
            self._hooked.add(sid)
            if store is not None:
                await store.ending(control, end)
            session = control.session
            try:
                result = hook(session)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("hook %r failed for session %s", hook, session.session_id)
        if store is not None:
            await store.forget(control)

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
