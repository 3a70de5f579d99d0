"""The terminal view of ``serve``, ``connect`` and ``demo``.

On a terminal, with the ``cli`` extra installed (rich), a live table redraws a
few times a second: each session's state (STALE and RESUMING in colour), message
rates, RTT, queue depths, resumes and rekeys, and below it the latest lifecycle
events — so a STALE spell of a few milliseconds still shows, as an event.
Without a terminal, or without rich, the same numbers come as plain lines every
``every`` seconds, and the events as log lines on stderr.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TextIO

import trio

import trio_session as ts

from .monitor import Event, Monitor, Tracked

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["PlainView", "RichView", "View", "open_view", "rich_available", "session_line"]

#: At most this many sessions are listed (a venue may hold thousands).
MAX_ROWS = 20
#: Events shown under the live table.
MAX_EVENTS = 8

Header = Callable[[], str]


class View(Protocol):
    async def run(self) -> None:
        """Draw until cancelled."""


def rich_available() -> bool:
    try:
        import rich.live  # noqa: F401
    except ImportError:
        return False
    return True


def open_view(
    monitor: Monitor,
    stream: TextIO,
    *,
    live: bool,
    header: Header | None = None,
    every: float = 1.0,
) -> View:
    """A RichView when ``live`` and ``stream`` is a terminal and rich is installed,
    else a PlainView."""
    if live and stream.isatty() and rich_available():
        return RichView(monitor, stream, header=header)
    return PlainView(monitor, stream, header=header, every=every)


def _rtt(stats: ts.SessionStats) -> str:
    return "-" if stats.rtt is None else f"{stats.rtt * 1e3:.2f}ms"


def session_line(t: Tracked) -> str:
    s = t.stats
    return (
        f"{t.role:<11} {t.session_id[:8]:<8} {t.session.state.value:<9} "
        f"sent {t.sent_rate:>6.0f}/s recv {t.received_rate:>6.0f}/s rtt {_rtt(s):>8} "
        f"out {s.outbound_depth} in {s.inbound_depth} unacked {s.unacked} "
        f"resumes {s.resumes} rekeys {s.rekeys} stale {s.stale_spells}"
    )


class PlainView:
    """Status lines every ``every`` seconds (events go to the log)."""

    def __init__(
        self, monitor: Monitor, stream: TextIO, *, header: Header | None, every: float
    ) -> None:
        self.monitor = monitor
        self.stream = stream
        self.header = header
        self.every = every

    async def run(self) -> None:
        while True:
            await trio.sleep(self.every)
            self.write()

    def write(self) -> None:
        stamp = f"[{self.monitor.elapsed():7.1f}s]"
        lines = [f"{stamp} {self.header()}"] if self.header is not None else []
        tracked = self.monitor.shown()
        lines.extend(f"{stamp} {session_line(t)}" for t in tracked[:MAX_ROWS])
        if len(tracked) > MAX_ROWS:
            lines.append(f"{stamp} … and {len(tracked) - MAX_ROWS} more sessions")
        if lines:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()


_STATE_STYLE = {
    "live": "bold green",
    "stale": "bold white on red",
    "resuming": "bold black on yellow",
    "connecting": "cyan",
    "closed": "dim",
}
_EVENT_STYLE = {
    "stale": "bold white on red",
    "outage": "bold red",
    "dead_mans_switch": "bold red",
    "reset": "bold red",
    "slow_consumer": "bold red",
    "resuming": "bold black on yellow",
    "live": "green",
    "login": "green",
}


class RichView:
    """A live table on a terminal (needs rich: ``pip install 'trio_session[cli]'``)."""

    def __init__(self, monitor: Monitor, stream: TextIO, *, header: Header | None) -> None:
        self.monitor = monitor
        self.stream = stream
        self.header = header
        self.every = 0.25

    async def run(self) -> None:
        from rich.console import Console
        from rich.live import Live

        console = Console(file=self.stream)
        live = Live(
            console=console,
            get_renderable=self.render,
            auto_refresh=False,  # no drawing thread: this task refreshes
            transient=False,
            redirect_stdout=self.stream is sys.stdout,
            redirect_stderr=True,  # log lines print above the table
        )
        with live:
            while True:
                live.refresh()
                await trio.sleep(self.every)

    def render(self) -> RenderableType:
        from rich import box
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(box=box.SIMPLE_HEAD, expand=False, pad_edge=False)
        for name, justify in (
            ("role", "left"),
            ("session", "left"),
            ("state", "left"),
            ("sent/s", "right"),
            ("recv/s", "right"),
            ("rtt", "right"),
            ("out q", "right"),
            ("in q", "right"),
            ("unacked", "right"),
            ("resumes", "right"),
            ("rekeys", "right"),
            ("stale", "right"),
        ):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        tracked = self.monitor.shown()
        for t in tracked[:MAX_ROWS]:
            s = t.stats
            state = t.session.state.value
            table.add_row(
                t.role,
                t.session_id[:8],
                Text(state.upper(), style=_STATE_STYLE.get(state, "")),
                f"{t.sent_rate:.0f}",
                f"{t.received_rate:.0f}",
                _rtt(s),
                str(s.outbound_depth),
                str(s.inbound_depth),
                str(s.unacked),
                str(s.resumes),
                str(s.rekeys),
                str(s.stale_spells),
            )
        if len(tracked) > MAX_ROWS:
            table.caption = f"… and {len(tracked) - MAX_ROWS} more sessions"
        elif not tracked:
            table.caption = "no sessions yet"
        parts: list[RenderableType] = []
        if self.header is not None:
            parts.append(Text(f"[{self.monitor.elapsed():6.1f}s] {self.header()}", style="bold"))
        parts.append(table)
        parts.append(self._events())
        return Group(*parts)

    def _events(self) -> RenderableType:
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 1))
        recent: list[Event] = list(self.monitor.iter_events(logging.INFO))[-MAX_EVENTS:]
        for e in recent:
            grid.add_row(
                f"+{e.at:6.2f}s",
                e.role,
                e.session_id[:8],
                Text(e.name.upper(), style=_EVENT_STYLE.get(e.name, "")),
                e.text,
            )
        if not recent:
            grid.add_row(Text("no events yet", style="dim"))
        return grid
