"""What the commands show: the live view on a terminal, plain lines elsewhere, and
``--json`` output that is JSON only.

The live view is checked without screenshots: ``demo --faults 3`` runs under a
pseudo-terminal and its output must show the STALE and RESUMING spells the cuts
cause (they last milliseconds, far less than a redraw, so they must come from the
recorded transitions, not from sampling the state).
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from .cli_helpers import assert_clean, cli_env

ANSI = __import__("re").compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _under_pty(argv: list[str], timeout: float = 30.0) -> tuple[int, str]:
    """Run ``argv`` with stdin, stdout and stderr on a pseudo-terminal; (exit code, output)."""
    controller, terminal = pty.openpty()
    env = cli_env(TERM="xterm-256color", COLUMNS="140", LINES="50")
    proc = subprocess.Popen(
        argv, stdin=terminal, stdout=terminal, stderr=terminal, env=env, close_fds=True
    )
    os.close(terminal)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                try:
                    data = os.read(controller, 65536)
                except OSError:  # EIO: the terminal's last writer exited
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            pytest.fail(f"{argv} still running after {timeout}s")
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)
    return code, ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


def test_demo_with_faults_shows_stale_and_resuming_on_a_terminal() -> None:
    pytest.importorskip("rich")  # the cli extra (part of the test extra)
    code, screen = _under_pty(
        [sys.executable, "-m", "trio_session", "demo", "--seconds", "2", "--faults", "3"]
    )
    assert_clean(screen)
    assert code == 0, screen
    assert "STALE" in screen and "RESUMING" in screen, screen
    assert "sent/s" in screen and "unacked" in screen  # the live table (rich)
    assert "OK: " in screen and "resumes=3" in screen, screen


def test_without_rich_the_terminal_gets_plain_lines() -> None:
    """The README's first command after a plain ``pip install .``: no rich installed."""
    script = (
        "import sys; sys.modules['rich'] = None\n"  # as if the cli extra were not installed
        "from trio_session.cli import main\n"
        "sys.exit(main(['demo', '--seconds', '2', '--faults', '2']))\n"
    )
    code, screen = _under_pty([sys.executable, "-c", script])
    assert_clean(screen)
    assert code == 0, screen
    assert "event=stale" in screen and "event=resuming" in screen, screen
    assert "participant" in screen and "orders" in screen, screen  # status lines
    assert "sent/s" not in screen  # no table
    assert "OK: " in screen


def test_demo_json_is_only_json_on_stdout() -> None:
    """``demo --json | python -m json.tool``: progress goes to stderr."""
    env = cli_env()
    demo = subprocess.Popen(
        [sys.executable, "-m", "trio_session", "demo", "--seconds", "1", "--faults", "1", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert demo.stdout is not None
    tool = subprocess.run(
        [sys.executable, "-m", "json.tool"],
        stdin=demo.stdout,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    demo.stdout.close()
    _, err = demo.communicate(timeout=60)
    progress = err.decode()
    assert demo.returncode == 0, progress
    assert tool.returncode == 0, tool.stderr
    data = json.loads(tool.stdout)
    assert data["ok"] is True and data["lost"] == 0 and data["duplicated"] == 0
    assert data["sent"] > 100 and data["received"] == data["sent"]
    assert data["resumes"] == 1 and data["stale_spells"] >= 1
    states = [s["state"] for s in data["states"]]
    assert states[:3] == ["stale", "resuming", "live"], states
    assert "orders" in progress and "event=stale" in progress  # progress went to stderr
    assert_clean(progress)


def test_plain_progress_and_events_when_not_a_terminal() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "trio_session", "demo", "--seconds", "1.5"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(" orders " in line for line in lines[:-1])  # status lines each second
    assert lines[-1].startswith("OK: ")
    # Lifecycle events are structured log lines on stderr.
    assert "event=login" in proc.stderr and "event=logout" in proc.stderr, proc.stderr
    assert_clean(proc.stdout + proc.stderr)
