"""A participant written only from docs/protocol.md (tests/strict_peer.py) against ``ts.serve``.

Over real sockets, in both frame protection modes: it survives a rejected message (a
``0x02`` notice), a venue CLOSE, and a new handshake right after it (a resume after a
resumable code, even without the echo; a new session after any other code), and it
follows rekeys and ratchets.  The peer raises on anything the spec forbids, so each
test also checks the venue against the spec.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio

import trio_session as ts

from .runtime_helpers import PARTICIPANT, VENUE, registry, url
from .strict_peer import StrictParticipant
from .strict_spec import Closed, Delivered

pytestmark = [
    pytest.mark.parametrize("mode", ["mac", "aead"]),
    # M1 as the first WebSocket message, or in the upgrade request (M2 then in the 101).
    pytest.mark.parametrize("in_upgrade", [False, True], ids=["in_band", "in_upgrade"]),
]

#: PARTICIPANT's Ed25519 seed (tests/protocol/helpers.py).
SEED = bytes(range(32, 64))
DEADLINE = 10.0


class Venue:
    """Echoes; rejects messages starting with b"bad"; ends the session on b"logout-me"."""

    def __init__(self) -> None:
        self.got: list[bytes] = []

    async def handler(self, session: ts.Session) -> None:
        async for message in session:
            self.got.append(message)
            if message == b"logout-me":
                return  # the venue closes the session: CLOSE(NORMAL)
            if message.startswith(b"bad"):
                session.reject(session.last_seq, "bad order")
            else:
                await session.send(message)


@asynccontextmanager
async def serving(venue: Venue, **config: Any) -> AsyncIterator[str]:
    """``ts.serve`` with its default mode policy (no TLS: "aead" preferred, both accepted)."""
    cfg = ts.SessionConfig(handshake_timeout=2.0, close_timeout=0.5, **config)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(ts.serve, venue.handler, VENUE, registry(), "127.0.0.1", 0, config=cfg)
        )
        yield url(server)
        nursery.cancel_scope.cancel()


def peer(mode: str, in_upgrade: bool) -> StrictParticipant:
    p = StrictParticipant(SEED, VENUE.public_key, modes=(mode,), hello_in_upgrade=in_upgrade)
    assert p.key_id == PARTICIPANT.key_id  # the default key id, computed from the spec
    return p


async def echo(p: StrictParticipant, message: bytes) -> None:
    await p.send(message)
    event = await p.next_event()
    assert isinstance(event, Delivered) and event.msgs == [message], event


async def test_survives_a_rejected_message(mode: str, in_upgrade: bool) -> None:
    venue = Venue()
    with trio.fail_after(DEADLINE):
        async with serving(venue) as where:
            p = peer(mode, in_upgrade)
            async with p.connect(where) as m2:
                assert m2["mode"] == p.mode == mode and not m2["resumed"]
                assert p.hello_taken is in_upgrade  # ts.serve takes M1 from the request
                await echo(p, b"order-0")
                seq = await p.send(b"bad-1")
                notice = await p.next_event()
                assert isinstance(notice, Delivered) and notice.notices is not None
                assert notice.seq == 1  # a notice takes the next v2c data seq
                assert notice.notices == [[1, seq, 3, "bad order", None]]  # reject, REJECTED
                await echo(p, b"order-2")  # the session goes on
                closed = await p.close()
            assert isinstance(closed, Closed) and closed.code == 0
            assert venue.got == [b"order-0", b"bad-1", b"order-2"]


async def test_resumes_right_after_a_resumable_venue_close(mode: str, in_upgrade: bool) -> None:
    """The venue declares the peer dead (HEARTBEAT_TIMEOUT, resumable) and closes; the
    peer's echo never arrives and it resumes at once: accepted, nothing lost or doubled."""
    venue = Venue()
    with trio.fail_after(DEADLINE):
        async with serving(venue, heartbeat_interval=0.2, heartbeat_timeout=0.6) as where:
            p = peer(mode, in_upgrade)
            async with p.connect(where) as first:
                await echo(p, b"order-0")
                p.mute = True  # from here on, what the peer sends is lost
                await p.send(b"order-1")  # kept for replay
                closed = await p.next_event()
                assert isinstance(closed, Closed), closed
                assert closed.code == ts.CloseCode.HEARTBEAT_TIMEOUT
            p.mute = False
            assert p.resumable  # a resumable code: the spec says resume
            async with p.connect(where) as again:
                assert again["resumed"] and again["session_id"] == first["session_id"]
                assert again["next_rx_seq"] == 1  # order-1 never arrived: retransmitted
                event = await p.next_event()
                assert isinstance(event, Delivered) and event.msgs == [b"order-1"]
                await echo(p, b"order-2")
                await p.close()
            assert venue.got == [b"order-0", b"order-1", b"order-2"]


@pytest.mark.parametrize("echo_arrives", [True, False])
async def test_new_session_right_after_a_venue_logout(
    mode: str, in_upgrade: bool, echo_arrives: bool
) -> None:
    """CLOSE(NORMAL) from the venue: the peer echoes it (the echo may be lost), does not
    resume (the code is not resumable), and opens a new session at once."""
    venue = Venue()
    with trio.fail_after(DEADLINE):
        async with serving(venue) as where:
            p = peer(mode, in_upgrade)
            async with p.connect(where) as first:
                await echo(p, b"order-0")
                await p.send(b"logout-me")
                p.mute = not echo_arrives
                closed = await p.next_event()
                p.mute = False
                assert isinstance(closed, Closed) and closed.code == ts.CloseCode.NORMAL
            assert not p.resumable
            async with p.connect(where) as second:
                assert not second["resumed"] and second["session_id"] != first["session_id"]
                await echo(p, b"order-A")
                await p.close()
            assert venue.got == [b"order-0", b"logout-me", b"order-A"]


async def test_follows_rekeys_and_ratchets(mode: str, in_upgrade: bool) -> None:
    venue = Venue()
    fast = {"ratchet_interval": 0.05, "rekey_interval": 0.2, "reject_after": 2.0}
    with trio.fail_after(DEADLINE):
        async with serving(venue, **fast) as where:
            p = peer(mode, in_upgrade)
            async with p.connect(where):
                n = 0
                while p.rekeys < 2 or p.rx.epoch < 4:
                    p.ratchet()  # our own tier-1 step with every frame
                    await echo(p, b"order-%d" % n)
                    n += 1
                assert p.tx.epoch >= n - 1  # a step with every frame but the first
                await p.close()
            assert venue.got == [b"order-%d" % i for i in range(n)]
