"""The Trio runtime over real trio-websocket sessions on loopback (ws:// and wss://)."""

from __future__ import annotations

import gc
import logging

import pytest
import trio
import trio.testing

import trio_session as ts

from ._certs import tls_contexts
from .runtime_helpers import (
    OTHER,
    PARTICIPANT,
    VENUE,
    echo_handler,
    open_fds,
    registry,
    task_names,
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


async def test_participant_cancel_mid_stream_tears_everything_down() -> None:
    venue_sessions: list[ts.Session] = []

    async def handler(session: ts.Session) -> None:
        venue_sessions.append(session)
        async for message in session:
            await session.send(message)

    fds_before = open_fds()
    baseline = task_names()
    close_deadline = ts.SessionConfig().close_timeout
    with trio.fail_after(20):
        async with venue(handler) as server:
            with trio.CancelScope() as scope:
                async with ts.connect(url(server), PARTICIPANT, VENUE.public_key) as session:
                    for i in range(200):
                        await session.send(b"%d" % i)
                    await session.receive()
                    cancelled_at = trio.current_time()
                    scope.cancel()  # cancelled mid-stream: an abrupt loss, not a logout
            assert scope.cancelled_caught
            assert trio.current_time() - cancelled_at <= close_deadline
            assert session.state is ts.State.CLOSED
            (vs,) = venue_sessions
            # The venue notices the drop at once and keeps the session for resume.
            with trio.fail_after(close_deadline):
                await vs.wait_state(ts.State.STALE)
            await trio.testing.wait_all_tasks_blocked()
            names = task_names()
            for part in ("_reader", "_writer", "_heartbeat", "_rotation", "reader_task"):
                assert not any(part in n for n in names), (part, names)
    await trio.testing.wait_all_tasks_blocked()
    assert [n for n in task_names() if n not in baseline] == []
    gc.collect()
    assert open_fds() <= fds_before + 1


async def test_handler_that_raises_ends_only_its_session(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def handler(session: ts.Session) -> None:
        nonlocal calls
        calls += 1
        first = await session.receive()
        if first == b"boom":
            raise RuntimeError("handler bug")
        await session.send(b"ok:" + first)
        async for _ in session:
            pass

    with trio.fail_after(20):
        async with venue(handler) as server:
            async with ts.connect(
                url(server), PARTICIPANT, VENUE.public_key, restart=ts.RestartPolicy(enabled=False)
            ) as bad:
                await bad.send(b"boom")
                with pytest.raises(ts.SessionError) as info:
                    await bad.receive()
                assert info.value.code is ts.CloseCode.HANDLER_ERROR
                assert info.value.remote
            async with ts.connect(url(server), PARTICIPANT, VENUE.public_key) as good:
                await good.send(b"hello")
                assert await good.receive() == b"ok:hello"
    assert calls == 2
    assert any(
        "handler failed" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR
    )


@pytest.mark.parametrize(
    ("who", "reg_change", "expected_code"),
    [
        ("unknown", None, ts.CloseCode.UNKNOWN_KEY),
        ("revoked", "revoke", ts.CloseCode.KEY_REVOKED),
    ],
)
async def test_unknown_and_revoked_keys_are_refused_and_server_keeps_serving(
    who: str, reg_change: str | None, expected_code: ts.CloseCode
) -> None:
    reg = registry()
    reg.add(OTHER.key_id, OTHER.public_key)
    if reg_change == "revoke":
        reg.revoke(OTHER.key_id)
    ident = ts.Identity.generate() if who == "unknown" else OTHER
    with trio.fail_after(20):
        async with venue(reg=reg) as server:
            with pytest.raises(ts.AuthenticationError) as info:
                async with ts.connect(url(server), ident, VENUE.public_key):
                    pytest.fail("connected with a refused key")
            assert info.value.code is expected_code and info.value.remote
            async with ts.connect(url(server), PARTICIPANT, VENUE.public_key) as session:
                await session.send(b"still serving")
                assert await session.receive() == b"still serving"


async def test_wrong_venue_key_fails_on_participant_and_server_keeps_serving() -> None:
    with trio.fail_after(20):
        async with venue() as server:
            with pytest.raises(ts.AuthenticationError) as info:
                async with ts.connect(url(server), PARTICIPANT, OTHER.public_key):
                    pytest.fail("authenticated a venue with the wrong key")
            assert info.value.code is ts.CloseCode.AUTH_FAILED and info.value.remote  # venue failed
            async with ts.connect(url(server), PARTICIPANT, VENUE.public_key) as session:
                await session.send(b"x")
                assert await session.receive() == b"x"


async def test_tampered_handshake_is_refused_on_both_sides() -> None:
    # The participant presents a key_id registered to someone else (identity misbinding):
    # the venue's signature check of M3 fails and it sends REJECT after ServerHello.
    reg = registry()
    reg.add("mallory", OTHER.public_key)
    impostor = ts.Identity.from_seed(bytes(range(32, 64)), key_id="mallory")
    with trio.fail_after(20):
        async with venue(reg=reg) as server:
            with pytest.raises(ts.AuthenticationError) as info:
                async with ts.connect(url(server), impostor, VENUE.public_key):
                    pytest.fail("impostor authenticated")
            assert info.value.code is ts.CloseCode.AUTH_FAILED and info.value.remote
            async with ts.connect(url(server), PARTICIPANT, VENUE.public_key) as session:
                await session.send(b"y")
                assert await session.receive() == b"y"


async def test_revoking_a_key_ends_its_live_sessions() -> None:
    reg = registry()
    with trio.fail_after(20):
        async with (
            venue(reg=reg) as server,
            ts.connect(url(server), PARTICIPANT, VENUE.public_key) as session,
        ):
            await session.send(b"a")
            assert await session.receive() == b"a"
            reg.revoke(PARTICIPANT.key_id)
            with pytest.raises(ts.AuthenticationError) as info:
                await session.receive()
            assert info.value.code is ts.CloseCode.KEY_REVOKED
            assert session.state is ts.State.CLOSED


async def test_handshake_rate_limit_per_key() -> None:
    cfg = ts.SessionConfig(handshake_rate_per_key=2.0)
    with trio.fail_after(20):
        async with venue(config=cfg) as server:
            outcomes: list[str] = []
            for _ in range(4):
                try:
                    async with ts.connect(
                        url(server), PARTICIPANT, VENUE.public_key, config=cfg
                    ) as session:
                        outcomes.append("ok")
                        del session
                except ts.RateLimited as exc:
                    assert exc.retry_after > 0
                    outcomes.append("limited")
            assert outcomes[:2] == ["ok", "ok"] and "limited" in outcomes[2:]


async def test_typed_messages_and_invalid_message_is_per_message() -> None:
    import msgspec

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
                await session.send(b"not a struct")


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


async def test_connection_refused_is_typed() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    with trio.fail_after(10), pytest.raises(ts.ConnectionLost):
        async with ts.connect(f"ws://127.0.0.1:{port}/", PARTICIPANT, VENUE.public_key):
            pytest.fail("connected to nothing")


async def test_graceful_logout_reaches_handler_as_end_of_iteration() -> None:
    ended = trio.Event()
    seen: list[bytes] = []
    logouts: list[str | None] = []

    async def handler(session: ts.Session) -> None:
        async for m in session:
            seen.append(m)
        ended.set()

    with trio.fail_after(20):
        async with venue(handler, on_logout=lambda s: logouts.append(s.session_id)) as server:
            async with ts.connect(url(server), PARTICIPANT, VENUE.public_key) as session:
                for i in range(50):
                    await session.send(b"%d" % i)
                sid = session.session_id
            await ended.wait()
            await trio.testing.wait_all_tasks_blocked()
    # aclose flushed everything before CLOSE: nothing lost on a graceful logout.
    assert seen == [b"%d" % i for i in range(50)]
    assert logouts == [sid]


del echo_handler


async def test_per_message_reject_reaches_sender_with_seq_and_session_continues() -> None:
    import msgspec

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
