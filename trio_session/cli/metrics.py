"""Prometheus metrics for operators: ``serve --metrics-port N`` (and ``demo``).

Needs the ``metrics`` extra (prometheus-client).  Numbers come from a
:class:`~trio_session.cli.monitor.Monitor`, i.e. from public objects only
(sessions' ``stats``, the venue's hooks); they are computed when scraped, so a
scrape costs nothing between scrapes.  Exposed:

* ``trio_session_sessions{role,state}``: sessions by state, now;
* ``trio_session_sessions_opened_total{role}``, ``trio_session_logouts_total``,
  ``trio_session_sessions_lost_total`` (dead man's switch), ``trio_session_resets_total``,
  ``trio_session_slow_consumers_total``;
* ``trio_session_messages_total{role,direction}`` and the other SessionStats
  counters (resumes, connections, rekeys, ratchets, retransmitted, heartbeats,
  STALE spells), ``trio_session_dropped_total{role,policy}``;
* ``trio_session_queue_depth{role,direction}``, ``trio_session_unacked_messages{role}``;
* ``trio_session_handshake_refusals_total{reason}``;
* ``trio_session_rtt_seconds``: a histogram of heartbeat round trips.

Served by a small Trio HTTP responder (GET ``/metrics``), so no thread ever
reads a session while Trio changes it.  Bytes on the wire are not counted yet:
sessions do not report them.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

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


def require_prometheus() -> None:
    """Fail early, with the extra to install, when prometheus-client is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise CliError(MISSING_EXTRA) from None


class _MonitorCollector:
    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def describe(self) -> list[Any]:
        return []  # computed per scrape; nothing to pre-declare

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self.monitor
        sessions = GaugeMetricFamily(
            "trio_session_sessions", "Sessions by state", labels=["role", "state"]
        )
        for (role, state), n in sorted(m.states().items()):
            sessions.add_metric([role, state], n)
        yield sessions
        opened = CounterMetricFamily(
            "trio_session_sessions_opened", "Sessions started", labels=["role"]
        )
        for role, n in sorted(m.opened.items()):
            opened.add_metric([role], n)
        yield opened
        for name, help_text in _EVENT_HELP.items():
            yield CounterMetricFamily(f"trio_session_{name}", help_text, value=m.totals[name])
        totals = m.counter_totals()
        messages = CounterMetricFamily(
            "trio_session_messages", "Application messages", labels=["role", "direction"]
        )
        dropped = CounterMetricFamily(
            "trio_session_dropped",
            "Outbound messages discarded by a send policy",
            labels=["role", "policy"],
        )
        others = {
            name: CounterMetricFamily(f"trio_session_{name}", text, labels=["role"])
            for name, text in _COUNTER_HELP.items()
        }
        for role, counts in sorted(totals.items()):
            messages.add_metric([role, "sent"], counts["sent"])
            messages.add_metric([role, "received"], counts["received"])
            dropped.add_metric([role, "drop_oldest"], counts["dropped"])
            dropped.add_metric([role, "conflate"], counts["conflated"])
            for name, family in others.items():
                family.add_metric([role], counts[name])
        yield messages
        yield dropped
        yield from others.values()
        depth = GaugeMetricFamily(
            "trio_session_queue_depth", "Messages queued", labels=["role", "direction"]
        )
        unacked = GaugeMetricFamily(
            "trio_session_unacked_messages", "Sent, not yet acknowledged", labels=["role"]
        )
        for role, g in sorted(m.gauges().items()):
            depth.add_metric([role, "outbound"], g["outbound_depth"])
            depth.add_metric([role, "inbound"], g["inbound_depth"])
            unacked.add_metric([role], g["unacked"])
        yield depth
        yield unacked
        refusals = CounterMetricFamily(
            "trio_session_handshake_refusals", "Handshakes refused", labels=["reason"]
        )
        for reason, n in sorted(m.refusals.items()):
            refusals.add_metric([reason], n)
        yield refusals


def build_registry(monitor: Monitor) -> CollectorRegistry:
    """A registry exposing ``monitor``'s numbers (and feeding its RTT histogram)."""
    from prometheus_client import CollectorRegistry, Histogram

    registry = CollectorRegistry()
    registry.register(_MonitorCollector(monitor))
    rtt = Histogram(
        "trio_session_rtt_seconds",
        "Heartbeat round-trip time",
        buckets=RTT_BUCKETS,
        registry=registry,
    )
    monitor.rtt_observers.append(rtt.observe)
    return registry


async def serve_metrics(
    monitor: Monitor,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` on ``host:port``; ``nursery.start`` returns the bound port."""
    require_prometheus()
    registry = build_registry(monitor)
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
