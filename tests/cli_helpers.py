"""Helpers for the command-line tests: real ``python -m trio_session`` processes.

:class:`Cli` runs one command with its output read line by line in the
background, so a test can wait for a line (``wait_for``) instead of sleeping,
send it a signal, and check how it ended.  :func:`keys` writes the identity,
public-key and registry files the commands take.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import attrs

import trio_session as ts

__all__ = [
    "ROOT",
    "Cli",
    "Keys",
    "assert_clean",
    "cli_env",
    "connect_cli",
    "keys",
    "logging_restored",
    "running",
    "serve_cli",
    "serving",
    "start_serve",
    "trading_summary",
]

ROOT = Path(__file__).resolve().parent.parent


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: this checkout importable, fixed width."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path]), "COLUMNS": "120"}
    env.pop("PYTHONWARNINGS", None)
    env.update(extra)
    return env


class Cli:
    """One running ``python -m trio_session …`` with its stdout and stderr collected."""

    def __init__(
        self,
        *args: str,
        cwd: Path | None = None,
        python_args: Sequence[str] = (),
        module: str = "trio_session",
    ) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, *python_args, "-m", module, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=cli_env(),
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = threading.Condition()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: TextIO, lines: list[str]) -> None:
        with stream:
            for line in stream:
                with self._changed:
                    lines.append(line.rstrip("\n"))
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(
        self, pattern: str, *, stream: str = "stdout", timeout: float = 10.0, since: int = 0
    ) -> re.Match[str]:
        """The first line of ``stream`` (from line ``since``) matching ``pattern``; waits."""
        lines = self.out if stream == "stdout" else self.err
        regex = re.compile(pattern)
        seen = since

        def found() -> re.Match[str] | None:
            nonlocal seen
            for line in lines[seen:]:
                match = regex.search(line)
                if match:
                    return match
            seen = len(lines)
            return None

        with self._changed:
            match = None
            ended = False

            def ready() -> bool:
                nonlocal match, ended
                match = found()
                ended = not any(r.is_alive() for r in self._readers)
                return match is not None or ended

            self._changed.wait_for(ready, timeout=timeout)
            if match is None:
                raise AssertionError(
                    f"no {stream} line matching {pattern!r} within {timeout}s "
                    f"(exited: {self.proc.poll()})\n{self.dump()}"
                )
            return match

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def finish(self, timeout: float = 15.0) -> int:
        """Wait for the exit; return the exit code (output fully read)."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"{self.args} did not exit within {timeout}s\n{self.dump()}"
            ) from None
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def stop(self) -> None:
        """Kill the process if it still runs (test teardown)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        for reader in self._readers:
            reader.join(timeout=5)

    def dump(self) -> str:
        return "--- stdout\n" + "\n".join(self.out) + "\n--- stderr\n" + "\n".join(self.err)


@contextmanager
def running(*args: str, cwd: Path | None = None) -> Iterator[Cli]:
    cli = Cli(*args, cwd=cwd)
    try:
        yield cli
    finally:
        cli.stop()


def trading_summary(participant: Cli, code: int) -> str:
    """The final line of a ``connect`` that traded: clean output, exit 0, nothing lost."""
    text = participant.dump()
    assert_clean(text)
    assert code == 0, text
    summary = participant.out[-1]
    assert summary.startswith("OK: "), text
    assert "lost=0 dup=0 reordered=0" in summary, summary
    return summary


def assert_clean(text: str) -> None:
    """Nothing a user should never see: no traceback, no exception group."""
    assert "Traceback" not in text, text
    assert "ExceptionGroup" not in text, text


@attrs.frozen
class Keys:
    """Files for the commands, in ``dir``."""

    dir: Path
    venue: Path  # venue identity
    venue_pub: Path
    alice: Path  # a participant the registry trusts
    alice_pub: Path
    bob: Path  # a participant whose key the registry revoked
    carol: Path  # a participant the registry does not know
    registry: Path


def keys(directory: Path) -> Keys:
    """Identities for a venue and three participants, and a registry."""
    made: dict[str, ts.Identity] = {}
    for name in ("venue", "alice", "bob", "carol"):
        identity = ts.Identity.generate(key_id=name)
        identity.save(directory / f"{name}.key")
        (directory / f"{name}.key.pub").write_text(identity.public_key_hex + "\n")
        made[name] = identity
    registry = ts.KeyRegistry()
    for name in ("alice", "bob"):
        registry.add(name, made[name].public_key)
    registry.revoke("bob")
    registry.save(directory / "registry.json")
    return Keys(
        dir=directory,
        venue=directory / "venue.key",
        venue_pub=directory / "venue.key.pub",
        alice=directory / "alice.key",
        alice_pub=directory / "alice.key.pub",
        bob=directory / "bob.key",
        carol=directory / "carol.key",
        registry=directory / "registry.json",
    )


@contextmanager
def logging_restored() -> Iterator[None]:
    """Undo what an in-process ``main()`` does to logging (handlers and levels)."""
    import logging

    names = ("", "trio_session", "trio_session.cli")
    loggers = [logging.getLogger(n) for n in names]
    saved = [(lg, lg.level, list(lg.handlers)) for lg in loggers]
    try:
        yield
    finally:
        for lg, level, handlers in saved:
            lg.setLevel(level)
            lg.handlers[:] = handlers


def serve_cli(k: Keys, *extra: str, port: int = 0) -> Cli:
    """``serve`` for ``k``'s venue and registry on loopback (not waited for)."""
    return Cli(
        "serve",
        "--identity",
        str(k.venue),
        "--registry",
        str(k.registry),
        "--port",
        str(port),
        "--plain",
        *extra,
    )


def start_serve(k: Keys, *extra: str, port: int = 0) -> tuple[Cli, int]:
    """``serve`` for ``k``'s venue and registry on loopback, once it listens: (it, its port)."""
    venue = serve_cli(k, *extra, port=port)
    bound = int(venue.wait_for(r"listening on ws://127\.0\.0\.1:(\d+)/")[1])
    return venue, bound


def connect_cli(k: Keys, port: int, *extra: str, identity: Path | None = None) -> Cli:
    """``connect`` as alice (or ``identity``) to ``k``'s venue listening on ``port``."""
    return Cli(
        "connect",
        f"ws://127.0.0.1:{port}/",
        "--identity",
        str(identity or k.alice),
        "--venue-key",
        str(k.venue_pub),
        "--plain",
        *extra,
    )


@contextmanager
def serving(k: Keys, *extra: str) -> Iterator[tuple[Cli, int]]:
    """:func:`start_serve` for the block; the venue is killed when it ends."""
    venue, port = start_serve(k, *extra)
    try:
        yield venue, port
    finally:
        venue.stop()
