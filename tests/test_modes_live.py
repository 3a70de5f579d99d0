"""The default mode rule end to end, over real sockets (docs/protocol.md, "Mode negotiation").

A participant on ``ws://`` offers only "aead"; one on ``wss://`` offers "mac" first; a
venue without TLS picks "aead" whenever offered, one with TLS follows the participant;
a configured list restricts either end, and no common mode is a fatal VERSION_MISMATCH
that names both lists.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio

import trio_session as ts

from ._certs import tls_contexts
from .runtime_helpers import NO_RESTART, PARTICIPANT, VENUE, registry, url

DEADLINE = 10.0


@asynccontextmanager
async def venue(
    modes: tuple[str, ...] | None = None, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[ts.VenueServer, list[ts.Session]]]:
    seen: list[ts.Session] = []

    async def handler(session: ts.Session) -> None:
        seen.append(session)
        async for message in session:
            await session.send(message)

    cfg = ts.SessionConfig(modes=modes, handshake_timeout=2.0, close_timeout=0.5)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(
                ts.serve,
                handler,
                VENUE,
                registry(),
                "127.0.0.1",
                0,
                config=cfg,
                ssl_context=ssl_context,
            )
        )
        yield server, seen
        nursery.cancel_scope.cancel()


async def _mode_of_a_session(server: ts.VenueServer, seen: list[ts.Session], **kw: Any) -> str:
    scheme = "wss" if "ssl_context" in kw else "ws"
    async with ts.connect(url(server, scheme), PARTICIPANT, VENUE.public_key, **kw) as s:
        await s.send(b"ping")
        assert await s.receive() == b"ping"
        mode = s.mode
        assert isinstance(mode, str) and seen[-1].mode == mode  # both ends agree
        return mode


async def test_ws_defaults_to_aead_and_wss_to_mac() -> None:
    tls = tls_contexts()
    with trio.fail_after(DEADLINE):
        async with venue() as (plain, seen):
            assert await _mode_of_a_session(plain, seen) == "aead"
            # What a wss:// participant offers, reaching a venue behind a TLS proxy:
            both = ts.SessionConfig(modes=("mac", "aead"))
            assert await _mode_of_a_session(plain, seen, config=both) == "aead"
            mac_only = ts.SessionConfig(modes=("mac",))
            assert await _mode_of_a_session(plain, seen, config=mac_only) == "mac"
        async with venue(ssl_context=tls.server) as (secure, seen):
            assert await _mode_of_a_session(secure, seen, ssl_context=tls.client) == "mac"
            aead_first = ts.SessionConfig(modes=("aead", "mac"))
            mode = await _mode_of_a_session(secure, seen, ssl_context=tls.client, config=aead_first)
            assert mode == "aead"  # with TLS the venue follows the participant's order


@pytest.mark.parametrize(
    ("venue_modes", "participant_modes", "offered", "accepted"),
    [
        (("aead",), ("mac",), "['mac']", "['aead']"),  # a venue that requires encryption
        (("mac",), None, "['aead']", "['mac']"),  # a ws:// participant refuses cleartext
    ],
)
async def test_no_common_mode_is_fatal_and_says_why(
    venue_modes: tuple[str, ...],
    participant_modes: tuple[str, ...] | None,
    offered: str,
    accepted: str,
) -> None:
    with trio.fail_after(DEADLINE):
        async with venue(venue_modes) as (server, seen):
            cfg = ts.SessionConfig(modes=participant_modes)
            with pytest.raises(ts.AuthenticationError) as info:
                async with ts.connect(
                    url(server), PARTICIPANT, VENUE.public_key, config=cfg, restart=NO_RESTART
                ):
                    pytest.fail("connected without a common mode")  # pragma: no cover
            assert info.value.code is ts.CloseCode.VERSION_MISMATCH
            assert offered in str(info.value) and accepted in str(info.value)
            assert seen == []
