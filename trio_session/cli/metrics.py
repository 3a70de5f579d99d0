"""Prometheus metrics for operators: ``serve --metrics-port N`` (and ``demo``).

Needs the ``metrics`` extra (prometheus-client).  The venue's numbers come from
:meth:`trio_session.VenueServer.stats`; the demo's participant's from the
sessions a :class:`~trio_session.cli.monitor.Monitor` follows.  They are
computed when scraped, so a scrape costs nothing between scrapes.  Exposed:

* ``trio_session_sessions{role,state}``: sessions by state, now;
* ``trio_session_sessions_opened_total{role}``, ``trio_session_logouts_total``,
  ``trio_session_sessions_lost_total`` (dead man's switch), ``trio_session_resets_total``,
  ``trio_session_slow_consumers_total``;
* ``trio_session_messages_total{role,direction}``, ``trio_session_bytes_total{role,direction}``
  and the other counters (resumes, connections, rekeys, ratchets, retransmitted,
  heartbeats, STALE spells), ``trio_session_dropped_total{role,policy}``;
* ``trio_session_queue_depth{role,direction}``, ``trio_session_unacked_messages{role}``;
* ``trio_session_handshake_refusals_total{reason}``;
* ``trio_session_rtt_seconds``: a histogram of the sessions' round trips, sampled
  by the monitor (heartbeats measure them, under traffic too).

Served by a small Trio HTTP responder (GET ``/metrics``), so no thread ever
reads a session while Trio changes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

import trio_session as ts

from .errors import EXIT_UNAVAILABLE, CliError, os_reason
from .monitor import Monitor

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["MISSING_EXTRA", "build_registry", "require_prometheus", "serve_metrics"]

MISSING_EXTRA = (
    "--metrics-port needs prometheus-client: pip install 'trio_session[metrics]' "
    "(or pip install prometheus-client)"
)

#: RTT buckets, seconds: loopback is ~0.2 ms, a continent ~100 ms.
RTT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

_COUNTER_HELP = {
    "resumes": "Connections that resumed a session",
    "connections": "Connections made by sessions",
    "rekeys": "Completed Diffie-Hellman rekeys",
    "ratchets": "Sending-key ratchet steps",
    "retransmitted": "Messages retransmitted after resumes",
    "heartbeats_sent": "Heartbeats sent",
    "stale_spells": "Times a session went STALE",
}
_EVENT_HELP = {
    "logouts": "Sessions the participant closed gracefully",
    "sessions_lost": "Sessions ended by the dead man's switch or another loss",
    "resets": "Sessions replaced by a new one (continuity lost)",
    "slow_consumers": "Sessions closed because their peer did not read",
}

#: What the metrics need from one role, whatever its source: a flat mapping.
Numbers = Mapping[str, Any]


def require_prometheus() -> None:
    """Fail early, with the extra to install, when prometheus-client is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise CliError(MISSING_EXTRA) from None


def venue_numbers(stats: ts.VenueStats) -> Numbers:
    """The venue's numbers, from ``VenueServer.stats()``."""
    return {
        "sessions": dict(stats.sessions),
        "opened": stats.sessions_opened,
        "sent": stats.messages_sent,
        "received": stats.messages_received,
        **{
            name: getattr(stats, name)
            for name in (
                *_COUNTER_HELP,
                *_EVENT_HELP,
                "bytes_sent",
                "bytes_received",
                "dropped",
                "conflated",
                "outbound_depth",
                "inbound_depth",
                "unacked",
            )
        },
    }


def participant_numbers(monitor: Monitor) -> Numbers | None:
    """The demo participant's numbers, from the sessions the monitor follows."""
    totals = monitor.counter_totals().get("participant")
    if totals is None:
        return None
    states = monitor.states()
    gauges = monitor.gauges().get("participant", {})
    return {
        "sessions": {state: n for (role, state), n in states.items() if role == "participant"},
        "opened": monitor.opened["participant"],
        **totals,
        "resets": monitor.totals["resets"],
        **{name: gauges.get(name, 0) for name in ("outbound_depth", "inbound_depth", "unacked")},
    }


class _Collector:
    """Builds the metric families at each scrape from each role's numbers."""

    def __init__(
        self,
        venue: Callable[[], ts.VenueStats] | None,
        monitor: Monitor,
    ) -> None:
        self.venue = venue
        self.monitor = monitor

    def describe(self) -> list[Any]:
        return []  # computed per scrape; nothing to pre-declare

    def collect(self) -> Iterator[Any]:
        roles: dict[str, Numbers] = {}
        stats = self.venue() if self.venue is not None else None
        if stats is not None:
            roles["venue"] = venue_numbers(stats)
        participant = participant_numbers(self.monitor)
        if participant is not None:
            roles["participant"] = participant
        yield from _families(roles)
        if stats is not None:
            yield from _venue_families(stats)


def _families(roles: Mapping[str, Numbers]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    def family(kind: Any, name: str, text: str, labels: list[str]) -> Any:
        return kind(f"trio_session_{name}", text, labels=labels)

    sessions = family(GaugeMetricFamily, "sessions", "Sessions by state", ["role", "state"])
    opened = family(CounterMetricFamily, "sessions_opened", "Sessions started", ["role"])
    messages = family(
        CounterMetricFamily, "messages", "Application messages", ["role", "direction"]
    )
    frame_bytes = family(CounterMetricFamily, "bytes", "Frame bytes", ["role", "direction"])
    dropped = family(
        CounterMetricFamily,
        "dropped",
        "Outbound messages discarded by a send policy",
        ["role", "policy"],
    )
    others = {n: family(CounterMetricFamily, n, t, ["role"]) for n, t in _COUNTER_HELP.items()}
    depth = family(GaugeMetricFamily, "queue_depth", "Messages queued", ["role", "direction"])
    unacked = family(GaugeMetricFamily, "unacked_messages", "Sent, not yet acknowledged", ["role"])
    for role, n in sorted(roles.items()):
        for state, count in sorted(n["sessions"].items()):
            if count:
                sessions.add_metric([role, state], count)
        opened.add_metric([role], n["opened"])
        for direction in ("sent", "received"):
            messages.add_metric([role, direction], n[direction])
            frame_bytes.add_metric([role, direction], n[f"bytes_{direction}"])
        dropped.add_metric([role, "drop_oldest"], n["dropped"])
        dropped.add_metric([role, "conflate"], n["conflated"])
        for name, fam in others.items():
            fam.add_metric([role], n[name])
        depth.add_metric([role, "outbound"], n["outbound_depth"])
        depth.add_metric([role, "inbound"], n["inbound_depth"])
        unacked.add_metric([role], n["unacked"])
    yield from (sessions, opened, messages, frame_bytes, dropped, *others.values(), depth, unacked)


def _venue_families(stats: ts.VenueStats) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily

    for name, help_text in _EVENT_HELP.items():
        yield CounterMetricFamily(f"trio_session_{name}", help_text, value=getattr(stats, name))
    refusals = CounterMetricFamily(
        "trio_session_handshake_refusals", "Handshakes refused", labels=["reason"]
    )
    for reason, count in sorted(stats.handshake_refusals.items()):
        refusals.add_metric([reason], count)
    yield refusals


def build_registry(
    monitor: Monitor, venue: Callable[[], ts.VenueStats] | None = None
) -> CollectorRegistry:
    """A registry exposing ``venue()``'s and ``monitor``'s numbers (and feeding its
    RTT histogram from the monitor's samples)."""
    from prometheus_client import CollectorRegistry, Histogram

    registry = CollectorRegistry()
    registry.register(_Collector(venue, monitor))
    rtt = Histogram(
        "trio_session_rtt_seconds",
        "Session round-trip time (heartbeats)",
        buckets=RTT_BUCKETS,
        registry=registry,
    )
    monitor.rtt_observers.append(rtt.observe)
    return registry


async def serve_metrics(
    monitor: Monitor,
    host: str,
    port: int,
    venue: Callable[[], ts.VenueStats] | None = None,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` on ``host:port``; ``nursery.start`` returns the bound port.

    ``venue`` is a venue's ``stats`` method (the venue's numbers), if any.
    """
    require_prometheus()
    registry = build_registry(monitor, venue)
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise CliError(
            f"cannot listen for metrics on {host}:{port}: {os_reason(exc)} (--metrics-port)",
            EXIT_UNAVAILABLE,
        ) from None
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(partial(_answer, registry), listeners)


async def _answer(registry: CollectorRegistry, stream: trio.SocketStream) -> None:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    try:
        with trio.move_on_after(10):
            request = await _read_head(stream)
            if request is None:
                return
            method, path = request
            if method not in ("GET", "HEAD"):
                await _send(stream, "405 Method Not Allowed", b"GET /metrics\n")
            elif path not in ("/metrics", "/"):
                await _send(stream, "404 Not Found", b"try /metrics\n")
            else:
                body = generate_latest(registry)
                await _send(stream, "200 OK", body, CONTENT_TYPE_LATEST, head=method == "HEAD")
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the scraper went away
    finally:
        await trio.aclose_forcefully(stream)


async def _read_head(stream: trio.SocketStream) -> tuple[str, str] | None:
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        if len(data) > 16384:
            return None
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        data += chunk
    parts = data.split(b"\n", 1)[0].decode("latin-1").split()
    if len(parts) < 2:
        return None
    return parts[0], parts[1].split("?", 1)[0]


async def _send(
    stream: trio.SocketStream,
    status: str,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    head: bool = False,
) -> None:
    header = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    await stream.send_all(header if head else header + body)
