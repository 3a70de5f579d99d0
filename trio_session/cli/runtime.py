"""Running a command under Trio: signals become an orderly stop, never a traceback.

Ctrl-C (SIGINT) and SIGTERM cancel the command's work and then
:class:`~trio_session.cli.errors.Stopped` reports the signal.  What a signal
cancels is the innermost :func:`stop_here` scope, or else the whole command.
That matters for a participant: cancelling the block of ``ts.connect`` drops the
connection (the venue's dead man's switch then fires), whereas cancelling only
the trading inside it leaves the block normally, which logs out.  A second
signal while that shutdown runs raises KeyboardInterrupt at once.  Before the
handler is installed (imports, argument checks) Python's own KeyboardInterrupt
does the job; ``main`` reports both the same way.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import trio

from .errors import Stopped

__all__ = ["run", "run_beside", "stop_here"]

T = TypeVar("T")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: Scopes a signal may cancel, innermost last (one list per trio.run).
_targets: trio.lowlevel.RunVar[list[trio.CancelScope]] = trio.lowlevel.RunVar("stop_targets")


@contextmanager
def stop_here() -> Iterator[trio.CancelScope]:
    """Make a signal cancel only this block (the code after it then ends the command)."""
    targets = _targets.get([])  # outside run(): no signal handling to narrow
    with trio.CancelScope() as scope:
        targets.append(scope)
        try:
            yield scope
        finally:
            targets.remove(scope)


def run(body: Callable[[], Awaitable[T]]) -> T:
    """``trio.run(body)``; a SIGINT/SIGTERM cancels ``body`` and raises Stopped."""
    return trio.run(_guarded, body)


async def _guarded(body: Callable[[], Awaitable[T]]) -> T:
    received: list[int] = []
    result: list[T] = []
    failure: BaseException | None = None
    body_scope = trio.CancelScope()
    targets: list[trio.CancelScope] = []
    _targets.set(targets)

    async def watch(*, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(*_SIGNALS) as signals:
            task_status.started()
            async for signum in signals:
                if received:
                    raise KeyboardInterrupt  # a second signal: stop now
                received.append(signum)
                (targets[-1] if targets else body_scope).cancel()

    async with trio.open_nursery() as nursery:
        await nursery.start(watch)
        try:
            with body_scope:
                result.append(await body())
        except BaseException as exc:  # re-raised below, outside the nursery: never a group
            failure = exc
        nursery.cancel_scope.cancel()
    if received:
        # Whatever the shutdown raised on its way out, the signal is the reason.
        raise Stopped(received[0])
    if failure is not None:
        raise failure
    return result[0]


async def run_beside(
    body: Callable[[], Awaitable[T]],
    *background: Callable[[], Awaitable[object]],
) -> T:
    """Run ``body`` with ``background`` tasks beside it; end them when it returns.

    Whatever ``body`` raises leaves as itself, never wrapped in a group.
    """
    result: list[T] = []
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:
        for task in background:
            nursery.start_soon(task)
        try:
            result.append(await body())
        except BaseException as exc:  # re-raised below, outside the nursery
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return result[0]
