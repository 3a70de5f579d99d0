"""Watching sessions through the public API: states, rates, lifecycle events.

One :class:`Monitor` per command.  It follows each session it is given with
:meth:`~trio_session.Session.transitions` (edge-triggered, so a STALE spell
shorter than any refresh is still seen) and samples
:attr:`~trio_session.Session.stats` a few times a second, for the live view's
rows (states, rates, RTT) and the participant's metrics.

The lifecycle events themselves (login, stale, resuming, live, logout, the dead
man's switch, refused handshakes, ...) are the library's own structured log
records: :class:`LibraryEvents` copies them into the monitor's event list for
the live view, and the logfmt handler prints them.  The monitor adds only what
the library cannot know: the outage reports of a command that waits, and the
application's view of a reset (which orders had no answer).  The venue's totals
come from :meth:`trio_session.VenueServer.stats`.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

import trio_session as ts

from .._venue_stats import COUNTED
from .output import EventLog, is_cli_record, is_reported_by_cli

__all__ = ["COUNTERS", "Event", "Monitor", "Tracked"]

#: Cumulative SessionStats fields summed into totals (the venue's stats() sums the same).
COUNTERS = COUNTED

_DOWN = (ts.State.STALE, ts.State.RESUMING)


@attrs.frozen
class Event:
    """One lifecycle event, as the live view lists it."""

    at: float  # seconds since the monitor started
    name: str
    role: str
    session_id: str
    text: str
    level: int


@attrs.define(eq=False)
class Tracked:
    """What the monitor knows about one session."""

    session: ts.Session
    role: str
    state: ts.State
    state_since: float
    stats: ts.SessionStats
    sampled_at: float
    sent_rate: float = 0.0
    received_rate: float = 0.0
    #: Start of the current outage (None while LIVE), its attempts and last report.
    down_since: float | None = None
    attempts: int = 0
    reported_at: float = 0.0
    stats_at_loss: ts.SessionStats | None = None
    #: (seconds since the monitor started, state) for every state entered.
    history: list[tuple[float, str]] = attrs.Factory(list)

    @property
    def session_id(self) -> str:
        return self.session.session_id or "-"


class Monitor:
    """Follow sessions for the view and the participant's totals (see the module docstring)."""

    def __init__(
        self,
        *,
        sample_every: float = 0.25,
        outage_report_every: float = 2.0,
        keep_events: int = 200,
    ) -> None:
        self.sample_every = sample_every
        self.outage_report_every = outage_report_every
        self.sessions: dict[int, Tracked] = {}
        #: The last sessions that ended, for display (not counted anywhere).
        self.ended: collections.deque[Tracked] = collections.deque(maxlen=5)
        self.events: collections.deque[Event] = collections.deque(maxlen=keep_events)
        #: Event counts of this command's own making: resets (as the application saw them).
        self.totals: collections.Counter[str] = collections.Counter()
        #: SessionStats counters of ended sessions, by role.
        self.retired: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )
        #: Called with each new RTT sample, in seconds (the metrics' histogram).
        self.rtt_observers: list[Callable[[float], None]] = []
        self.log = EventLog()
        self._nursery: trio.Nursery | None = None
        self._started = 0.0
        #: Sessions ever tracked, by role (for "opened" counts).
        self.opened: collections.Counter[str] = collections.Counter()

    # -- running ---------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Monitor]:
        """Follow and sample sessions, and list the library's events, for the block;
        its tasks end with it.

        An exception from the block leaves as itself (outside the nursery), so a
        command never sees an exception group from here.
        """
        self._started = trio.current_time()
        failure: BaseException | None = None
        with LibraryEvents(self):
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._sample_forever)
                try:
                    yield self
                except BaseException as exc:
                    failure = exc
                nursery.cancel_scope.cancel()
        self._nursery = None
        if failure is not None:
            raise failure

    async def _sample_forever(self) -> None:
        while True:
            await trio.sleep(self.sample_every)
            self.sample()

    def start_soon(self, fn: Callable[[], Awaitable[object]]) -> None:
        """Run ``fn`` beside the monitor (a view, a metrics server) until it stops."""
        assert self._nursery is not None, "use inside Monitor.running()"
        self._nursery.start_soon(fn)

    async def start(self, fn: Callable[..., Awaitable[object]]) -> Any:
        """``nursery.start(fn)`` in the monitor's nursery; returns what fn started with."""
        assert self._nursery is not None, "use inside Monitor.running()"
        return await self._nursery.start(fn)

    def elapsed(self) -> float:
        return trio.current_time() - self._started

    def track(self, session: ts.Session, role: str) -> Tracked:
        """Start following ``session`` (``role``: "participant" or "venue")."""
        assert self._nursery is not None, "use inside Monitor.running()"
        now = trio.current_time()
        t = Tracked(session, role, session.state, now, session.stats, now)
        self.sessions[id(session)] = t
        self.opened[role] += 1
        self._nursery.start_soon(self._follow, t)
        return t

    def tracking(
        self, handler: Callable[[ts.Session], Awaitable[None]]
    ) -> Callable[[ts.Session], Awaitable[None]]:
        """Wrap a venue handler so that every session it serves is tracked."""

        async def tracked_handler(session: ts.Session) -> None:
            self.track(session, "venue")
            await handler(session)

        return tracked_handler

    # -- events ------------------------------------------------------------------------

    def emit(
        self,
        name: str,
        tracked: Tracked | None,
        text: str,
        *,
        level: int = logging.INFO,
        session: ts.Session | None = None,
        **fields: Any,
    ) -> None:
        """Record an event and log it as ``event=name``."""
        s = tracked.session if tracked is not None else session
        role = tracked.role if tracked is not None else ("venue" if session else "-")
        sid = (s.session_id if s is not None else None) or "-"
        if level >= logging.INFO:
            self.events.append(Event(self.elapsed(), name, role, sid, text, level))
        key_id = s.key_id if s is not None else None
        self.log(name, text, level=level, session_id=sid, role=role, key_id=key_id, **fields)

    def iter_events(self, minimum: int = logging.INFO) -> Iterator[Event]:
        return (e for e in self.events if e.level >= minimum)

    # -- following one session -------------------------------------------------------

    async def _follow(self, t: Tracked) -> None:
        async for state in t.session.transitions():
            self._on_state(t, state)
        self._retire(t)

    def _on_state(self, t: Tracked, state: ts.State) -> None:
        """Keep what the view and the outage reports need (the library logs the events)."""
        now = trio.current_time()
        previous, t.state, t.state_since = t.state, state, now
        if len(t.history) < 10_000:
            t.history.append((now - self._started, state.value))
        if state is ts.State.STALE and previous is not ts.State.RESUMING:
            t.down_since = t.reported_at = now  # a new outage
            t.attempts = 0
            t.stats_at_loss = t.session.stats
        elif state is ts.State.RESUMING:
            t.attempts += 1
        elif state is ts.State.LIVE:
            t.down_since = None
            t.attempts = 0

    def _retire(self, t: Tracked) -> None:
        if self.sessions.pop(id(t.session), None) is None:
            return
        t.sent_rate = t.received_rate = 0.0
        self.ended.append(t)
        final = t.session.stats
        retired = self.retired[t.role]
        for name in COUNTERS:
            retired[name] += getattr(final, name)

    def reset(self, tracked: Tracked | None, text: str, **fields: Any) -> None:
        """The application saw a SessionReset: continuity was lost."""
        self.totals["resets"] += 1
        self.emit("reset", tracked, text, level=logging.WARNING, **fields)

    def shown(self) -> list[Tracked]:
        """Sessions to display: the live ones, then the last few that ended."""
        return [*self.sessions.values(), *self.ended]

    # -- sampling ----------------------------------------------------------------------

    def sample(self) -> None:
        """Refresh rates and RTT; report rekeys and long outages."""
        now = trio.current_time()
        for t in list(self.sessions.values()):
            new = t.session.stats
            old = t.stats
            dt = max(now - t.sampled_at, 1e-9)
            t.sent_rate = (new.sent - old.sent) / dt
            t.received_rate = (new.received - old.received) / dt
            if new.rtt is not None and (
                new.rtt != old.rtt or new.heartbeats_sent != old.heartbeats_sent
            ):
                for observe in self.rtt_observers:
                    observe(new.rtt)
            t.stats, t.sampled_at = new, now
            if t.down_since is not None and now - t.reported_at >= self.outage_report_every:
                t.reported_at = now
                self._report_outage(t, now)

    def _report_outage(self, t: Tracked, now: float) -> None:
        down = now - t.down_since if t.down_since is not None else 0.0
        if t.role == "participant":
            text = f"no connection to the venue for {down:.1f}s ({t.attempts} attempts); retrying"
        else:
            ttl = t.session.config.resume_ttl - down
            text = (
                f"participant {t.session.key_id} away for {down:.1f}s; "
                f"dead man's switch in {max(ttl, 0):.1f}s"
            )
        self.emit("outage", t, text, level=logging.WARNING, down_s=round(down, 1))

    # -- totals ------------------------------------------------------------------------

    def counter_totals(self) -> dict[str, dict[str, int]]:
        """role -> each SessionStats counter summed over the role's ended and live sessions."""
        roles = set(self.retired) | {t.role for t in self.sessions.values()}
        totals = {role: {name: self.retired[role][name] for name in COUNTERS} for role in roles}
        for t in self.sessions.values():
            stats = t.session.stats
            for name in COUNTERS:
                totals[t.role][name] += getattr(stats, name)
        return totals

    def gauges(self) -> dict[str, dict[str, int]]:
        """role -> current queue depths and unacknowledged messages, summed."""
        out: dict[str, dict[str, int]] = {}
        for t in self.sessions.values():
            stats = t.session.stats
            g = out.setdefault(t.role, {"outbound_depth": 0, "inbound_depth": 0, "unacked": 0})
            for name in g:
                g[name] += getattr(stats, name)
        return out

    def states(self) -> collections.Counter[tuple[str, str]]:
        """(role, state name) -> live sessions."""
        return collections.Counter((t.role, t.session.state.value) for t in self.sessions.values())


class LibraryEvents(logging.Handler):
    """Copies the library's lifecycle records (those with an ``event``) into a
    monitor's event list, for the live view.

    Records of the CLI's own logger are left out (``Monitor.emit`` lists those
    itself), and so is the participant's ``reset``: the command reports it with
    the application's view (:func:`~trio_session.cli.participant.reset_reporter`).
    """

    def __init__(self, monitor: Monitor) -> None:
        super().__init__(logging.INFO)
        self.monitor = monitor

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        if event is None or is_cli_record(record) or is_reported_by_cli(record):
            return
        fields = getattr(record, "fields", None) or {}
        sid = str(getattr(record, "session_id", "-"))
        text = record.getMessage().removeprefix(f"[session {sid}] ")
        m = self.monitor
        m.events.append(
            Event(m.elapsed(), str(event), str(fields.get("role", "-")), sid, text, record.levelno)
        )

    def __enter__(self) -> LibraryEvents:
        logging.getLogger("trio_session").addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        logging.getLogger("trio_session").removeHandler(self)
