"""The handshake loop both roles share (``_driver.py``), over in-memory transports."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import trio_session as ts
from trio_session._driver import run_handshake
from trio_session._transport import memory_transport_pair
from trio_session.protocol import (
    ClientConnection,
    HandshakeComplete,
    HelloReceived,
    MessagesReceived,
    VenueConnection,
)

from .runtime_helpers import PARTICIPANT, VENUE

CONFIG = ts.SessionConfig()


def _conns() -> tuple[ClientConnection, VenueConnection]:
    return (
        ClientConnection(PARTICIPANT, VENUE.public_key, CONFIG, clock=trio.current_time),
        VenueConnection(VENUE, CONFIG, clock=trio.current_time),
    )


async def test_both_roles_complete_a_fresh_handshake_and_confirm_it_at_once() -> None:
    tp, tv = memory_transport_pair()
    p_conn, v_conn = _conns()
    admitted: list[str] = []
    hellos: list[HelloReceived] = []
    done: dict[str, HandshakeComplete] = {}

    def on_hello(hello: HelloReceived) -> None:
        hellos.append(hello)
        v_conn.accept(PARTICIPANT.public_key)

    async def venue() -> None:
        done["venue"] = await run_handshake(
            tv, v_conn, admit=lambda: admitted.append(tv.remote_address), on_hello=on_hello
        )

    async def participant() -> None:
        done["participant"] = await run_handshake(tp, p_conn)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(venue)
            nursery.start_soon(participant)
        assert admitted == [tv.remote_address]  # once, for the first frame only
        assert [(h.key_id, h.resume_session_id) for h in hellos] == [(PARTICIPANT.key_id, None)]
        p_done, v_done = done["participant"], done["venue"]
        assert p_done.session_id == v_done.session_id
        assert not p_done.resumed and not v_done.resumed
        # Each side flushed its confirmation before returning: ClientFinish went
        # first (the venue completed on it), and the venue's first authenticated
        # frame is already waiting for the participant.
        assert not p_conn.authenticated
        p_conn.receive_data(await tp.receive())
        assert p_conn.authenticated


async def test_a_refusal_before_parsing_leaves_the_hello_unread() -> None:
    tp, tv = memory_transport_pair()
    p_conn, v_conn = _conns()
    for frame in p_conn.data_to_send():
        await tp.send(frame)

    def admit() -> None:
        raise ts.RateLimited("slow down", retry_after=3.0, remote=False)

    def on_hello(hello: HelloReceived) -> None:
        pytest.fail("a refused peer's hello is not parsed")

    with trio.fail_after(5), pytest.raises(ts.RateLimited) as info:
        await run_handshake(tv, v_conn, admit=admit, on_hello=on_hello)
    assert info.value.retry_after == 3.0 and v_conn.hello is None


async def test_a_reject_is_raised_as_its_typed_error() -> None:
    tp, tv = memory_transport_pair()
    p_conn, v_conn = _conns()

    async def venue() -> None:
        (hello,) = v_conn.receive_data(await tv.receive())
        assert isinstance(hello, HelloReceived)
        v_conn.close(ts.CloseCode.UNKNOWN_KEY, "unknown_key")
        for frame in v_conn.data_to_send():
            await tv.send(frame)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(venue)
            with pytest.raises(ts.AuthenticationError) as info:
                await run_handshake(tp, p_conn)
    assert info.value.code is ts.CloseCode.UNKNOWN_KEY and info.value.remote


async def test_an_event_out_of_place_is_a_remote_protocol_error() -> None:
    class Confused:
        """A connection whose peer sent data before the handshake completed."""

        def data_to_send(self) -> list[bytes]:
            return []

        def receive_data(self, frame: bytes) -> list[Any]:
            return [MessagesReceived(0, [frame])]

    tp, tv = memory_transport_pair()
    await tp.send(b"early")
    with trio.fail_after(5), pytest.raises(ts.RemoteProtocolError, match="MessagesReceived"):
        await run_handshake(tv, Confused())  # type: ignore[arg-type]
