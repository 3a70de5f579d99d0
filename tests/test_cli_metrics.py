"""``--metrics-port``: Prometheus metrics an operator can scrape while sessions run.

Plain HTTP GETs (``urllib``) on 127.0.0.1 against a real ``serve`` with a real
``connect`` trading through it, and against ``demo``.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from trio_session.cli import main

from .cli_helpers import Cli, assert_clean, keys, logging_restored, running, serving

needs_prometheus = pytest.mark.skipif(
    importlib.util.find_spec("prometheus_client") is None,
    reason="needs the metrics extra (part of the test extra)",
)


def scrape(url: str) -> dict[str, float]:
    """``{'name{labels}': value}`` for every sample at ``url``."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


@needs_prometheus
def test_serve_metrics_count_sessions_messages_logouts_and_refusals(tmp_path: Path) -> None:
    k = keys(tmp_path)
    with serving(k, "--metrics-port", "0") as (venue, port):
        url = venue.wait_for(r"metrics on (http://127\.0\.0\.1:\d+/metrics)")[1]
        connect = Cli(
            "connect",
            f"ws://127.0.0.1:{port}/",
            "--identity",
            str(k.alice),
            "--venue-key",
            str(k.venue_pub),
            "--seconds",
            "2",
            "--plain",
        )
        connect.wait_for(r"orders \d+ acked \d+")  # trading for a second
        during = scrape(url)
        assert during['trio_session_sessions{role="venue",state="live"}'] == 1
        assert during['trio_session_sessions_opened_total{role="venue"}'] == 1
        assert during['trio_session_messages_total{direction="received",role="venue"}'] > 100
        assert during['trio_session_messages_total{direction="sent",role="venue"}'] > 100
        assert 'trio_session_queue_depth{direction="outbound",role="venue"}' in during
        assert "trio_session_rtt_seconds_count" in during
        assert connect.finish() == 0, connect.dump()
        venue.wait_for("event=logout", stream="stderr")
        refused = Cli(
            "connect",
            f"ws://127.0.0.1:{port}/",
            "--identity",
            str(k.carol),
            "--venue-key",
            str(k.venue_pub),
            "--log-level",
            "error",
        )
        assert refused.finish() == 1
        venue.wait_for("refused", stream="stderr")
        after = scrape(url)
        assert_clean(venue.dump())
    assert after["trio_session_logouts_total"] == 1
    assert 'trio_session_sessions{role="venue",state="live"}' not in after  # none left
    assert (
        after['trio_session_messages_total{direction="received",role="venue"}']
        >= (during['trio_session_messages_total{direction="received",role="venue"}'])
    )
    assert after['trio_session_handshake_refusals_total{reason="UNKNOWN_KEY"}'] == 1


@needs_prometheus
def test_demo_metrics_show_both_ends() -> None:
    with running("demo", "--seconds", "2", "--metrics-port", "0", "--plain") as demo:
        url = demo.wait_for(r"metrics on (http://127\.0\.0\.1:\d+/metrics)")[1]
        demo.wait_for(r"orders \d+ acked \d+")
        samples = scrape(url)
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url.replace("/metrics", "/nothing"), timeout=5)
        missing.value.close()
        assert missing.value.code == 404
        assert demo.finish() == 0
    for role in ("venue", "participant"):
        assert samples[f'trio_session_sessions{{role="{role}",state="live"}}'] == 1
        for direction in ("sent", "received"):
            assert (
                samples[f'trio_session_messages_total{{direction="{direction}",role="{role}"}}'] > 0
            )


def test_missing_metrics_extra_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    k = keys(tmp_path)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # not installed
    argv = ["serve", "--identity", str(k.venue), "--registry", str(k.registry)]
    with logging_restored():
        assert main([*argv, "--metrics-port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trio_session[metrics]" in err, err
    assert re.match(r"trio-session: error: --metrics-port needs prometheus-client", err)
