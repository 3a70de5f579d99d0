"""Venue side: ``ts.serve``.

One logical session can span several connections: when a participant's
connection breaks, the session is *detached* (STALE) and kept for
``resume_ttl`` with its replay buffer; a reconnect that presents a valid binder
takes it over and the handler's ``async for`` just continues.  If nobody
resumes it in time, the dead man's switch fires (``on_session_lost``) so the
venue can cancel the participant's resting orders; a graceful logout fires
``on_logout`` instead — the two are never confused.

Cheap checks come before expensive crypto (research/crypto.md §4.3): per-address
and per-key token buckets, then the registry lookup, then signatures.
"""

from __future__ import annotations

import inspect
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import trio

from ._config import SessionConfig
from ._errors import (
    AuthenticationError,
    Category,
    CloseCode,
    ConnectionLost,
    SessionError,
)
from ._identity import Identity, KeyRegistry
from ._protocol import HandshakeComplete, HelloReceived, Role, VenueConnection
from ._session import Session, State, _close_forcefully, _is_clean_close, _new_session
from ._transport import (
    Transport,
    TransportLimits,
    TransportServer,
    observable_close,
    serve_transport,
)

__all__ = ["VenueServer", "serve"]

logger = logging.getLogger("trio_session.server")

Handler = Callable[[Session], Awaitable[None]]
Hook = Callable[[Session], Awaitable[None] | None]


class _TokenBuckets:
    """Per-key token buckets: ``rate`` per second, bursts of ``burst`` (default:
    one second's worth).  Idle full buckets are pruned past ``max_keys`` keys."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float],
        *,
        burst: float | None = None,
        max_keys: int = 100_000,
    ) -> None:
        self.rate = rate
        self.burst = max(1.0, rate if burst is None else burst)
        self._clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}
        self._max_keys = max_keys

    def take(self, key: Hashable) -> float:
        """0.0 when allowed (a token was taken), else seconds until one is available."""
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            self._prune(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        if len(self._buckets) > self._max_keys:
            full_after = self.burst / self.rate
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}


@attrs.define(eq=False)
class VenueServer:
    """What ``await nursery.start(ts.serve, ...)`` returns."""

    host: str
    #: The bound port (useful with port 0).
    port: int
    listeners: list[Any]
    _venue: _Venue = attrs.field(repr=False, alias="venue")

    @property
    def sessions(self) -> list[Session]:
        """Sessions alive now (LIVE or detached awaiting resume)."""
        return [s for s in self._venue.sessions.values() if s.state is not State.CLOSED]


async def serve(
    handler: Handler,
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

    ``on_session_lost(session)`` — the dead man's switch — is called exactly
    once when a session whose connection broke was not resumed within
    ``resume_ttl``; ``on_logout(session)`` when the participant closed it
    gracefully.  Runs until cancelled.
    """
    cfg = config or SessionConfig()
    venue = _Venue(handler, identity, registry, cfg, messages, on_session_lost, on_logout)
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


class _Venue:
    def __init__(
        self,
        handler: Handler,
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
        self.sessions: dict[bytes, Session] = {}
        self.nursery: trio.Nursery | None = None
        self.addr_buckets = _TokenBuckets(config.handshake_rate_per_address, trio.current_time)
        self.key_buckets = _TokenBuckets(config.handshake_rate_per_key, trio.current_time)
        self._ttl_scopes: dict[bytes, trio.CancelScope] = {}
        self._takeover: set[bytes] = set()
        self._hooked: set[bytes] = set()

    @asynccontextmanager
    async def running(self) -> AsyncIterator[trio.Nursery]:
        """Run the venue's background work (handlers, TTL timers, hooks) for the
        block; the nursery is yielded for the listener.  An exception from the
        block is re-raised outside the nursery, so it is never an ExceptionGroup.
        """
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
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

    # -- revocation ----------------------------------------------------------------------

    def on_revoked(self, key_id: str) -> None:
        assert self.nursery is not None
        for session in list(self.sessions.values()):
            if session.key_id == key_id and session.state is not State.CLOSED:
                logger.warning("key %s revoked: ending session %s", key_id, session.session_id)
                self.nursery.start_soon(session.aclose, CloseCode.KEY_REVOKED, "key revoked")

    # -- one connection ------------------------------------------------------------------

    async def on_transport(self, transport: Transport) -> None:
        cfg = self.config
        conn = VenueConnection(self.identity, cfg, clock=trio.current_time)
        existing: Session | None = None
        done: HandshakeComplete | None = None
        try:
            # One deadline from TCP accept: upgrade and authentication together.
            with transport.handshake_deadline(cfg.handshake_timeout):
                frame = await transport.receive()
                addr = transport.remote_address.rsplit(":", 1)[0]
                wait = self.addr_buckets.take(addr)
                if wait:
                    await self._reject(transport, conn, CloseCode.RATE_LIMITED, wait)
                    return
                (hello,) = conn.receive_data(frame)
                assert isinstance(hello, HelloReceived)
                wait = self.key_buckets.take(hello.key_id)
                if wait:
                    await self._reject(transport, conn, CloseCode.RATE_LIMITED, wait)
                    return
                public_key = self.registry.lookup(hello.key_id)
                sid = hello.resume_session_id
                if sid is not None:
                    existing = self.sessions.get(sid)
                    if existing is not None and (
                        existing.state is State.CLOSED or existing.key_id != hello.key_id
                    ):
                        existing = None
                try:
                    conn.accept(public_key, existing._pstate if existing else None)
                except AuthenticationError as exc:
                    if exc.code is CloseCode.BINDER_REUSED and existing is not None:
                        logger.error(
                            "resume binder reused for session %s (replayed ClientHello?)",
                            existing.session_id,
                        )
                        pass  # the session is left alone: a replay cannot complete M3
                    raise
                for out in conn.data_to_send():
                    await transport.send(out)
                if not conn._resumed:
                    existing = None
                events = conn.receive_data(await transport.receive())
                done = events[0]  # type: ignore[assignment]
                assert isinstance(done, HandshakeComplete)
                transport.mark_authenticated()
                if not done.resumed:
                    # A new session has nothing to retransmit: confirm the
                    # handshake now, rather than once the session's tasks are
                    # up, to take that scheduling off the participant's connect
                    # path.  A resume's writer sends its retransmission first.
                    for out in conn.data_to_send():
                        await transport.send(out)
        except trio.TooSlowError:
            logger.debug("handshake from %s timed out", transport.remote_address)
            await self._reject(transport, conn, CloseCode.HANDSHAKE_TIMEOUT)
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
        if existing is not None:
            session = existing
            self._take_over(session)
        else:
            session = _new_session(Role.VENUE, cfg, self.messages, conn.session.key_id)
            session._bind(conn.session)
            self.sessions[conn.session.session_id] = session
            self.nursery_start(self._run_handler, session)
            self.nursery_start(self._watch_end, session)
        await self._run(session, transport, conn, resumed=done.resumed)

    def _take_over(self, session: Session) -> None:
        assert session._pstate is not None
        sid = session._pstate.session_id
        self._takeover.add(sid)
        session._preempt()
        scope = self._ttl_scopes.pop(sid, None)
        if scope is not None:
            scope.cancel()

    async def _run(
        self, session: Session, transport: Transport, conn: VenueConnection, *, resumed: bool
    ) -> None:
        assert session._pstate is not None
        sid = session._pstate.session_id
        async with session._attach_lock:
            self._takeover.discard(sid)
            if session.state is State.CLOSED:
                await _close_forcefully(transport)
                return
            if resumed:
                session._counters.resumes += 1
                logger.info(
                    "session %s resumed from %s", session.session_id, transport.remote_address
                )
            err = await session._run_connection(transport, conn)
            if sid in self._takeover or session._finished.is_set():
                return
            if err.category is Category.RESUMABLE and not session._closing:
                session._mark_disconnected(State.STALE)
                self.nursery_start(self._expire, session)
                return
            session._finish(err)

    async def _expire(self, session: Session) -> None:
        assert session._pstate is not None
        sid = session._pstate.session_id
        with trio.CancelScope() as scope:
            self._ttl_scopes[sid] = scope
            await trio.sleep(self.config.resume_ttl)
            if session.state is State.CLOSED or sid in self._takeover:
                return
            logger.warning(
                "session %s not resumed within %ss: dead man's switch",
                session.session_id,
                self.config.resume_ttl,
            )
            session._finish(
                SessionError(
                    f"participant did not resume within {self.config.resume_ttl}s",
                    code=CloseCode.SESSION_EXPIRED,
                )
            )
            self._ttl_scopes.pop(sid, None)

    async def _watch_end(self, session: Session) -> None:
        """Call exactly one end hook per session, once it is over.

        ``on_logout``: the participant closed gracefully.  ``on_session_lost``
        (the dead man's switch): it ended in any other way that the venue's own
        handler did not choose — not resumed in time, slow consumer, revoked
        key, handler failure, a fatal error.  A graceful close by the venue's
        handler (it returned) calls neither: the venue decided.
        """
        await session._finished.wait()
        err = session._error
        if err is not None and _is_clean_close(err):
            if err.remote:
                await self._hook(self.on_logout, session)
            else:
                self._forget(session)
            return
        await self._hook(self.on_session_lost, session)

    def _forget(self, session: Session) -> None:
        if session._pstate is not None:
            self.sessions.pop(session._pstate.session_id, None)

    async def _hook(self, hook: Hook | None, session: Session) -> None:
        assert session._pstate is not None
        sid = session._pstate.session_id
        self._forget(session)
        if hook is None or sid in self._hooked:
            return
        self._hooked.add(sid)
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

    def nursery_start(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        assert self.nursery is not None
        self.nursery.start_soon(fn, *args)
