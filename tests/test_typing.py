"""The typed API keeps catching mistakes: mypy on ``tests/typing_cases.py``.

That file marks every mistake a type checker must reject with a
``# type: ignore[code]``; under ``warn_unused_ignores`` an ignore that is no
longer needed (because the API lost its types, e.g. ``send()`` took ``Any``
again) is an error, and so is an ``assert_type`` that no longer holds.  Runs
mypy in a subprocess with its own cache, so it does not depend on the suite's
other files or on a warm cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CASES = Path(__file__).with_name("typing_cases.py")

if os.environ.get("CI") != "true":  # under CI the test extra installs it: never skipped
    pytest.importorskip("mypy", reason="the typing test needs mypy (pip install mypy)")


def test_typing_cases_pass_mypy_with_every_ignore_needed(tmp_path: Path) -> None:
    text = CASES.read_text()
    # The cases must exercise each promise of the typed API at least once.
    for needle in ('send(b"raw")', "ctx.reply(12345)", "route(NewOrder)", "retsart="):
        assert needle in text, needle
    assert text.count("# type: ignore[") >= 7
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--warn-unused-ignores",
            "--no-error-summary",
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            "--config-file",
            str(Path(__file__).parents[1] / "pyproject.toml"),
            str(CASES),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=Path(__file__).parents[1],
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
