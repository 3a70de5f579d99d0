"""The public Session facade (``_session.py``): sending, receiving, rejecting, closing.

End to end over real trio-websocket sessions on loopback (ws:// and wss://);
the facade's own argument checks need no connection.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
import trio.testing

import trio_session as ts
from trio_session._control import open_session
from trio_session.protocol import Role

from ._certs import tls_contexts
from .runtime_helpers import (
    PARTICIPANT,
    VENUE,
    url,
    venue,
)

N = 10_000


async def _exchange(session: ts.Session, n: int) -> None:
    """Send n numbered messages while receiving the echoes; check order and content."""

    async def sender() -> None:
        for i in range(n):
            await session.send(b"%06d" % i + b"x" * 94)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        for i in range(n):
            got = await session.receive()
            assert got == b"%06d" % i + b"x" * 94, (i, got[:6])


async def test_10k_messages_each_way_over_ws() -> None:
    with trio.fail_after(60):
        async with venue() as server:
            async with ts.connect(url(server), PARTICIPANT, VENUE.public_key) as session:
                assert session.state is ts.State.LIVE
                await _exchange(session, N)
                stats = session.stats
                assert stats.sent == N and stats.received == N
            final_state: ts.State = session.state
            assert final_state is ts.State.CLOSED and session.error is None


async def test_10k_messages_each_way_over_wss_with_trustme() -> None:
    tls = tls_contexts()
    with trio.fail_after(60):
        async with (
            venue(ssl_context=tls.server) as server,
            ts.connect(
                url(server, "wss"), PARTICIPANT, VENUE.public_key, ssl_context=tls.client
            ) as session,
        ):
            await _exchange(session, N)


async def test_venue_handler_sees_messages_both_ways_and_batches() -> None:
    received: list[bytes] = []
    done = trio.Event()

    async def handler(session: ts.Session) -> None:
        while len(received) < 300:
            received.extend(await session.receive_batch(64))
        await session.send_many([b"r%d" % i for i in range(300)])
        done.set()
        async for _ in session:
            pass

    with trio.fail_after(20):
        async with (
            venue(handler) as server,
            ts.connect(url(server), PARTICIPANT, VENUE.public_key) as session,
        ):
            await session.send_many([b"m%d" % i for i in range(300)])
            await done.wait()
            got: list[bytes] = []
            while len(got) < 300:
                got.extend(await session.receive_batch())
    assert received == [b"m%d" % i for i in range(300)]
    assert got == [b"r%d" % i for i in range(300)]


async def test_typed_messages_and_invalid_message_is_per_message() -> None:

    class Order(msgspec.Struct, tag=True):
        qty: int

    class Fill(msgspec.Struct, tag=True):
        qty: int

    async def handler(session: ts.Session) -> None:
        async for order in session:
            await session.send(Fill(order.qty))

    with trio.fail_after(20):
        async with (
            venue(handler, messages=Order | Fill) as server,
            ts.connect(
                url(server), PARTICIPANT, VENUE.public_key, messages=Order | Fill
            ) as session,
        ):
            await session.send(Order(5))
            assert await session.receive() == Fill(5)
            with pytest.raises(TypeError):
                await session.send(b"not a struct")  # type: ignore[arg-type]


async def test_aclose_is_idempotent_and_send_after_close_raises() -> None:
    with trio.fail_after(20):
        async with (
            venue() as server,
            ts.connect(url(server), PARTICIPANT, VENUE.public_key) as session,
        ):
            await session.aclose()
            await session.aclose()
            with pytest.raises(ts.SessionClosed):
                await session.send(b"late")
            with pytest.raises(ts.SessionClosed):
                await session.receive()


async def test_per_message_reject_reaches_sender_with_seq_and_session_continues() -> None:

    class Order(msgspec.Struct, tag=True):
        qty: int

    async def handler(session: ts.Session) -> None:
        while True:
            try:
                order = await session.receive()
            except ts.InvalidMessage:
                continue  # already rejected back to the participant
            except ts.SessionClosed:
                return
            if order.qty > 10:
                session.reject(session.last_seq, "qty too large", retry_after=0.5)
            else:
                await session.send(order)

    with trio.fail_after(20):
        async with (
            venue(handler, messages=Order) as server,
            ts.connect(url(server), PARTICIPANT, VENUE.public_key) as session,
        ):
            await session.send(msgspec.msgpack.encode(Order(1)))
            await session.send(b"\xc1garbage")  # message 1: does not decode
            await session.send(msgspec.msgpack.encode(Order(99)))  # message 2: refused
            await session.send(msgspec.msgpack.encode(Order(3)))
            assert msgspec.msgpack.decode(await session.receive(), type=Order) == Order(1)
            with pytest.raises(ts.MessageRejected) as bad:
                await session.receive()
            assert bad.value.ref_seq == 1 and bad.value.reason_code is ts.RejectCode.INVALID
            with pytest.raises(ts.MessageRejected) as refused:
                await session.receive()
            assert refused.value.ref_seq == 2
            assert refused.value.reason_code is ts.RejectCode.REJECTED
            assert refused.value.retry_after == 0.5 and "qty too large" in str(refused.value)
            assert msgspec.msgpack.decode(await session.receive(), type=Order) == Order(3)
            assert session.state is ts.State.LIVE


async def test_reject_never_overtakes_replies_queued_before_it() -> None:
    # The participant grants credit for 2 messages, so the venue's replies to
    # message 0 are still queued (one in the outbound channel, one blocked on it)
    # when it rejects message 1: the participant must see the replies first,
    # then the rejection, in call order.
    p_cfg = ts.SessionConfig(inbound_capacity=2)
    v_cfg = ts.SessionConfig(outbound_capacity=1)
    rejected = trio.Event()

    async def handler(session: ts.Session) -> None:
        await session.receive()
        await session.send_many([b"r0", b"r1"])  # uses up the credit
        await session.send(b"r2")  # waits in the outbound channel
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.send, b"r3")  # blocks: channel full
            await trio.testing.wait_all_tasks_blocked()
            await session.receive()
            session.reject(session.last_seq, "no")
            rejected.set()
        await session.send(b"r4")
        await trio.sleep_forever()

    with trio.fail_after(20):
        async with (
            venue(handler, config=v_cfg) as server,
            ts.connect(url(server), PARTICIPANT, VENUE.public_key, config=p_cfg) as session,
        ):
            await session.send(b"m0")
            await session.send(b"m1")
            await rejected.wait()  # read nothing before: r2 and r3 cannot leave
            got = [await session.receive() for _ in range(4)]
            assert got == [b"r0", b"r1", b"r2", b"r3"]
            with pytest.raises(ts.MessageRejected) as info:
                await session.receive()
            assert info.value.ref_seq == 1
            assert await session.receive() == b"r4"


# -- the facade alone --------------------------------------------------------------------------


def _session(**config: Any) -> ts.Session:
    control = open_session(Role.PARTICIPANT, ts.SessionConfig(**config), None, "alice")
    return control.session


def test_sessions_come_only_from_connect_or_serve() -> None:
    session = _session()
    with pytest.raises(TypeError, match=r"created by trio_session\.connect\(\) or serve\(\)"):
        ts.Session(session._core)
    assert repr(session) == "<Session - participant connecting>"
    assert session.session_id is None and session.last_seq == -1
    assert (session.key_id, session.role.value) == ("alice", "participant")


async def test_arguments_are_checked_before_anything_is_queued() -> None:
    session = _session(max_message_size=10)
    with pytest.raises(ValueError, match="at least one State"):
        await session.wait_state()
    with pytest.raises(ValueError, match="max_messages must be >= 1"):
        await session.receive_batch(0)
    with pytest.raises(TypeError, match="sends bytes, not str"):
        await session.send("text")
    with pytest.raises(ts.LocalProtocolError, match="exceeds max_message_size 10"):
        session.send_lossy(b"x" * 11)
    with pytest.raises(ts.LocalProtocolError):
        await session.send_many([b"ok", b"x" * 11])
    await session.send_many([])
    with pytest.raises(ts.ConnectionLost, match="session is connecting, not sending"):
        await session.send(b"x", fail_fast=True)
    assert session.stats.outbound_depth == 0
    await session.send(bytearray(b"ok"))  # bytes-like is accepted
    assert session.stats.outbound_depth == 1
