"""Participant side: ``ts.connect``, supervised by default.

Why a supervisor *outside* the session nursery (DESIGN.md, research/libs-and-style.md
§C.6): a connection's tasks fail together and leave one typed error; the loop
here reads that error's category and decides — resume (RESUMABLE), start a new
session (REAUTHENTICATE, reported to the application as SessionReset), honour
the venue's delay (RATE_LIMITED), or give up (FATAL, CLOSED).  Restarts back off
with decorrelated jitter (first retry immediate) and are capped by an
Erlang-style intensity limit; counters reset only after a stable period.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from ._config import SessionConfig
from ._errors import (
    Category,
    CloseCode,
    ConnectionLost,
    HandshakeTimeout,
    RateLimited,
    SessionError,
)
from ._identity import Identity
from ._session import Session, State, _close_forcefully, _new_session
from ._transport import Transport, connect_transport
from .protocol import ClientConnection, CloseReceived, HandshakeComplete, Role

__all__ = ["Backoff", "RestartPolicy", "connect"]

logger = logging.getLogger("trio_session.client")

#: Opens a transport for one connection attempt; the nursery outlives it.
TransportFactory = Callable[[trio.Nursery], Awaitable[Transport]]


def _non_negative(inst: Any, attr: attrs.Attribute[Any], value: float) -> None:
    if not (value >= 0):
        raise ValueError(f"RestartPolicy.{attr.name} must be >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class RestartPolicy:
    """How a supervised participant session restarts after a connection loss.

    Defaults suit a trading client: reconnect at once, then back off with
    decorrelated jitter between ``base_delay`` and ``max_delay``.  Give up when
    the session *flaps* — ``max_restarts`` connections that came up and failed
    within ``window`` seconds — or when it has not been LIVE for
    ``max_outage`` seconds (an unreachable venue is retried until then).  A
    connection that stayed up ``stable_after`` seconds resets the backoff.
    """

    #: Supervise at all; False means one connection, and its loss ends the session.
    enabled: bool = True
    base_delay: float = attrs.field(default=0.05, validator=_non_negative)
    max_delay: float = attrs.field(default=5.0, validator=_non_negative)
    max_restarts: int = attrs.field(default=20, validator=_non_negative)
    window: float = attrs.field(default=60.0, validator=_non_negative)
    stable_after: float = attrs.field(default=10.0, validator=_non_negative)
    #: Give up when the session was not LIVE again after this long (None: never).
    max_outage: float | None = 300.0
    #: Consecutive AUTH_FAILED reconnects tolerated before giving up.  Once a
    #: session was established, a signature or MAC failure on a reconnect is
    #: indistinguishable from line damage; UNKNOWN_KEY, KEY_REVOKED and
    #: VERSION_MISMATCH stay fatal at once, and the first connect never retries.
    auth_retries: int = attrs.field(default=2, validator=_non_negative)


class Backoff:
    """Decorrelated-jitter backoff (first delay 0) with an intensity limit.

    ``next_delay()`` returns the next sleep, or None when the restart intensity
    is exceeded.  Deterministic given ``rng``; time comes from ``clock``.
    """

    def __init__(
        self,
        policy: RestartPolicy,
        *,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._rng = rng or random.Random()
        self._prev = 0.0
        self._restarts: list[float] = []
        self._up_since: float | None = None
        self.attempt = 0

    def connected(self, since: float) -> None:
        """A connection came up at ``since``; nothing resets until it proves stable."""
        self._up_since = since

    def disconnected(self) -> None:
        up = self._up_since
        if up is not None and self._clock() - up >= self.policy.stable_after:
            self.reset()
        self._up_since = None

    def reset(self) -> None:
        self._prev = 0.0
        self._restarts.clear()
        self.attempt = 0

    def next_delay(self, *, restart: bool = True) -> float | None:
        """The next sleep before reconnecting.

        ``restart`` says the previous attempt had connected (the session came up
        and then failed): only those count against the intensity limit, so a
        flapping session gives up while a venue outage is ridden out (bounded by
        ``max_outage``) with backoff between failed attempts.
        """
        p = self.policy
        now = self._clock()
        if restart:
            self._restarts = [t for t in self._restarts if now - t < p.window]
            if len(self._restarts) >= p.max_restarts:
                return None
            self._restarts.append(now)
        self.attempt += 1
        if self.attempt == 1:
            delay = 0.0
        else:
            upper = max(p.base_delay, self._prev * 3)
            delay = min(p.max_delay, self._rng.uniform(p.base_delay, upper))
        self._prev = max(delay, p.base_delay)
        return delay


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
    """
    cfg = config or SessionConfig()
    policy = restart or RestartPolicy()
    if len(venue_public_key) != 32:
        raise ValueError("venue_public_key must be the venue's 32-byte Ed25519 public key")
    session = _new_session(Role.PARTICIPANT, cfg, messages, identity.key_id)
    runner = _Participant(
        session, url, identity, bytes(venue_public_key), cfg, ssl_context, policy, transport_factory
    )
    body_exc: BaseException | None = None
    async with trio.open_nursery() as nursery:
        try:
            first_error = await nursery.start(runner.run)
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


class _Participant:
    def __init__(
        self,
        session: Session,
        url: str,
        identity: Identity,
        venue_pk: bytes,
        config: SessionConfig,
        ssl_context: ssl.SSLContext | None,
        policy: RestartPolicy,
        transport_factory: TransportFactory | None = None,
    ) -> None:
        self.transport_factory = transport_factory
        self.session = session
        self.url = url
        self.identity = identity
        self.venue_pk = venue_pk
        self.config = config
        self.ssl_context = ssl_context
        self.policy = policy
        self.backoff = Backoff(policy, clock=trio.current_time)
        self._started = False
        self._auth_failures = 0

    async def run(self, *, task_status: trio.TaskStatus[SessionError | None]) -> None:
        session = self.session
        first = True
        outage_since: float | None = None
        with trio.CancelScope() as scope:
            session._runner_scope = scope
            while not session._finished.is_set():
                err, connected = await self._one_connection(first, task_status)
                if first:
                    first = False
                    if not connected:
                        task_status.started(err)
                        assert err is not None
                        session._finish(err)
                        return
                if session._finished.is_set() or session._closing:
                    break
                assert err is not None
                now = trio.current_time()
                if connected or outage_since is None:
                    outage_since = now
                session._mark_disconnected(State.STALE)
                delay = self._decide(err, restart=connected)
                if delay is None:
                    break
                max_outage = self.policy.max_outage
                if max_outage is not None and now - outage_since + delay > max_outage:
                    gave_up = ConnectionLost(f"no connection for {max_outage}s; giving up")
                    gave_up.__cause__ = err
                    session._finish(gave_up)
                    break
                await trio.sleep(delay)
                session._mark_disconnected(State.RESUMING)
        session._runner_scope = None

    def _decide(self, err: SessionError, *, restart: bool = True) -> float | None:
        """Seconds to wait before the next attempt, or None to end the session."""
        session = self.session
        cat = err.category
        if err.code is CloseCode.AUTH_FAILED and self._auth_failures < self.policy.auth_retries:
            self._auth_failures += 1
            cat = Category.RESUMABLE
        elif err.code is not CloseCode.AUTH_FAILED:
            self._auth_failures = 0
        if not self.policy.enabled or cat in (Category.FATAL, Category.CLOSED):
            session._finish(err)
            return None
        if err.code is CloseCode.BINDER_REUSED:
            session._finish(err)
            return None
        if cat is Category.REAUTHENTICATE and session._pstate is not None:
            session._pstate.compromised = True  # start a fresh session next time
        self.backoff.disconnected()
        delay = self.backoff.next_delay(restart=restart)
        if delay is None:
            gave_up = ConnectionLost(
                f"gave up after {self.policy.max_restarts} restarts within "
                f"{self.policy.window}s; last error: {type(err).__name__}: {err}"
            )
            gave_up.__cause__ = err
            session._finish(gave_up)
            return None
        if isinstance(err, RateLimited):
            delay = max(delay, err.retry_after)
        logger.info("session %s: %s; reconnecting in %.3fs", session.session_id, err, delay)
        return delay

    async def _one_connection(
        self, first: bool, task_status: trio.TaskStatus[SessionError | None]
    ) -> tuple[SessionError, bool]:
        """Connect, handshake and run one connection: (why it ended, handshake done)."""
        async with trio.open_nursery() as link:
            try:
                transport, conn, done = await self._handshake(link)
            except SessionError as exc:
                err, connected = exc, False
            else:
                self.backoff.connected(trio.current_time())
                if first:
                    # connect() returns only once the venue confirmed our
                    # ClientFinish (its first authenticated frame), so refused
                    # credentials fail connect() itself.  The reader reports it
                    # directly: a waiting task would cost a scheduling round.
                    def report_started() -> None:
                        self._started = True
                        task_status.started(None)

                    self.session._on_confirmed = report_started
                err = await self._attach(transport, conn, done)
                self.session._on_confirmed = None
                connected = self._started
            link.cancel_scope.cancel()
        return err, connected

    async def _handshake(
        self, link: trio.Nursery
    ) -> tuple[Transport, ClientConnection, HandshakeComplete]:
        cfg = self.config
        session = self.session
        resume = session._pstate
        if resume is not None and resume.compromised:
            resume = None
        transport: Transport | None = None
        try:
            with trio.fail_after(cfg.handshake_timeout):
                if self.transport_factory is not None:
                    transport = await self.transport_factory(link)
                else:
                    transport = await connect_transport(
                        self.url,
                        nursery=link,
                        ssl_context=self.ssl_context,
                        connect_timeout=cfg.handshake_timeout,
                        max_message_size=cfg.max_frame_size,
                        close_timeout=cfg.close_timeout,
                    )
                conn = ClientConnection(
                    self.identity, self.venue_pk, cfg, resume=resume, clock=trio.current_time
                )
                for frame in conn.data_to_send():
                    await transport.send(frame)
                events = conn.receive_data(await transport.receive())
                if type(events[0]) is HandshakeComplete and not events[0].resumed:
                    # Send ClientFinish now, not from the session's writer once
                    # its tasks are up: that is a scheduling round off the
                    # connect path.  (After a resume the writer sends it, with
                    # the retransmission that must follow it.)
                    for frame in conn.data_to_send():
                        await transport.send(frame)
        except trio.TooSlowError:
            if transport is not None:
                await _close_forcefully(transport)
            raise HandshakeTimeout(
                f"handshake with {self.url} not completed in {cfg.handshake_timeout}s"
            ) from None
        except BaseException:
            if transport is not None:
                with trio.CancelScope(shield=True):
                    await _close_forcefully(transport)
            raise
        ev = events[0]
        if isinstance(ev, CloseReceived):
            await _close_forcefully(transport)
            raise ev.to_error()
        assert isinstance(ev, HandshakeComplete)
        return transport, conn, ev

    async def _attach(
        self, transport: Transport, conn: ClientConnection, done: HandshakeComplete
    ) -> SessionError:
        session = self.session
        assert conn.session is not None
        if done.resumed:
            session._counters.resumes += 1
        elif session._pstate is not None:
            logger.warning(
                "session %s could not be resumed; new session %s (%d sent messages unconfirmed)",
                session.session_id,
                done.session_id.hex(),
                done.abandoned,
            )
            session._reset_to(conn.session)
        else:
            session._bind(conn.session)
        return await session._run_connection(transport, conn, replay_until=done.replay_until)
