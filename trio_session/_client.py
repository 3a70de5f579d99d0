"""Participant side: ``ts.connect``, supervised by default.

The supervisor runs *outside* the session's connection nursery: a
connection's tasks fail together and leave one typed error, and the loop here
gathers the facts, asks the pure :func:`~trio_session._policy.decide` what to
do (resume, start a new session, wait, or give up) and carries it out through
the session's :class:`~trio_session._control.SessionControl`.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from ._config import SessionConfig
from ._control import SessionControl, open_session
from ._driver import run_handshake
from ._errors import CloseCode, HandshakeTimeout, SessionError, StoreError
from ._identity import Identity
from ._lifecycle import State
from ._link import close_forcefully
from ._participant_store import participant_store
from ._persist import StoreRuntime
from ._policy import Backoff, GiveUp, History, NewSession, RestartPolicy, decide
from ._session import Session
from ._transport import Transport, connect_transport
from .protocol import ClientConnection, HandshakeComplete, Role
from .store import SessionStore

__all__ = ["Backoff", "RestartPolicy", "connect"]

logger = logging.getLogger("trio_session.client")

#: Opens a transport for one connection attempt; the nursery outlives it.
TransportFactory = Callable[[trio.Nursery], Awaitable[Transport]]


@asynccontextmanager
async def connect(
    url: str,
    identity: Identity,
    venue_public_key: bytes,
    *,
    config: SessionConfig | None = None,
    messages: Any | None = None,
    ssl_context: ssl.SSLContext | None = None,
    restart: RestartPolicy | None = None,
    transport_factory: TransportFactory | None = None,
    store: SessionStore | None = None,
) -> AsyncIterator[Session]:
    """Open a participant session to the venue at ``url`` (``ws://`` or ``wss://``).

    The first connection must succeed (its typed error is raised here, so a
    wrong URL or a refused key fails fast).  After that the session is
    supervised: connection losses are resumed transparently, the state goes
    STALE -> RESUMING -> LIVE, and only a final failure reaches the
    application, from :meth:`Session.send`/:meth:`Session.receive`.  Leaving
    the block closes the session gracefully (bounded by ``close_timeout``).

    ``transport_factory`` replaces the WebSocket connection (``url`` and
    ``ssl_context`` are then ignored): an async callable that takes a nursery
    and returns a connected transport, e.g. from
    :func:`trio_session.testing.memory_venue`, for socket-free tests.

    ``store`` keeps the session across restarts of this process (e.g.
    ``ts.SqliteStore("alice.db")``): started again on the same store, ``connect``
    resumes the same session, and no message ``send()`` returned for is lost
    (docs/howto/durable.md).  Leaving the block logs out and removes the session
    from the store.  Raises :class:`~trio_session.StoreError` for a store that
    cannot be used.
    """
    cfg = config or SessionConfig()
    policy = restart or RestartPolicy()
    if len(venue_public_key) != 32:
        raise ValueError("venue_public_key must be the venue's 32-byte Ed25519 public key")
    venue_pk = bytes(venue_public_key)
    control = open_session(Role.PARTICIPANT, cfg, messages, identity.key_id)
    supervisor = Supervisor(
        control, url, identity, venue_pk, cfg, ssl_context, policy, transport_factory
    )
    async with participant_store(control, store, identity.key_id, venue_pk) as durable:
        supervisor.durable = durable is not None
        try:
            async with _supervised(control, supervisor, durable) as session:
                yield session
        finally:
            # Over (logged out, or given up): forget it.  A session whose first
            # connection failed stays, for the next attempt to resume.
            if control.persist is not None and control.finished and supervisor.started:
                control.persist.delete()


@asynccontextmanager
async def _supervised(
    control: SessionControl, supervisor: Supervisor, durable: StoreRuntime | None
) -> AsyncIterator[Session]:
    """Run the supervisor for the block (its first connection must succeed)."""
    session = control.session
    body_exc: BaseException | None = None
    async with trio.open_nursery() as nursery:
        if durable is not None:
            nursery.start_soon(_fail_with_store, control, durable)
        try:
            first_error = await nursery.start(supervisor.run)
            if first_error is not None:
                raise first_error
            try:
                yield session
            finally:
                await session.aclose()
        except BaseException as exc:  # re-raised below, outside the nursery: never a group
            body_exc = exc
        nursery.cancel_scope.cancel()
    if body_exc is not None:
        raise body_exc


async def _fail_with_store(control: SessionControl, runtime: StoreRuntime) -> None:
    """A failed store write ends the session: nothing durable can be promised."""
    await runtime.failed.wait()
    if runtime.error is not None:
        control.finish(runtime.error)


class Supervisor:
    """Runs one participant session: connect, attach, decide, repeat."""

    def __init__(
        self,
        control: SessionControl,
        url: str,
        identity: Identity,
        venue_pk: bytes,
        config: SessionConfig,
        ssl_context: ssl.SSLContext | None,
        policy: RestartPolicy,
        transport_factory: TransportFactory | None = None,
    ) -> None:
        self.control = control
        self.url = url
        self.identity = identity
        self.venue_pk = venue_pk
        self.config = config
        self.ssl_context = ssl_context
        self.policy = policy
        self.transport_factory = transport_factory
        self.backoff = Backoff(policy, clock=trio.current_time)
        #: AUTH_FAILED failures in a row (reconnects only).
        self.auth_failures = 0
        self._started = False
        #: The session is kept in a durable store (write-ahead before M3).
        self.durable = False

    @property
    def started(self) -> bool:
        """The venue confirmed a connection of this session at least once."""
        return self._started

    async def run(self, *, task_status: trio.TaskStatus[SessionError | None]) -> None:
        """Report the first connection's outcome through ``task_status`` (None once
        the venue confirmed it), then keep the session connected until it ends."""
        control = self.control
        with control.supervising():
            err, connected = await self._one_connection(task_status)
            if not connected:
                task_status.started(err)
                control.finish(err)
                return
            outage_since = 0.0
            while not control.finished and not control.closing:
                now = trio.current_time()
                if connected:  # the outage starts when a confirmed connection fails
                    outage_since = now
                control.detach(State.STALE)
                if not await self._recover(err, connected, now, outage_since):
                    break
                control.detach(State.RESUMING)
                err, connected = await self._one_connection(task_status)

    async def _recover(
        self, err: SessionError, connected: bool, now: float, outage_since: float
    ) -> bool:
        """Decide what to do about ``err`` and do it; False when the session ended."""
        if isinstance(err, StoreError):  # durability is gone: do not carry on without it
            self.control.finish(err)
            return False
        self.backoff.disconnected()
        history = History(
            policy=self.policy,
            now=now,
            outage_since=outage_since,
            auth_failures=self.auth_failures,
            delay=self.backoff.next_delay(restart=connected),
        )
        decision = decide(err, history)
        self.auth_failures = self.auth_failures + 1 if err.code is CloseCode.AUTH_FAILED else 0
        if isinstance(decision, GiveUp):
            self.control.finish(decision.error)
            return False
        if isinstance(decision, NewSession):
            self.control.discard_resume()
        logger.info(
            "session %s: %s; reconnecting in %.3fs",
            self.control.session.session_id,
            err,
            decision.delay,
        )
        await trio.sleep(decision.delay)
        return True

    async def _one_connection(
        self, task_status: trio.TaskStatus[SessionError | None]
    ) -> tuple[SessionError, bool]:
        """Connect, handshake and run one connection: (why it ended, confirmed by
        the venue at least once)."""
        async with trio.open_nursery() as link:
            try:
                transport, conn, done = await self._handshake(link)
            except SessionError as exc:
                err, connected = exc, False
            else:
                self.backoff.connected(trio.current_time())
                err = await self._attach(transport, conn, done, task_status)
                connected = self._started
            link.cancel_scope.cancel()
        return err, connected

    async def _handshake(
        self, link: trio.Nursery
    ) -> tuple[Transport, ClientConnection, HandshakeComplete]:
        cfg = self.config
        transport: Transport | None = None
        try:
            with trio.fail_after(cfg.handshake_timeout):
                transport = await self._open(link)
                conn = ClientConnection(
                    self.identity,
                    self.venue_pk,
                    cfg,
                    resume=self.control.resumable_record,
                    clock=trio.current_time,
                )
                done = await run_handshake(transport, conn, eager_confirm=not self.durable)
        except trio.TooSlowError:
            if transport is not None:
                await close_forcefully(transport)
            raise HandshakeTimeout(
                f"handshake with {self.url} not completed in {cfg.handshake_timeout}s"
            ) from None
        except BaseException:
            if transport is not None:
                with trio.CancelScope(shield=True):
                    await close_forcefully(transport)
            raise
        return transport, conn, done

    async def _open(self, link: trio.Nursery) -> Transport:
        if self.transport_factory is not None:
            return await self.transport_factory(link)
        cfg = self.config
        return await connect_transport(
            self.url,
            nursery=link,
            ssl_context=self.ssl_context,
            connect_timeout=cfg.handshake_timeout,
            max_message_size=cfg.max_frame_size,
            close_timeout=cfg.close_timeout,
        )

    async def _attach(
        self,
        transport: Transport,
        conn: ClientConnection,
        done: HandshakeComplete,
        task_status: trio.TaskStatus[SessionError | None],
    ) -> SessionError:
        control = self.control
        assert conn.session is not None
        if not done.resumed and control.record is not None and not control.restored_unused:
            logger.warning(
                "session %s could not be resumed; new session %s (%d sent messages unconfirmed)",
                control.session.session_id,
                done.session_id.hex(),
                done.abandoned,
            )
            control.reset_to(conn.session)
        elif not done.resumed:
            control.bind(conn.session)
        on_confirmed = None
        if not self._started:
            # connect() returns only once the venue confirmed our ClientFinish
            # (its first authenticated frame), so refused credentials fail
            # connect() itself.  The reader reports it directly: a waiting task
            # would cost a scheduling round.
            def on_confirmed() -> None:
                self._started = True
                task_status.started(None)

        return await control.attach(
            transport,
            conn,
            replay_until=done.replay_until,
            resumed=done.resumed,
            on_confirmed=on_confirmed,
        )
