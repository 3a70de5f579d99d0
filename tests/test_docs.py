"""Run the code of the tutorial and the how-to pages, and check what it does.

Each page is one program: its ```python blocks, in order, form a module (every line at its
line number in the page, so a traceback points into the page) whose ``async def main()`` runs
under Trio with a time limit.  The mock-clock pages run under ``MockClock(autojump_threshold=0)``,
as their own ``__main__`` footers do.  What a program prints must equal the page's documented
output (the ```text block after ``<!-- output -->``), and what ``main()`` returns is checked
too, so a page cannot drift from the library.  docs/howto/testing.md consists of pytest tests:
they run under pytest-trio in a subprocess.

Blocks meant for reading only are fenced as ``text``, ``toml`` or ``console``, never
``python``.  docs/protocol.md and docs/howto/fault-injection.md are tested by their authors.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

#: Pages whose ``main()`` runs in-process: page -> run it under a mock clock?
PAGES: dict[str, bool] = {
    "tutorial.md": False,
    "howto/disconnects.md": True,
    "howto/plugins.md": True,
    "howto/backpressure.md": True,
    "howto/tls.md": False,
    "howto/durable.md": True,
}
#: Pages whose python blocks are pytest tests.
PYTEST_PAGES = ("howto/testing.md",)

#: Real seconds for a real-clock page; virtual seconds for a mock-clock page.
REAL_LIMIT = 10.0
VIRTUAL_LIMIT = 24 * 3600.0

FENCE = re.compile(
    r"^(?P<fence>`{3,})(?P<info>[^`\n]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.MULTILINE | re.DOTALL
)
OUTPUT = re.compile(r"<!-- output -->\s*\n```text\n(?P<body>.*?)^```", re.MULTILINE | re.DOTALL)


def code_blocks(page: Path, language: str = "python") -> list[tuple[int, str]]:
    """(line number of the first code line, code) of each block fenced as ``language``."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        info = match["info"].split()
        if info and info[0] == language:
            found.append((text.count("\n", 0, match.start("body")) + 1, match["body"]))
    return found


def program(page: Path) -> str:
    """The page's python blocks as one module, each line at its line number in the page."""
    lines: list[str] = []
    for first_line, code in code_blocks(page):
        lines.extend([""] * (first_line - 1 - len(lines)))
        lines.extend(code.splitlines())
    return "\n".join(lines) + "\n"


def script(page: Path) -> str:
    """The page's python blocks as a tidy script: blocks separated by two blank lines."""
    return "\n\n".join(code.rstrip("\n") + "\n" for _, code in code_blocks(page))


def expected_output(page: Path) -> str:
    match = OUTPUT.search(page.read_text(encoding="utf-8"))
    assert match is not None, f"{page.name} documents no <!-- output --> block"
    return match["body"]


def load(page: Path, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """Execute the page's program as a module (registered, so msgspec can resolve its types)."""
    name = "docs_" + re.sub(r"\W", "_", page.relative_to(DOCS).with_suffix("").as_posix())
    module = types.ModuleType(name)
    module.__file__ = str(page)
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(program(page), str(page), "exec"), module.__dict__)
    return module


def run_main(module: types.ModuleType, *, mock_clock: bool) -> Any:
    main: Callable[[], Any] = module.main

    async def bounded() -> Any:
        with trio.fail_after(VIRTUAL_LIMIT if mock_clock else REAL_LIMIT):
            return await main()

    clock = trio.testing.MockClock(autojump_threshold=0) if mock_clock else None
    return trio.run(bounded, clock=clock)


def run_page(page: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run the page's program; check its output against the page; return what main() returned."""
    path = DOCS / page
    result = run_main(load(path, monkeypatch), mock_clock=PAGES[page])
    assert capsys.readouterr().out == expected_output(path)
    return result


# -- each page is one runnable program -------------------------------------------------------


@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_is_one_program_with_a_main_footer(page: str) -> None:
    source = program(DOCS / page)
    assert "async def main()" in source
    footer = 'if __name__ == "__main__":\n    trio.run(main'
    assert footer in source, f"{page} lacks a __main__ footer"
    assert ("MockClock(autojump_threshold=0)" in source) is PAGES[page]


def test_index_pages_have_no_code() -> None:
    for page in ("index.md", "howto/index.md"):
        assert code_blocks(DOCS / page) == [], f"{page} has python blocks nobody runs"


# -- the pages -------------------------------------------------------------------------------


def test_tutorial(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    reports = run_page("tutorial.md", capsys, monkeypatch)
    assert [(r.client_id, r.order_seq, r.status) for r in reports] == [
        (1, 0, "filled"),
        (2, 1, "rejected"),
    ]
    assert str(reports[0].price) == "64250.50"  # a Decimal, digit for digit


def test_tutorial_complete_program_is_the_pages_blocks_and_runs_as_a_script() -> None:
    page = DOCS / "tutorial.md"
    example = DOCS / "examples" / "tutorial.py"
    assert example.read_text(encoding="utf-8") == script(page)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    proc = subprocess.run(
        [sys.executable, str(example)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected_output(page)


def test_disconnects(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    seen = run_page("howto/disconnects.md", capsys, monkeypatch)
    # The outage was seen, then LIVE again on the same session, with every order acknowledged
    # exactly once and in order, including the ones sent during the outage.
    assert seen["during_outage"] in {"STALE", "RESUMING"}
    assert seen["after_resume"] == "LIVE" and seen["same_session"] is True
    assert seen["acks"] == [f"ack {i}" for i in range(6)]
    assert seen["resumes"] == 1
    # A session that could not be resumed is reported once, naming exactly the order in
    # doubt (written, never acknowledged), then the new one works.
    assert seen["reset"] is True
    assert seen["in_doubt"] == [(1, b"order 8")]
    # Cancellation is a loss (dead man's switch after resume_ttl); leaving the block a logout.
    assert seen["venue_events"] == ["lost after 30s", "logout"]


def test_plugins(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    outcome = run_page("howto/plugins.md", capsys, monkeypatch)
    # Every message got exactly one answer; the session survived all the rejections.
    assert outcome["accepted"] == [0, 5, 7]
    assert outcome["rejected"] == {
        1: "qty must be positive",
        2: "rate limit",
        3: "unknown order 7",
        4: "no handler for Ping",
        6: "trading halted",
    }
    # The plugin saw the whole life cycle, and its dead man's switch cancelled order 4.
    assert outcome["journal"] == [
        "open",
        "stale",
        "resume",
        "stale",
        "lost: cancelled [4]",
        "close: SESSION_EXPIRED",
    ]


def test_backpressure(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    stats = run_page("howto/backpressure.md", capsys, monkeypatch)
    assert stats.conflated > 0 and stats.dropped > 0 and stats.outbound_depth == 0


def test_tls(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    refused = run_page("howto/tls.md", capsys, monkeypatch)
    assert refused == "ConnectionLost"


def test_durable(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    seen = run_page("howto/durable.md", capsys, monkeypatch)
    assert seen["same_session"] is True  # a venue restart on its store: no SessionReset
    assert seen["sent"] == 2


def test_testing_page_tests_pass_under_pytest_trio(tmp_path: Path) -> None:
    (page,) = PYTEST_PAGES
    source = script(DOCS / page)
    (tmp_path / "test_from_docs.py").write_text(source, encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\nfilterwarnings = error\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]),
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",  # faster start; pytest-trio is loaded by name
    }
    command = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "pytest_trio.plugin"]
    proc = subprocess.run(
        [sys.executable, *command, "test_from_docs.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tests = len(re.findall(r"^(?:async )?def test_", source, re.MULTILINE))
    assert tests >= 4
    assert re.search(rf"\b{tests} passed\b", proc.stdout), proc.stdout
