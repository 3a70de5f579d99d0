"""A venue process for the memory-budget tests (tests/test_budget.py).

    python tests/budget_venue.py CONFIG_JSON

Serves PARTICIPANT and OTHER (tests/protocol/helpers.py) on 127.0.0.1 with
``SessionConfig(**CONFIG_JSON)`` and a handler that never reads, so what the
participants send stays in the venue's buffers.  Prints ``{"port": n}`` once it
listens, then answers every ``report`` line on stdin with one JSON line: its RSS
(``VmRSS``, bytes), the bytes its sessions buffer (the budget's ledger), sessions
shed for memory, and sessions alive.  Exits when stdin closes.  Its own process,
so that the test process's memory does not blur the venue's.
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio_session as ts
from tests.protocol.helpers import OTHER, PARTICIPANT, VENUE


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def never_reads(session: ts.Session) -> None:
    await session.wait_state(ts.State.CLOSED)


async def main() -> None:
    config = ts.SessionConfig(**json.loads(sys.argv[1]))
    registry = ts.KeyRegistry()
    for identity in (PARTICIPANT, OTHER):
        registry.add(identity.key_id, identity.public_key)
    async with trio.open_nursery() as nursery:
        server: ts.VenueServer = await nursery.start(
            partial(ts.serve, never_reads, VENUE, registry, "127.0.0.1", 0, config=config)
        )
        venue = server._venue
        print(json.dumps({"port": server.port}), flush=True)
        stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
        buffer = b""
        while True:
            chunk = await stdin.receive_some()
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip() == b"report":
                    report = {
                        "rss": rss(),
                        "buffered": venue.memory.ledger.total,
                        "shed": venue.memory.shed_count,
                        "sessions": len(server.sessions),
                    }
                    print(json.dumps(report), flush=True)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
