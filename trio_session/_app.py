"""Application layer: route typed messages to handlers, extend with plugins and middleware.

A :class:`Router` is a session handler (pass it to :func:`trio_session.serve`,
or call it with a participant session).  For each message it runs the
middleware chain, then the handler registered for the message's type, then
every plugin's ``on_message``.

Isolation rules (what a failure takes down):

* a **route handler** that raises: the message is rejected back to the peer
  (``RejectCode.REJECTED``, "handler error"), the error is logged, the session
  continues — one bad order never ends a trading session;
* a **middleware** that raises: same as a handler (the message is rejected);
* a **plugin** hook that raises: logged; a failing ``on_open`` disables that
  plugin for that session, any other hook only skips that call;
* :class:`~trio_session.SessionError` from the session itself ends the router's
  loop as usual (the session is over).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic

import attrs
import trio

from ._admission import TokenBuckets
from ._errors import (
    InvalidMessage,
    MessageRejected,
    RejectCode,
    Rejected,
    SessionError,
    is_clean_close,
)
from ._session import Session, State
from ._typing import M, T

__all__ = [
    "ENTRY_POINT_GROUP",
    "Context",
    "Metrics",
    "Plugin",
    "RateLimit",
    "Router",
    "Validate",
    "load_plugins",
]

logger = logging.getLogger("trio_session.app")

ENTRY_POINT_GROUP = "trio_session.plugins"

#: A route handler: called with the message's context and the message.
RouteHandler = Callable[["Context[M]", T], Awaitable[None]]
CallNext = Callable[[], Awaitable[None]]
Middleware = Callable[["Context[Any]", Any, CallNext], Awaitable[None]]
#: A reject handler (:meth:`Router.on_reject`): the session and the reject.
RejectHandler = Callable[[Session[M], Rejected], Awaitable[None]]


@attrs.define(eq=False)
class Context(Generic[M]):
    """What a handler or middleware gets with each message.

    Generic in the session's message type, so that :meth:`reply` is checked:
    annotate handlers ``ctx: ts.Context[Order | Fill]``.
    """

    #: The session the message arrived on.
    session: Session[M]
    #: The message's data sequence number in this session (bind replies to it).
    seq: int
    #: Per-message scratch space shared along the middleware chain.
    state: dict[str, Any] = attrs.Factory(dict)
    #: True once the message was rejected back to the peer (by middleware, for
    #: lack of a route, or because its handler raised).
    rejected: bool = False
    #: With a durable store: the message may have been handled before a restart
    #: (``Session.last_redelivered``).
    redelivered: bool = False

    async def reply(self, message: M) -> None:
        """Send ``message`` back on the same session (lossless).

        With a durable store the request is committed in the same write as its
        reply (``send(commit=True)``): after a crash either the reply exists and
        the request is not delivered again, or neither.
        """
        await self.session.send(message, commit=True)

    def reject(
        self,
        reason: str = "",
        *,
        code: RejectCode = RejectCode.REJECTED,
        retry_after: float | None = None,
    ) -> None:
        """Refuse this message: the peer gets MessageRejected with its seq."""
        self.rejected = True
        self.session.reject(self.seq, reason, code=code, retry_after=retry_after)


class Plugin:
    """Base class for plugins: override the hooks you need (all optional, all async).

    Plugins are per :class:`Router`; hooks receive the session so one plugin
    instance can serve many sessions (keep per-session state keyed by
    ``session.session_id``).  Installed packages can provide plugins through
    the ``trio_session.plugins`` entry-point group (see :func:`load_plugins`).
    """

    #: A short name for logs.
    name: str = "plugin"

    async def on_open(self, session: Session[Any]) -> None:
        """A new logical session started."""

    async def on_message(self, session: Session[Any], context: Context[Any], message: Any) -> None:
        """A message was processed (after middleware and its route handler), whether
        accepted or rejected: check ``context.rejected``."""

    async def on_stale(self, session: Session[Any]) -> None:
        """The connection was lost; the session may resume."""

    async def on_resume(self, session: Session[Any]) -> None:
        """The session is LIVE again after a reconnect."""

    async def on_session_lost(self, session: Session[Any]) -> None:
        """Venue: the session was not resumed in time (dead man's switch)."""

    async def on_close(self, session: Session[Any], error: SessionError | None) -> None:
        """The session ended (``error`` is None after a clean close)."""


def load_plugins(group: str = ENTRY_POINT_GROUP) -> list[Plugin]:
    """Instantiate every plugin advertised in the ``group`` entry-point group.

    An entry point may name a :class:`Plugin` subclass (instantiated with no
    arguments) or a ready instance.  A plugin that fails to load is logged and
    skipped, so one broken package cannot stop a venue from starting.
    """
    plugins: list[Plugin] = []
    for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name):
        try:
            obj = ep.load()
            plugin = obj() if isinstance(obj, type) else obj
            if not isinstance(plugin, Plugin):
                raise TypeError(f"{ep.value} is not a trio_session.Plugin")
        except Exception:
            logger.exception("could not load plugin %r from %s", ep.name, ep.value)
            continue
        if plugin.name == Plugin.name:
            plugin.name = ep.name
        plugins.append(plugin)
    return plugins


class Router(Generic[M]):
    """Dispatch messages by type to registered handlers, with middleware and plugins.

    Example::

        router: ts.Router[Order | Fill] = ts.Router()

        @router.route(Order)
        async def on_order(ctx: ts.Context[Order | Fill], order: Order) -> None:
            await ctx.reply(Fill(order.client_id, ref_seq=ctx.seq))

        await nursery.start(ts.serve, router, venue_id, registry, host, port,
                            messages=Order | Fill,
                            on_session_lost=router.session_lost)

    Generic in the session's message type; a type checker rejects a handler
    registered for ``Order`` that takes another type.  Messages without a route
    go to ``fallback`` if set, else are rejected.  On the participant side,
    rejects of our own messages go to the :meth:`on_reject` handler (else they
    are logged), and the loop goes on.
    """

    def __init__(
        self,
        *,
        middleware: Iterable[Middleware] = (),
        plugins: Iterable[Plugin] = (),
        fallback: RouteHandler[M, Any] | None = None,
    ) -> None:
        self._routes: dict[type, RouteHandler[M, Any]] = {}
        self._on_reject: RejectHandler[M] | None = None
        self.middleware: list[Middleware] = list(middleware)
        self.plugins: list[Plugin] = list(plugins)
        self.fallback = fallback

    def route(self, message_type: type[T]) -> Callable[[RouteHandler[M, T]], RouteHandler[M, T]]:
        """Decorator: handle messages of ``message_type`` (exact type match).

        The handler takes the :class:`Context` and a ``message_type`` message.
        """

        def register(handler: RouteHandler[M, T]) -> RouteHandler[M, T]:
            if message_type in self._routes:
                raise ValueError(f"{message_type.__name__} already has a handler")
            self._routes[message_type] = handler
            return handler

        return register

    def on_reject(self, handler: RejectHandler[M]) -> RejectHandler[M]:
        """Decorator: ``handler(session, rejected)`` for each of our messages the
        peer refused (a :class:`~trio_session.Rejected`, with the message's
        ``ref_seq``), in stream order; the loop goes on.  Without one, rejects are
        logged.  An exception from it is logged and the loop goes on."""
        self._on_reject = handler
        return handler

    def use(self, middleware: Middleware) -> None:
        """Append a middleware to the chain (outermost first)."""
        self.middleware.append(middleware)

    def add_plugin(self, plugin: Plugin) -> None:
        self.plugins.append(plugin)

    async def session_lost(self, session: Session[Any]) -> None:
        """Pass as ``on_session_lost=`` to :func:`trio_session.serve`."""
        for plugin in self.plugins:
            await _call_hook(plugin, "on_session_lost", session)

    async def __call__(self, session: Session[M]) -> None:
        """Run the session: receive, dispatch, until it ends."""
        active = [p for p in self.plugins if await _call_hook(p, "on_open", session)]
        error: SessionError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_state, session, active)
            try:
                while True:
                    try:
                        message = await session.receive()
                    except MessageRejected as exc:
                        await self._rejected(session, exc.rejected)
                        continue
                    except InvalidMessage as exc:
                        # The peer's message: already rejected back; the session continues.
                        logger.info("%s", exc)
                        continue
                    await self._dispatch(session, active, message)
            except SessionError as exc:
                error = None if is_clean_close(exc) else exc
            finally:
                nursery.cancel_scope.cancel()
        for plugin in active:
            await _call_hook(plugin, "on_close", session, error)
        if error is not None:
            raise error

    async def _rejected(self, session: Session[M], rejected: Rejected) -> None:
        handler = self._on_reject
        if handler is None:
            logger.info(
                "[session %s] peer rejected our message %d: %s",
                session.session_id,
                rejected.ref_seq,
                rejected.reason or rejected.code,
            )
            return
        try:
            await handler(session, rejected)
        except SessionError:
            raise
        except Exception:
            logger.exception(
                "reject handler failed for message %d in session %s",
                rejected.ref_seq,
                session.session_id,
            )

    async def _dispatch(self, session: Session[M], plugins: list[Plugin], message: M) -> None:
        ctx = Context(session, session.last_seq, redelivered=session.last_redelivered)
        handler = self._routes.get(type(message), self.fallback)

        async def endpoint() -> None:
            if handler is None:
                ctx.reject(f"no handler for {type(message).__name__}")
                return
            await handler(ctx, message)

        chain: CallNext = endpoint
        for mw in reversed(self.middleware):
            chain = _wrap_middleware(mw, ctx, message, chain)
        try:
            await chain()
        except SessionError:
            raise
        except Exception:
            logger.exception(
                "handler error for message %d (%s) in session %s",
                ctx.seq,
                type(message).__name__,
                session.session_id,
            )
            ctx.reject("handler error")
        for plugin in plugins:
            await _call_hook(plugin, "on_message", session, ctx, message)

    async def _watch_state(self, session: Session[M], plugins: list[Plugin]) -> None:
        # Edge-triggered: a short LIVE spell between two outages is not missed.
        stale = session.state is not State.LIVE
        try:
            async for state in session.transitions():
                if state is State.STALE and not stale:
                    stale, hook = True, "on_stale"
                elif state is State.LIVE and stale:
                    stale, hook = False, "on_resume"
                else:
                    continue
                for plugin in plugins:
                    await _call_hook(plugin, hook, session)
        except SessionError:
            # A hook used the session after it ended: the receive loop reports that
            # end itself; raising it from this task would make an exception group.
            return


def _wrap_middleware(mw: Middleware, ctx: Context[Any], message: Any, nxt: CallNext) -> CallNext:
    async def call() -> None:
        await mw(ctx, message, nxt)

    return call


async def _call_hook(plugin: Plugin, hook: str, *args: Any) -> bool:
    try:
        result = getattr(plugin, hook)(*args)
        if inspect.isawaitable(result):
            await result
    except SessionError:
        raise
    except Exception:
        logger.exception("plugin %s failed in %s", plugin.name, hook)
        return False
    return True


# -- built-in middleware --------------------------------------------------------------


class RateLimit:
    """Per-session token bucket: ``rate`` messages per second, bursts of ``burst``.

    Over the limit, the message is rejected with ``RejectCode.RATE_LIMITED``
    and a ``retry_after``; the session stays up.  ``only`` restricts the limit
    to some message types (e.g. orders, not cancels).
    """

    def __init__(
        self,
        rate: float,
        burst: int | None = None,
        *,
        only: tuple[type, ...] | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.only = only
        self._buckets = TokenBuckets(
            rate, clock, burst=float(burst if burst is not None else max(1, round(rate)))
        )
        self.rejected = 0

    async def __call__(self, ctx: Context[Any], message: Any, call_next: CallNext) -> None:
        if self.only is not None and not isinstance(message, self.only):
            await call_next()
            return
        wait = self._buckets.take(id(ctx.session))
        if wait:
            self.rejected += 1
            ctx.reject("rate limit", code=RejectCode.RATE_LIMITED, retry_after=wait)
            return
        await call_next()


class Validate:
    """Reject messages for which ``check(message)`` returns an error text."""

    def __init__(self, check: Callable[[Any], str | None]) -> None:
        self.check = check

    async def __call__(self, ctx: Context[Any], message: Any, call_next: CallNext) -> None:
        problem = self.check(message)
        if problem:
            ctx.reject(problem)
            return
        await call_next()


class Metrics:
    """Count messages per type and time their handling; log each at DEBUG."""

    def __init__(self, log: logging.Logger | None = None) -> None:
        self.counts: Counter[str] = Counter()
        self.handling_seconds: dict[str, float] = {}
        self._log = log or logger

    async def __call__(self, ctx: Context[Any], message: Any, call_next: CallNext) -> None:
        name = type(message).__name__
        start = time.perf_counter()
        try:
            await call_next()
        finally:
            self.counts[name] += 1
            self.handling_seconds[name] = (
                self.handling_seconds.get(name, 0.0) + time.perf_counter() - start
            )
            self._log.debug(
                "[session %s] message %d %s handled", ctx.session.session_id, ctx.seq, name
            )
