"""Test-suite options: ``--soak`` runs only the long soak tests (``nox -s soak``);
without it they are deselected, so the default run stays fast.

Tests marked ``timing`` assert latency against a baseline measured in the same test;
``nox -s tests`` runs them in a second, serial pass after the parallel one, so that
other tests' load never skews their figures."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run only the long soak tests (chaos soak, large fuzzing runs)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: long soak test, run with --soak (nox -s soak)")
    config.addinivalue_line(
        "markers", "timing: asserts latency against an in-test baseline; run alone (serial pass)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    want_soak = config.getoption("--soak")
    selected: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        (
            selected if (item.get_closest_marker("soak") is not None) == want_soak else deselected
        ).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected
