"""The running Trio clock, read without ``trio.current_time``'s indirection."""

from __future__ import annotations

from collections.abc import Callable

import trio

__all__ = ["run_clock"]


def run_clock() -> Callable[[], float]:
    """The current run's clock reading, as a bound method (call from inside ``trio.run``).

    ``trio.current_time()`` goes through three Python frames per read and the hot
    path reads the clock several times per frame; binding the run's clock once
    (per connection) costs one frame per read.  It is the run's own clock, so a
    ``trio.testing.MockClock`` still drives every timer.
    """
    return trio.lowlevel.current_clock().current_time
