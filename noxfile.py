"""Developer and CI tasks: ``python -m nox`` runs tests, lint, typecheck and docs.

Each session builds a fresh virtualenv with the standard library's ``venv`` (no
``virtualenv`` download needed) on the Python that runs nox, and installs the
project from this checkout, so a green run depends on nothing installed by hand.
"""

from __future__ import annotations

from pathlib import Path

import nox

ROOT = Path(__file__).parent

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]


def _lint_targets() -> list[str]:
    targets = ["trio_session", "tests", "noxfile.py", "docs/conf.py"]
    if (ROOT / "bench").exists():
        targets.append("bench")
    return targets


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (extra arguments go to pytest: ``nox -s tests -- -k foo``).

    Four xdist workers even on two cores: most tests wait on sockets, subprocesses
    and timers rather than compute, so four halve the wall time (``-n 0`` to turn
    it off, e.g. with ``--pdb``).  Tests marked ``timing`` then run serially.
    """
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-n", "4", "-m", "not timing", *session.posargs)
    # Latency assertions against an in-test baseline: alone, after the parallel pass.
    session.run("python", "-m", "pytest", "-m", "timing", *session.posargs, success_codes=[0, 5])


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff==0.17.6")  # pinned: new rules must not break CI unannounced
    targets = _lint_targets()
    session.run("ruff", "check", *targets)
    session.run("ruff", "format", "--check", *targets)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package and the tests (files come from pyproject.toml)."""
    session.install("-e", ".[test]", "mypy==2.4.1")
    session.run("mypy", "--strict", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML docs; any Sphinx warning fails the build."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks vs raw trio-websocket (not run by default): ``nox -s bench -- --quick``."""
    session.install(".")
    session.run("python", "bench/run.py", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """Chaos soak (>= 1,000 faults of every kind over >= 1,000,000 messages each way)
    and >= 100,000 fuzzed inputs; prints its figures.  Not part of the default run."""
    session.install("-e", ".[test]")
    session.run(
        "python",
        "-m",
        "pytest",
        "--soak",
        "-s",
        "-p",
        "no:cacheprovider",
        "-o",
        "timeout=5400",
        *(session.posargs or ["tests"]),
    )
