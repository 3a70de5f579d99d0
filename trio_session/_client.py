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
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, overload

import attrs
import trio

from ._config import SessionConfig
from ._control import SessionControl, open_session
from ._driver import run_handshake
from ._errors import CloseCode, HandshakeTimeout, RateLimited, SessionError, StoreError
from ._identity import Identity
from ._lifecycle import State
from ._link import close_forcefully
from ._participant_store import participant_store
from ._persist import StoreRuntime
from ._policy import Backoff, GiveUp, History, NewSession, RestartPolicy, Wait, decide
from ._session import Session, describe_seqs
from ._transport import Transport, check_url, connect_transport
from ._typing import M, TypeForm
from .protocol import ClientConnection, HandshakeComplete, Role
from .store import SessionStore

__all__ = ["Backoff", "RestartPolicy", "connect"]

logger = logging.getLogger("trio_session.client")

#: Opens a transport for one connection attempt; the nursery outlives it.
TransportFactory = Callable[[trio.Nursery], Awaitable[Transport]]


@overload
def connect(
    url: str,
    identity: Identity,
    venue_public_key: bytes,
    *,
    config: SessionConfig | None = None,
    messages: None = None,
    ssl_context: ssl.SSLContext | None = None,
    restart: RestartPolicy | None = None,
    transport_factory: TransportFactory | None = None,
    store: SessionStore | None = None,
) -> AbstractAsyncContextManager[Session[bytes]]: ...


@overload
def connect(
    url: str,
    identity: Identity,
    venue_public_key: bytes,
    *,
    config: SessionConfig | None = None,
    messages: TypeForm[M],
    ssl_context: ssl.SSLContext | None = None,
    restart: RestartPolicy | None = None,
    transport_factory: TransportFactory | None = None,
    store: SessionStore | None = None,
) -> AbstractAsyncContextManager[Session[M]]: ...


def connect(
    url: str,
    identity: Identity,
    venue_public_key: bytes,
    *,
    config: SessionConfig | None = None,
    messages: Any = None,
    ssl_context: ssl.SSLContext | None = None,
    restart: RestartPolicy | None = None,
    transport_factory: TransportFactory | None = None,
    store: SessionStore | None = None,
) -> AbstractAsyncContextManager[Session[Any]]:
    """Open a participant session to the venue at ``url``: ``async with ts.connect(...) as s``.

    Not a coroutine: an async context manager.  Entering it makes the first
    connection and handshake; its failure is raised there as one typed error
    (a wrong URL, an unreachable venue or a refused key fails fast, never as an
    exception group).  Inside the block the session is supervised: a lost
    connection is resumed transparently (STALE -> RESUMING -> LIVE) and only a
    final failure reaches the application, from :meth:`Session.send` /
    :meth:`Session.receive`.  Leaving the block logs out gracefully (bounded by
    ``close_timeout``); cancelling the code around it drops the connection
    instead, as a crash would, so that the venue's dead man's switch fires.

    Args:
        url: ``ws://host:port/path`` or ``wss://…`` (TLS).
        identity: the participant's :class:`Identity`; its ``key_id`` must be in
            the venue's registry.
        venue_public_key: the venue's 32-byte Ed25519 public key, pinned: a
            server that cannot prove it holds the matching private key is refused.
        config: timers, capacities and limits (default ``SessionConfig()``); the
            venue's heartbeat timing applies to both ends.
        messages: the application message type: a msgspec Struct or a tagged
            union of Structs (both ends must agree); the session is then a
            ``Session[that type]``.  Without it messages are ``bytes``.
        ssl_context: client TLS context for ``wss://`` (default
            ``ssl.create_default_context()``); a ``ValueError`` with ``ws://``.
        restart: how to reconnect after a loss (default ``RestartPolicy()``;
            ``RestartPolicy(enabled=False)``: one connection only).
        transport_factory: replaces the WebSocket connection (``url`` and
            ``ssl_context`` are then ignored): an async callable taking a
            nursery and returning a connected transport, e.g.
            :meth:`trio_session.testing.MemoryVenue.connector`.
        store: where the session is kept (default: in memory, for the life of
            the process).  With :class:`~trio_session.SqliteStore` a participant
            started again on the same store, even after ``kill -9``, resumes the
            same session and loses no message ``send()`` returned for; leaving
            the block logs out and removes the session from the store
            (docs/howto/durable.md).

    Raises:
        ConnectionLost: the venue could not be reached (refused, reset, TLS failure).
        HandshakeTimeout: no answer within ``config.handshake_timeout``.
        AuthenticationError: the venue refused the key (``code`` ``UNKNOWN_KEY``,
            ``KEY_REVOKED``, ``AUTH_FAILED``) or did not prove ``venue_public_key``.
        RateLimited: the venue refuses handshakes for ``retry_after`` seconds.
        StoreError: ``store`` cannot be used (held by another process, damaged,
            from a newer version); later, a failed write to it ends the session.
        ValueError: a malformed URL, ``ssl_context`` with ``ws://``, or a
            ``venue_public_key`` that is not 32 bytes (before anything starts).
    """
    if transport_factory is None:
        check_url(url, ssl_context)
    # modes=None offers "aead" only over ws:// (docs/api.md, SessionConfig.modes).
    cfg = (config or SessionConfig()).for_participant(None if transport_factory else url)
    if len(venue_public_key) != 32:
        raise ValueError(
            f"venue_public_key must be the venue's 32-byte Ed25519 public key, "
            f"got {len(venue_public_key)} bytes"
        )
    return _connect(
        url,
        identity,
        bytes(venue_public_key),
        cfg,
        messages,
        ssl_context,
        restart or RestartPolicy(),
        transport_factory,
        store,
    )


@asynccontextmanager
async def _connect(
    url: str,
    identity: Identity,
    venue_public_key: bytes,
    cfg: SessionConfig,
    messages: Any,
    ssl_context: ssl.SSLContext | None,
    policy: RestartPolicy,
    transport_factory: TransportFactory | None,
    store: SessionStore | None,
) -> AsyncIterator[Session[Any]]:
    control = open_session(Role.PARTICIPANT, cfg, messages, identity.key_id)
    supervisor = Supervisor(
        control, url, identity, venue_public_key, cfg, ssl_context, policy, transport_factory
    )
    async with participant_store(control, store, identity.key_id, venue_public_key) as durable:
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
) -> AsyncIterator[Session[Any]]:
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


@attrs.frozen
class Attempt:
    """How one connection attempt ended, as the restart policy needs it."""

    error: SessionError
    #: A transport was opened (the venue was reachable).
    reached: bool = False
    #: The venue confirmed the handshake (a session was established on it).
    confirmed: bool = False
    #: The connection was LIVE, and made progress (see ``Link.made_progress``).
    live: bool = False
    progress: bool = False

    @property
    def counted(self) -> bool:
        """Counts against ``max_restarts``: the venue was reached, yet nothing moved."""
        return self.reached and not self.progress and not isinstance(self.error, RateLimited)


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
        #: When the session was last LIVE (the start of the current outage).
        self._outage_since = 0.0
        #: The session is kept in a durable store (write-ahead before M3).
        self.durable = False

    @property
    def started(self) -> bool:
        """The venue confirmed a connection of this session at least once."""
        return self._started

    async def run(self, *, task_status: trio.TaskStatus[SessionError | None]) -> None:
        """Report the first connection's outcome through ``task_status`` (None once
        the venue confirmed it), then keep the session connected until it ends.

        Before that report, an unexpected exception propagates as itself (through
        ``nursery.start``); after it, it ends the session with an internal error,
        so that nothing but typed errors reaches the application.
        """
        control = self.control
        with control.supervising():
            try:
                await self._supervise(task_status)
            except Exception as exc:
                if not self._started:
                    raise
                logger.exception("internal error in the supervisor of %s", self.url)
                err = SessionError(
                    f"internal error: {type(exc).__name__}", code=CloseCode.INTERNAL_ERROR
                )
                err.__cause__ = exc
                control.finish(err)

    async def _supervise(self, task_status: trio.TaskStatus[SessionError | None]) -> None:
        control = self.control
        attempt = await self._one_connection(task_status)
        if not attempt.confirmed:
            task_status.started(attempt.error)
            control.finish(attempt.error)
            return
        while not control.finished and not control.closing:
            now = trio.current_time()
            if attempt.live:  # the outage starts when the session stops being LIVE
                self._outage_since = now
            err = attempt.error
            control.detach(State.STALE, f"{type(err).__name__}: {err}")
            if not await self._recover(attempt, now):
                break
            control.detach(State.RESUMING)
            attempt = await self._one_connection(task_status)

    async def _recover(self, attempt: Attempt, now: float) -> bool:
        """Decide what to do about ``attempt`` and do it; False when the session ended."""
        err = attempt.error
        if isinstance(err, StoreError):  # durability is gone: do not carry on without it
            self.control.finish(err)
            return False
        self.backoff.disconnected()
        history = History(
            policy=self.policy,
            now=now,
            outage_since=self._outage_since,
            auth_failures=self.auth_failures,
            delay=self.backoff.next_delay(counted=attempt.counted),
        )
        decision = decide(err, history)
        self.auth_failures = self.auth_failures + 1 if err.code is CloseCode.AUTH_FAILED else 0
        if isinstance(decision, GiveUp):
            self.control.log_event(
                logging.WARNING,
                "gave_up",
                "giving up: %s",
                decision.error,
                error=type(decision.error).__name__,
            )
            self.control.finish(decision.error)
            return False
        if isinstance(decision, NewSession):
            self.control.discard_resume()
        level = logging.INFO if attempt.live or isinstance(decision, Wait) else logging.DEBUG
        self.control.log_event(
            level,
            "reconnecting",
            "%s: %s; reconnecting in %.3fs",
            type(err).__name__,
            err,
            decision.delay,
            delay_s=round(decision.delay, 3),
            error=type(err).__name__,
            counted=attempt.counted,
        )
        await trio.sleep(decision.delay)
        return True

    async def _one_connection(self, task_status: trio.TaskStatus[SessionError | None]) -> Attempt:
        """Connect, handshake and run one connection; how it went.

        A non-SessionError (a bug, or a transport factory's own error) leaves
        the link nursery as itself, never as an exception group.
        """
        failure: BaseException | None = None
        reached: list[bool] = []
        async with trio.open_nursery() as link:
            try:
                transport, conn, done = await self._handshake(link, reached)
            except SessionError as exc:
                attempt = Attempt(exc, reached=bool(reached))
            except BaseException as exc:  # re-raised below, outside the nursery
                failure = exc
            else:
                self.backoff.connected(trio.current_time())
                err = await self._attach(transport, conn, done, task_status)
                outcome = self.control.last_outcome
                attempt = Attempt(
                    err,
                    reached=True,
                    confirmed=self._started,
                    live=outcome.live,
                    progress=outcome.progress,
                )
            link.cancel_scope.cancel()
        if failure is not None:
            raise failure
        return attempt

    async def _handshake(
        self, link: trio.Nursery, reached: list[bool]
    ) -> tuple[Transport, ClientConnection, HandshakeComplete]:
        cfg = self.config
        transport: Transport | None = None
        try:
            with trio.fail_after(cfg.handshake_timeout):
                conn = ClientConnection(
                    self.identity,
                    self.venue_pk,
                    cfg,
                    resume=self.control.resumable_record,
                    clock=trio.current_time,
                )
                # M1 goes with the upgrade request when the transport can carry it;
                # otherwise (or if the venue did not take it) as the first message.
                (hello,) = conn.data_to_send()
                transport, taken = await self._open(link, hello)
                reached.append(True)
                if not taken:
                    await transport.send(hello)
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

    async def _open(self, link: trio.Nursery, hello: bytes) -> tuple[Transport, bool]:
        """The transport, and whether the venue took ``hello`` with the upgrade."""
        if self.transport_factory is not None:
            return await self.transport_factory(link), False
        cfg = self.config
        transport = await connect_transport(
            self.url,
            nursery=link,
            ssl_context=self.ssl_context,
            connect_timeout=cfg.handshake_timeout,
            max_message_size=cfg.max_frame_size,
            close_timeout=cfg.close_timeout,
            hello=hello,
        )
        return transport, transport.hello_taken

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
            old_id = control.session.session_id
            control.reset_to(conn.session)
            self._log_reset(old_id, done)
        elif not done.resumed:
            control.bind(conn.session)
        else:
            control.log_event(
                logging.INFO,
                "resume",
                "session resumed on a new connection (%d messages retransmitted)",
                done.retransmitted,
                retransmitted=done.retransmitted,
            )
        on_confirmed = None
        if not self._started:
            # connect() returns only once the venue confirmed our ClientFinish
            # (its first authenticated frame), so refused credentials fail
            # connect() itself.  The reader reports it directly: a waiting task
            # would cost a scheduling round.
            def on_confirmed() -> None:
                self._started = True
                self._outage_since = trio.current_time()
                control.log_event(logging.INFO, "login", "logged in to %s", self.url, url=self.url)
                task_status.started(None)

        return await control.attach(
            transport,
            conn,
            replay_until=done.replay_until,
            resumed=done.resumed,
            on_confirmed=on_confirmed,
        )

    def _log_reset(self, old_id: str | None, done: HandshakeComplete) -> None:
        in_doubt = self.control.pending_reset_in_doubt
        seqs = describe_seqs([m.seq for m in in_doubt]) if in_doubt else "none"
        self.control.log_event(
            logging.WARNING,
            "reset",
            "the venue could not resume session %s: continuing on this new session; "
            "%d sent messages in doubt (seq %s): reconcile them",
            old_id,
            len(in_doubt),
            seqs,
            old_session_id=old_id,
            in_doubt=len(in_doubt),
            in_doubt_seqs=seqs,
        )
