"""Venue side: ``ts.serve``, and the runner that keeps the venue's sessions.

One logical session can span several connections: when a participant's
connection breaks, the session is *detached* (STALE) and kept for
``resume_ttl`` with its replay buffer; a reconnect that presents a valid binder
takes it over and the handler's ``async for`` just continues.  If nobody
resumes it in time, the dead man's switch fires (``on_session_lost``) so the
venue can cancel the participant's resting orders; a graceful logout fires
``on_logout`` instead — the two are never confused.

Every handshake is admitted cheapest check first (``_venue_gate.py``), then
driven by the shared handshake loop (``_driver.py``).  What one identity and
all sessions together may hold is bounded too: ``max_sessions_per_key``
(``_key_sessions.py``) and ``max_buffered_bytes`` (``_budget.py``).
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, final, overload

import attrs
import trio

from ._budget import MemoryGuard
from ._clock import run_clock
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
)
from ._gc import GcFreezer
from ._identity import Identity, KeyRegistry
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
from ._typing import M, TypeForm
from ._venue_gate import VenueGate, detached_end, end_session, sid_of
from ._venue_hooks import EndHooks
from ._venue_stats import VenueStats, VenueTally
from ._venue_store import VenueStore, venue_store
from .protocol import HandshakeComplete, HelloReceived, Role, SessionRecord, VenueConnection
from .store import SessionStore

__all__ = ["VenueServer", "VenueStats", "serve"]

logger = logging.getLogger("trio_session.server")

#: The application's venue handler: called once per logical session.
SessionHandler = Callable[[Session[M]], Awaitable[None]]
#: ``on_session_lost`` / ``on_logout``: a plain or async callable.
Hook = Callable[[Session[M]], Awaitable[None] | None]


@attrs.define(eq=False)
class VenueServer:
    """What ``await nursery.start(ts.serve, ...)`` returns."""

    host: str
    #: The bound port (useful with port 0).
    port: int
    listeners: list[Any]
    _venue: VenueRunner = attrs.field(repr=False, alias="venue")

    @property
    def sessions(self) -> list[Session[Any]]:
        """Sessions alive now (LIVE or detached awaiting resume)."""
        return self._venue.live_sessions()

    def stats(self) -> VenueStats:
        """The venue's numbers now, for monitoring: sessions by state, messages and
        bytes each way, resumes, resets, rekeys, RTTs, queue depths, drops, slow
        consumers and refused handshakes by reason.  Counters include ended
        sessions; computed when called (one pass over the live sessions)."""
        return self._venue.stats()


@overload
async def serve(
    handler: SessionHandler[bytes],
    identity: Identity,
    registry: KeyRegistry,
    host: str,
    port: int,
    *,
    config: SessionConfig | None = None,
    messages: None = None,
    ssl_context: ssl.SSLContext | None = None,
    on_session_lost: Hook[bytes] | None = None,
    on_logout: Hook[bytes] | None = None,
    store: SessionStore | None = None,
    gc_freeze: bool = False,
    task_status: trio.TaskStatus[VenueServer] = trio.TASK_STATUS_IGNORED,
) -> None: ...


@overload
async def serve(
    handler: SessionHandler[M],
    identity: Identity,
    registry: KeyRegistry,
    host: str,
    port: int,
    *,
    config: SessionConfig | None = None,
    messages: TypeForm[M],
    ssl_context: ssl.SSLContext | None = None,
    on_session_lost: Hook[M] | None = None,
    on_logout: Hook[M] | None = None,
    store: SessionStore | None = None,
    gc_freeze: bool = False,
    task_status: trio.TaskStatus[VenueServer] = trio.TASK_STATUS_IGNORED,
) -> None: ...


async def serve(
    handler: SessionHandler[Any],
    identity: Identity,
    registry: KeyRegistry,
    host: str,
    port: int,
    *,
    config: SessionConfig | None = None,
    messages: Any = None,
    ssl_context: ssl.SSLContext | None = None,
    on_session_lost: Hook[Any] | None = None,
    on_logout: Hook[Any] | None = None,
    store: SessionStore | None = None,
    gc_freeze: bool = False,
    task_status: trio.TaskStatus[VenueServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve participant sessions until cancelled: ``server = await nursery.start(ts.serve, ...)``.

    ``nursery.start`` returns the :class:`VenueServer` once listening (pass the
    keyword options with ``functools.partial``).  Failing to listen raises
    :class:`OSError` (address in use, not an address of this machine) or
    :class:`ValueError` (a port outside 0..65535) from ``nursery.start``,
    as itself.

    ``handler(session)`` is called once per *logical* session and survives the
    participant's reconnects.  When it returns, the session is closed
    gracefully; when it raises, the error is logged, the participant receives
    CLOSE(HANDLER_ERROR), and the server keeps serving everyone else.  A
    :class:`~trio_session.SessionError` from it (the session ended) is a
    normal end.

    At most one end hook runs per session.  ``on_session_lost(session)`` — the
    dead man's switch — when it ended without a graceful close: usually its
    connection broke and it was not resumed within ``resume_ttl``
    (:class:`~trio_session.SessionExpired`), but also a handler failure, a
    revoked key, a slow consumer or a fatal error: cancel the participant's
    resting orders there.  ``on_logout(session)`` when it ended with a graceful
    close from the participant (a logout, or its answer to the venue's close
    once the handler returned).

    Args:
        handler: ``async def handler(session) -> None``, once per logical session
            (a :class:`~trio_session.Router` is one).
        identity: the venue's :class:`~trio_session.Identity` (participants pin
            its public key).
        registry: the participants' public keys; revoking a key id ends its
            live sessions.
        host: address to listen on (``"0.0.0.0"``: all IPv4 interfaces).
        port: TCP port, 0..65535; 0 picks a free one (read ``VenueServer.port``).
        config: timers, capacities and limits; the heartbeat timing is dictated
            to participants.
        messages: the application message type (as for :func:`connect`); the
            handler then gets a ``Session[that type]``.
        ssl_context: server TLS context: serve ``wss://``.
        on_session_lost: the dead man's switch (sync or async), see above.
        on_logout: called (sync or async) after a participant's graceful logout.
        store: where sessions are kept (default: in memory, for the life of the
            process).  With :class:`~trio_session.SqliteStore` the venue started
            again on the same store, even after ``kill -9``, restores every
            session (resumable within ``resume_ttl`` of its detach) and loses no
            message ``send()`` returned for (docs/howto/durable.md).  A store
            that cannot be used, or a failed write to it, raises
            :class:`~trio_session.StoreError`.
        gc_freeze: the garbage-collector policy for venues holding thousands of
            sessions: established sessions are moved out of the collector's reach
            (:func:`gc.freeze`), so that no full collection pauses every session for
            hundreds of milliseconds; after churn, one full collection reclaims what
            ended sessions left (docs/howto/scale.md).  Process-wide, hence off by
            default.
        task_status: for ``nursery.start``; receives the :class:`VenueServer`.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, got {port!r}")
    # modes=None prefers "aead" without TLS (docs/api.md, SessionConfig.modes).
    cfg = (config or SessionConfig()).for_venue(tls=ssl_context is not None)
    venue = VenueRunner(
        handler,
        identity,
        registry,
        cfg,
        messages,
        on_session_lost,
        on_logout,
        store=store,
        freezer=GcFreezer() if gc_freeze else None,
    )
    async with venue.running() as nursery:
        try:
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
        except OSError as exc:  # name the address; the original stays the cause
            why = exc.strerror or str(exc) or type(exc).__name__
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {why}") from exc
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
        handler: SessionHandler[Any],
        identity: Identity,
        registry: KeyRegistry,
        config: SessionConfig,
        messages: Any | None,
        on_session_lost: Hook[Any] | None,
        on_logout: Hook[Any] | None,
        *,
        store: SessionStore | None = None,
        wall_clock: Callable[[], float] = time.time,
        freezer: GcFreezer | None = None,
    ) -> None:
        self.handler = handler
        self.identity = identity
        self.registry = registry
        self.config = config
        self.messages = messages
        #: Sessions by session id, kept until they end.
        self.sessions: dict[bytes, SessionControl] = {}
        #: Admission and the sessions of each key (``max_sessions_per_key``).
        self.gate = VenueGate(config, registry, self.sessions)
        #: The bytes all sessions buffer (``max_buffered_bytes``).
        self.memory = MemoryGuard(config.max_buffered_bytes, self.sessions.values)
        self.tally = VenueTally(trio.current_time)
        self.hooks = EndHooks(self.sessions, self.tally, on_session_lost, on_logout)
        #: The garbage-collector policy (``serve(gc_freeze=True)``), if any.
        self.freezer = freezer
        self._nursery: trio.Nursery | None = None
        self._ttl_scopes: dict[bytes, trio.CancelScope] = {}
        self._takeover: set[bytes] = set()
        #: A durable store, and the clock its detach times and stamps use.
        self.store = store if store is not None and store.durable else None
        self.wall_clock = wall_clock
        self._store: VenueStore | None = None

    def stats(self) -> VenueStats:
        """The venue's numbers now (see :class:`VenueStats`)."""
        return self.tally.snapshot(self.live_sessions())

    def live_sessions(self) -> list[Session[Any]]:
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
        sessions = self.sessions.values
        async with venue_store(self.store, self.wall_clock, self.config, sessions) as vstore:
            self._store = self.hooks.store = vstore
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self.memory.run)
                if self.freezer is not None:
                    nursery.start_soon(self.freezer.run)
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

    async def _restore(self, vstore: VenueStore) -> None:
        """Continue every stored session (see ``_venue_store``)."""
        ledger = self.memory.ledger
        for control, left, end in await vstore.restore_all(self.config, self.messages, ledger):
            self.sessions[sid_of(control)] = control
            self._opened(control)
            self.gate.detached(control)
            control.when_finished(partial(self._ended, control))
            if end is not None:
                control.finish(end)  # its end hook runs now, once
                continue
            self._start(self._run_handler, control.session)
            self._start(self._expire, control, left)

    def _opened(self, control: SessionControl) -> None:
        self.gate.opened(control)
        if self.freezer is not None:
            self.freezer.session_opened()

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
        conn = VenueConnection(self.identity, cfg, clock=run_clock())
        hs = _Handshake(transport.remote_address)
        try:
            # One deadline from TCP accept: upgrade and authentication together.
            with transport.handshake_deadline(cfg.handshake_timeout):
                done = await run_handshake(
                    transport,
                    conn,
                    admit=partial(self.gate.admit_address, transport.remote_address),
                    on_hello=partial(self._accept, conn, hs),
                    eager_confirm=self.store is None,
                )
                transport.mark_authenticated()
                if not done.resumed:
                    assert conn.session is not None
                    self.gate.make_room(conn.session.key_id)  # may refuse: SESSION_LIMIT
        except trio.TooSlowError:
            self._refused(hs, CloseCode.HANDSHAKE_TIMEOUT, f"not done in {cfg.handshake_timeout}s")
            await self._reject(transport, conn, CloseCode.HANDSHAKE_TIMEOUT)
            return
        except RateLimited as exc:
            self._refused(hs, exc.code, f"{exc}; told to retry in {exc.retry_after:.3f}s")
            await self._reject(transport, conn, exc.code, exc.retry_after)
            return
        except AuthenticationError as exc:
            self._refused(hs, exc.code, str(exc))
            # Only a mode mismatch says more than its code: both lists are public, and
            # the participant needs them to fix its SessionConfig.modes.
            detail = str(exc) if exc.code is CloseCode.VERSION_MISMATCH else None
            await self._reject(transport, conn, exc.code, reason=detail)
            return
        except SessionError as exc:
            logger.info("handshake from %s failed: %s", hs.address, exc)
            if not isinstance(exc, ConnectionLost):
                self._refused(hs, exc.code, str(exc))
                await self._reject(transport, conn, exc.code)
            return
        assert conn.session is not None
        if done.resumed:
            assert hs.resuming is not None
            control = hs.resuming
            if control.ending:  # the venue began closing it between M1 and M3
                await self._reject(transport, conn, CloseCode.RESUME_REFUSED)
                return
            self._take_over(control)
            if self.freezer is not None:
                self.freezer.connection_resumed()
        else:
            control = self._new_session(conn.session, hs)
        await self._run(control, transport, conn, done)

    def _refused(self, hs: _Handshake, code: CloseCode, why: str) -> None:
        self.tally.refused(code, hs.address, hs.key_id, why)

    def _accept(self, conn: VenueConnection, hs: _Handshake, hello: HelloReceived) -> None:
        """ClientHello: admission (``_venue_gate.py``), then accept()."""
        hs.key_id = hello.key_id
        hs.resume_session_id = hello.resume_session_id
        hs.resuming = self.gate.accept(conn, hs.address, hello)

    def _new_session(self, record: SessionRecord, hs: _Handshake) -> SessionControl:
        control = open_session(
            Role.VENUE, self.config, self.messages, record.key_id, ledger=self.memory.ledger
        )
        if self._store is not None:
            self._store.adopt(control)
        control.bind(record)
        self.sessions[record.session_id] = control
        self._opened(control)
        self.tally.opened += 1
        if hs.resume_session_id is not None:
            # The participant's side raises SessionReset with what it had in doubt.
            self.tally.resets += 1
            control.log_event(
                logging.WARNING,
                "reset",
                "participant %s asked to resume session %s, which this venue no longer has "
                "(expired, or the venue restarted): new session",
                record.key_id,
                hs.resume_session_id.hex(),
                old_session_id=hs.resume_session_id.hex(),
            )
        control.log_event(
            logging.INFO,
            "login",
            "participant %s logged in from %s",
            record.key_id,
            hs.address,
            address=hs.address,
        )
        self._start(self._run_handler, control.session)
        control.when_finished(partial(self._ended, control))
        return control

    def _take_over(self, control: SessionControl) -> None:
        """A resume arrived: drop the old connection (if any) and stop the TTL."""
        sid = sid_of(control)
        self._takeover.add(sid)
        self.gate.attached(control)
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
        sid = sid_of(control)
        async with control.attach_lock:
            self._takeover.discard(sid)
            if control.finished:
                await close_forcefully(transport)
                return
            if done.resumed:
                control.log_event(
                    logging.INFO,
                    "resume",
                    "session resumed from %s (%d messages retransmitted)",
                    transport.remote_address,
                    done.retransmitted,
                    address=transport.remote_address,
                    retransmitted=done.retransmitted,
                )
                if self._store is not None:
                    self._store.attached(control)
            err = await control.attach(transport, conn, resumed=done.resumed)
            if sid in self._takeover or control.finished:
                return
            if err.category is Category.RESUMABLE and not control.closing:
                control.detach(State.STALE, f"{type(err).__name__}: {err}")
                self.gate.detached(control)
                if self._store is not None:
                    self._store.detached(control)
                self._start(self._expire, control)
                return
            end_session(control, err)

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

    async def _expire(self, control: SessionControl, left: float | None = None) -> None:
        """The dead man's switch timer: the session ends unless resumed in time
        (``detached_end``; ``left``: what remains of a restored session's TTL)."""
        sid = sid_of(control)
        at, end = detached_end(control, self.config, left)
        with trio.CancelScope() as scope:
            self._ttl_scopes[sid] = scope
            await trio.sleep_until(at)
            if control.finished or sid in self._takeover:
                return
            end_session(control, end)
            self._ttl_scopes.pop(sid, None)

    def _ended(self, control: SessionControl) -> None:
        """The session finished: free its place, then run its end hook (``EndHooks``)
        in the venue's nursery (unless the venue itself is gone)."""
        self.gate.ended(control)
        self._stop_ttl(sid_of(control))
        if self.freezer is not None:
            self.freezer.session_ended()
        nursery = self._nursery
        if nursery is not None and not nursery.cancel_scope.cancel_called:
            nursery.start_soon(self.hooks.ended, control)

    async def _run_handler(self, session: Session[Any]) -> None:
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


@attrs.define
class _Handshake:
    """What one connection's handshake revealed, for the log and the stats."""

    address: str
    key_id: str | None = None
    resume_session_id: bytes | None = None
    #: The detached session this connection resumes.
    resuming: SessionControl | None = None
