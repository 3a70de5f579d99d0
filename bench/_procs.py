"""Worker processes of the benchmarks: start, read tagged lines with deadlines, stop.

Every server and client is ``python bench/worker.py ROLE 'JSON'``; a server prints
``PORT n``, a client ``RESULT {...}`` (after ``READY {...}`` when it waits for a
go-ahead line).  :func:`kill_all` ends whatever is still running (``run.py`` calls it
in a ``finally:`` and on SIGTERM).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from _common import BENCH_DIR, median

WORKER = BENCH_DIR / "worker.py"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class WorkerError(RuntimeError):
    pass


class Proc:
    """One worker process; reads its tagged stdout lines with deadlines."""

    def __init__(
        self,
        role: str,
        params: dict[str, Any],
        profile: tuple[Path, str] | None = None,
        tag: str = "",
    ) -> None:
        if profile is not None:
            path = profile[0] / f"{_seq():02d}-{role}{'-' + tag if tag else ''}.txt"
            params = {**params, "profile": str(path), "profiler": profile[1]}
        self.role = role
        #: The port a server process reported.
        self.port = 0
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed in kill)
        self.popen = subprocess.Popen(
            [sys.executable, str(WORKER), role, json.dumps(params)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        _PROCS.append(self)
        self._buf = b""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _readline(self, deadline: float) -> bytes:
        out = self.popen.stdout
        assert out is not None
        fd = out.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(f"{self.role}: timed out waiting for output{self._tail()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    self.popen.wait(timeout=5)
                    raise WorkerError(
                        f"{self.role} exited ({self.popen.returncode}) early{self._tail()}"
                    )
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def expect(self, tag: str, timeout: float) -> Any:
        """Wait for the line ``TAG [json]``; returns the decoded JSON (or None)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._readline(deadline).decode()
            head, _, rest = line.partition(" ")
            if head == tag:
                return json.loads(rest) if rest else None

    def send_line(self, text: str) -> None:
        stdin = self.popen.stdin
        assert stdin is not None
        stdin.write(text.encode() + b"\n")
        stdin.flush()

    def stop(self, grace: float = 3.0) -> None:
        """Close stdin (servers then exit cleanly), then kill after ``grace`` seconds."""
        if self.popen.poll() is None:
            try:
                if self.popen.stdin is not None:
                    self.popen.stdin.close()
                self.popen.wait(timeout=grace)
            except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
                pass
        self.kill()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        with suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        for f in (self.popen.stdin, self.popen.stdout):
            if f is not None:
                with suppress(OSError):
                    f.close()
        self._stderr.close()

    def _tail(self) -> str:
        try:
            self._stderr.seek(0)
            text = self._stderr.read().decode(errors="replace")
        except (OSError, ValueError):
            return ""
        return f"\n--- stderr of {self.role} ---\n{text[-3000:]}" if text.strip() else ""


_PROCS: list[Proc] = []
_counter = 0


def _seq() -> int:
    global _counter
    _counter += 1
    return _counter


def kill_all() -> None:
    for p in _PROCS:
        p.kill()
    _PROCS.clear()


def medians(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each field's median over the runs."""
    return {k: median([r[k] for r in rows]) for k in rows[0]}
