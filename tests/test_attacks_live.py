"""The attack catalogue of docs/security.md, live: real sockets against a real ``ts.serve``.

tests/protocol/test_attacks.py proves each defence on the sans-IO state machines.  Here
the same attacks run over loopback TCP + WebSocket against a venue started with
``ts.serve``, driven by a *raw participant*: a plain trio-websocket connection on which
the test drives a :class:`ClientConnection` by hand (M1, M2, M3, the venue's
confirmation), so it can capture, replay, reorder, modify and inject frames.

Every attack test checks three things:

* the venue's observable reaction: a REJECT with the documented code before keys exist,
  an authenticated CLOSE where the venue detected the problem itself, or, after an
  invalid frame from the peer, the connection simply being closed (protocol.md, "Close":
  the reference does not answer an invalid frame with CLOSE).  The code the venue's
  state machine recorded is read in process (:class:`VenueProbe`);
* that the venue handler never received the forged or replayed data (:class:`Recorder`);
* that the venue still serves a normal ``ts.connect`` participant afterwards.

Every test runs in both frame protection modes: the autouse ``mode`` fixture sets the
mode of the venue, of the raw participant and of the participant that checks the
venue still serves (:func:`mode_config`).

docs/security.md links each attack to its test here and in tests/protocol/test_attacks.py;
:func:`test_security_doc_names_existing_tests` keeps those links honest.
"""

from __future__ import annotations

import ast
import copy
import os
import re
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio_websocket

import trio_session as ts
from trio_session import _server
from trio_session.protocol import (
    ClientConnection,
    CloseReceived,
    Event,
    HandshakeComplete,
    MessagesReceived,
    SessionState,
    VenueConnection,
)
from trio_session.protocol._crypto import kx_keypair
from trio_session.protocol._wire import (
    HEADER_LEN,
    MODES,
    ClientHello,
    Data,
    FrameType,
    Reject,
    decode_body,
    encode_body,
    pack_header,
    parse_header,
)

from . import forge
from .runtime_helpers import OTHER, PARTICIPANT, VENUE, url

HOST = "127.0.0.1"
#: OTHER's Ed25519 seed (tests/protocol/helpers.py), to build an impostor identity.
OTHER_SEED = bytes(range(64, 96))
#: Venue settings shared by most tests: short timers keep the file fast.
BASE = {"handshake_timeout": 0.5, "close_timeout": 0.5}
#: Every test's overall deadline.
DEADLINE = 10.0
ROOT = Path(__file__).resolve().parent.parent
#: The frame protection mode of the running test, set by the ``mode`` fixture.
MODE = {"current": MODES[0]}


@pytest.fixture(params=MODES, autouse=True)
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test in each mode (one test at a time per process, so a module value will do)."""
    MODE["current"] = request.param
    yield request.param
    MODE["current"] = MODES[0]


def mode_config(**kwargs: Any) -> ts.SessionConfig:
    """Settings in the running test's mode (the venue accepts only it, participants offer
    only it, so a test can never pass in the other mode by accident), unless ``modes`` is
    given."""
    return ts.SessionConfig(**{"modes": (MODE["current"],), **kwargs})


# -- what the venue did -----------------------------------------------------------------


class Recorder:
    """An echo handler that records every message the venue application received."""

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []  # (hex session id, message)
        self.sessions: list[ts.Session] = []

    async def handler(self, session: ts.Session) -> None:
        self.sessions.append(session)
        async for message in session:
            self.got.append((session.session_id or "", message))
            await session.send(message)

    def messages(self, session_id: bytes | None) -> list[bytes]:
        assert session_id is not None
        return [m for sid, m in self.got if sid == session_id.hex()]

    def everything(self) -> list[bytes]:
        return [m for _, m in self.got]


class VenueProbe:
    """Records the venue's connection state machines, and counts the expensive step.

    ``accept()`` is where the venue signs M2 and runs its X25519 (and, for a resume,
    checks binders): the work an unauthenticated client must not get for free.
    """

    def __init__(self) -> None:
        self.conns: list[VenueConnection] = []
        self.accepts = 0
        self.accept_cpu = 0.0

    def error_codes(self, session_id: bytes | None) -> list[ts.CloseCode]:
        """Codes of the errors the venue's state machine recorded on that session's connections."""
        assert session_id is not None
        return [
            c.error.code for c in self.conns if c.session_id == session_id and c.error is not None
        ]


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> VenueProbe:
    recorded = VenueProbe()

    class RecordingVenueConnection(VenueConnection):
        def __init__(self, identity: ts.Identity, config: ts.SessionConfig, **kw: Any) -> None:
            super().__init__(identity, config, **kw)
            recorded.conns.append(self)

        def accept(self, peer_public_key: bytes, session: SessionState | None = None) -> None:
            recorded.accepts += 1
            start = time.process_time()
            try:
                super().accept(peer_public_key, session)
            finally:
                recorded.accept_cpu += time.process_time() - start

    monkeypatch.setattr(_server, "VenueConnection", RecordingVenueConnection)
    return recorded


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def make_registry(*identities: ts.Identity) -> ts.KeyRegistry:
    reg = ts.KeyRegistry()
    for ident in (PARTICIPANT, OTHER, *identities):
        reg.add(ident.key_id, ident.public_key)
    return reg


@asynccontextmanager
async def live_venue(
    handler: Callable[[ts.Session], Awaitable[None]],
    *,
    reg: ts.KeyRegistry | None = None,
    identity: ts.Identity = VENUE,
    **config: Any,
) -> AsyncIterator[ts.VenueServer]:
    """A ``ts.serve`` venue on loopback for the duration of the block."""
    cfg = mode_config(**{**BASE, **config})
    body_exc: BaseException | None = None
    async with trio.open_nursery() as nursery:
        server: ts.VenueServer = await nursery.start(
            partial(ts.serve, handler, identity, reg or make_registry(), HOST, 0, config=cfg)
        )
        try:
            yield server
        except BaseException as exc:  # re-raised outside the nursery: never a group
            body_exc = exc
        nursery.cancel_scope.cancel()
    if body_exc is not None:
        raise body_exc


async def assert_serves(
    server: ts.VenueServer, identity: ts.Identity = PARTICIPANT, **config: Any
) -> None:
    """A normal supervised participant connects, gets an echo, and logs out."""
    with trio.fail_after(5):
        async with ts.connect(
            url(server), identity, VENUE.public_key, config=mode_config(**config)
        ) as session:
            await session.send(b"probe-after-attack")
            assert await session.receive() == b"probe-after-attack"


# -- the raw participant ----------------------------------------------------------------


@asynccontextmanager
async def raw_ws(
    server: ts.VenueServer, *, queue: int = 256
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A plain trio-websocket client connection; the TCP stream is always closed on exit."""
    stream = await trio.open_tcp_stream(HOST, server.port)
    body_exc: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(
                nursery,
                stream,
                f"{HOST}:{server.port}",
                "/",
                message_queue_size=queue,
                max_message_size=2**24,
            )
            try:
                yield ws
            except BaseException as exc:  # re-raised outside the nursery: never a group
                body_exc = exc
            nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)
    if body_exc is not None:
        raise body_exc


@attrs.define
class Outcome:
    """How a connection ended, as the raw participant saw it."""

    events: list[Event]
    ws_code: int | None
    frames_after: int

    @property
    def closes(self) -> list[CloseReceived]:
        return [e for e in self.events if isinstance(e, CloseReceived)]

    @property
    def delivered(self) -> list[bytes]:
        return [p for e in self.events if isinstance(e, MessagesReceived) for p in e.payloads]


class Raw:
    """A participant driven frame by frame: every frame sent and received is captured."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, conn: ClientConnection) -> None:
        self.ws = ws
        self.conn = conn
        self.sent: list[bytes] = []
        self.received: list[bytes] = []
        self.done: HandshakeComplete | None = None
        #: Frames the state machine produced that were not sent yet.
        self.unsent: list[bytes] = []

    @property
    def m1(self) -> bytes:
        """The ClientHello the state machine built (taken from its output, kept unsent)."""
        if not self.unsent and not self.sent:
            self.unsent = self.conn.data_to_send()
        return (self.sent or self.unsent)[0]

    @property
    def session_id(self) -> bytes | None:
        return self.conn.session_id

    async def send(self, frame: bytes) -> None:
        self.sent.append(frame)
        await self.ws.send_message(frame)

    async def recv(self) -> bytes:
        frame = await self.ws.get_message()
        assert isinstance(frame, bytes)
        self.received.append(frame)
        return frame

    async def recv_events(self) -> list[Event]:
        return self.conn.receive_data(await self.recv())

    async def flush(self) -> None:
        """Send whatever the state machine owes (M1, M3, retransmissions, control)."""
        frames, self.unsent = self.unsent + self.conn.data_to_send(), []
        for frame in frames:
            await self.send(frame)

    async def handshake(self) -> HandshakeComplete:
        await self.flush()  # M1
        (done,) = await self.recv_events()  # M2
        assert isinstance(done, HandshakeComplete), done
        self.done = done
        await self.flush()  # M3 (+ retransmissions)
        # The venue confirms at once with an authenticated frame (protocol.md step 16).
        events = await self.recv_events()
        assert not any(isinstance(e, CloseReceived) for e in events), events
        assert self.conn.authenticated
        return done

    async def send_data(self, *msgs: bytes) -> bytes:
        frame = self.conn.send_data(list(msgs))
        await self.send(frame)
        return frame

    async def expect_echo(self, *msgs: bytes) -> None:
        got: list[bytes] = []
        while len(got) < len(msgs):
            for ev in await self.recv_events():
                if isinstance(ev, MessagesReceived):
                    got.extend(ev.payloads)
        assert got == list(msgs)

    async def outcome(self) -> Outcome:
        """Read until the venue closes the connection; decode what arrives."""
        events: list[Event] = []
        failed = False
        frames = 0
        while True:
            try:
                frame = await self.recv()
            except trio_websocket.ConnectionClosed as exc:
                return Outcome(events, exc.reason.code if exc.reason else None, frames)
            frames += 1
            if not failed:
                try:
                    events += self.conn.receive_data(frame)
                except ts.SessionError:
                    failed = True


@asynccontextmanager
async def raw_participant(
    server: ts.VenueServer,
    identity: ts.Identity = PARTICIPANT,
    *,
    resume: SessionState | None = None,
    handshake: bool = True,
    config: ts.SessionConfig | None = None,
) -> AsyncIterator[Raw]:
    conn = ClientConnection(
        identity,
        VENUE.public_key,
        config or mode_config(),
        resume=resume,
        clock=trio.current_time,
    )
    async with raw_ws(server) as ws:
        raw = Raw(ws, conn)
        if handshake:
            await raw.handshake()
            assert conn.mode == MODE["current"]
        yield raw


async def expect_dropped(raw: Raw) -> Outcome:
    """The venue drops the connection after an invalid frame, without a CLOSE of its own."""
    out = await raw.outcome()
    assert out.closes == [], f"venue answered an invalid frame with {out.closes}"
    return out


def parse_reject(frame: bytes) -> Reject:
    """Decode a REJECT by hand: header all zero, msgpack body, no trailer."""
    frame_type, flags, epoch, seq = parse_header(frame)
    assert (frame_type, flags, epoch, seq) == (FrameType.REJECT, 0, 0, 0), frame[:HEADER_LEN]
    return decode_body(FrameType.REJECT, frame[HEADER_LEN:], Reject)


async def expect_reject(ws: trio_websocket.WebSocketConnection, code: ts.CloseCode) -> Reject:
    """The next frame is a REJECT with ``code``, and then the venue closes the connection."""
    try:
        frame = await ws.get_message()
    except trio_websocket.ConnectionClosed as exc:
        pytest.fail(f"expected REJECT({code.name}); the venue closed silently ({exc.reason})")
    assert isinstance(frame, bytes)
    reject = parse_reject(frame)
    assert ts.CloseCode.from_wire(reject.code) is code, reject
    with pytest.raises(trio_websocket.ConnectionClosed):
        await ws.get_message()
    return reject


def client_hello(
    identity: ts.Identity = PARTICIPANT,
    *,
    ver: list[int] | None = None,
    modes: list[str] | None = None,
) -> bytes:
    """A hand-built M1 (new session), for offers the real participant never makes."""
    hello = ClientHello(
        ver=[1] if ver is None else ver,
        modes=[MODE["current"]] if modes is None else modes,
        key_id=identity.key_id,
        p_nonce=os.urandom(32),
        e_p=kx_keypair(os.urandom(32))[0],
        window=64,
    )
    return pack_header(FrameType.CLIENT_HELLO, 0, 0, 0) + encode_body(hello)


# -- replay, reorder, injection, modification, reflection -------------------------------


async def test_replay_same_connection(probe: VenueProbe, recorder: Recorder) -> None:
    with trio.fail_after(DEADLINE):
        async with live_venue(recorder.handler) as server:
            async with raw_participant(server) as raw:
                captured = await raw.send_data(b"buy 100")
                await raw.expect_echo(b"buy 100")
                await raw.send(captured)  # the attacker replays the captured frame
                await expect_dropped(raw)
            assert probe.error_codes(raw.session_id) == [ts.CloseCode.SEQUENCE_ERROR]
            await assert_serves(server)
            assert recorder.messages(raw.session_id) == [b"buy 100"]  # exactly once


async def test_replay_into_another_session(probe: VenueProbe, recorder: Recorder) -> None:
    with trio.fail_after(DEADLINE):
        async with live_venue(recorder.handler) as server:
            # Another session: same participant, same seq and epoch, different keys and id.
            async with raw_participant(server) as a, raw_participant(server) as b:
                captured = await a.send_data(b"buy 100")
                await a.expect_echo(b"buy 100")
                await b.send(captured)
                await expect_dropped(b)
            assert probe.error_codes(b.session_id) == [ts.CloseCode.INTEGRITY_FAILURE]
            assert recorder.messages(a.session_id) == [b"buy 100"]
            assert recorder.messages(b.session_id) == []

            # Another connection of the same session: a control frame captured on the
            # old connection (control seq 0) injected into the resumed one, where
            # control seq 0 is exactly what the venue expects next.
            async with raw_participant(server) as old:
                await old.send_data(b"sell 5")
                await old.expect_echo(b"sell 5")
                old.conn.request_rekey()
                (captured_ctrl,) = old.conn.data_to_send()
                await old.send(captured_ctrl)
            assert old.conn.session is not None
            async with raw_participant(server, resume=old.conn.session) as new:
                assert new.done is not None and new.done.resumed
                await new.send(captured_ctrl)
                await expect_dropped(new)
            assert probe.error_codes(old.session_id)[-1] is ts.CloseCode.INTEGRITY_FAILURE
            await assert_serves(server)
            assert recorder.messages(old.session_id) == [b"sell 5"]


async def test_reorder(probe: VenueProbe, recorder: Recorder) -> None:
    with trio.fail_after(DEADLINE):
        async with live_venue(recorder.handler) as server:
            async with raw_participant(server) as raw:
                first = raw.conn.send_data([b"order 1"])
                second = raw.conn.send_data([b"order 2"])
                await raw.send(second)  # delivered out of order
                await raw.send(first)
                await expect_dropped(raw)
            assert probe.error_codes(raw.session_id) == [ts.CloseCode.SEQUENCE_ERROR]
            await assert_serves(server)
            assert recorder.messages(raw.session_id) == []


async def test_injection_wrong_tag(probe: VenueProbe, recorder: Recorder) -> None:
    with trio.fail_after(DEADLINE):
        async with live_venue(recorder.handler) as server:
            async with raw_participant(server) as raw:
                await raw.send_data(b"buy 100")
                await raw.expect_echo(b"buy 100")
                assert raw.conn.session is not None
                # A well-formed DATA frame with the right seq and epoch, but the attacker
                # has no key: the tag is a guess.
                body = encode_body(Data(raw.conn.session.next_rx_seq, 4096, [b"buy 999"]))
                forged = pack_header(FrameType.DATA, 0, 0, 1) + body + os.urandom(16)
                await raw.send(forged)
                await expect_dropped(raw)
            assert probe.error_codes(raw.session_id) == [ts.CloseCode.INTEGRITY_FAILURE]
            await assert_serves(server)
            assert recorder.messages(raw.session_id) == [b"buy 100"]
            assert b"buy 999" not in recorder.everything()


async def test_modification_of_frame_body(probe: VenueProbe, recorder: Recorder) -> None:
    with trio.fail_after(DEADLINE):
        async with live_venue(recorder.handler) as server:
            async with raw_participant(server) as raw:
                genuine = raw.conn.send_data([b"buy 100"])
                modified = forge.change_body_tail(genuine, b"100", b"999")
                assert modified != genuine and len(modified) == len(genuine)
                await raw.send(modified)  # the genuine frame never arrives
                await expect_dropped(raw)
            assert probe.error_codes(raw.session_id) == [ts.CloseCode.INTEGRITY_FAILURE]
            await assert_serves(server)
            assert recorder.messages(raw.session_id) == []
            assert b"buy 999" not in recorder.everything()


async def test_reflection_of_venue_frames(probe: VenueProbe, recorder: Recorder) -> None:
    with trio.fail_after(DEADLINE):
        async with live_venue(recorder.handler) as server:
            async with raw_participant(server) as raw:
                # raw.received[1] is the venue's confirmation ACK: v2c control seq 0,
                # epoch 0, the very seq and epoch the venue expects next from us.
                confirmation = raw.received[1]
                assert confirmation[0] == FrameType.ACK
                await raw.send_data(b"buy 100")
                await raw.expect_echo(b"buy 100")
                await raw.send(confirmation)  # echoed back to its sender
                await expect_dropped(raw)
            assert probe.error_codes(raw.session_id) == [ts.CloseCode.INTEGRITY_FAILURE]
            await assert_serves(server)
            assert recorder.messages(raw.session_id) == [b"buy 100"]


# -- handshake attacks --------------------------------------------------------------------


async def test_downgrade_in_client_hello(probe: VenueProbe, recorder: Recorder) -> None:
    with trio.fail_after(DEADLINE):
        async with live_venue(recorder.handler) as server:
            for ver, modes in (([0], ["mac"]), ([1], ["none"]), ([2], ["aead"])):
                async with raw_ws(server) as ws:
                    await ws.send_message(client_hello(ver=ver, modes=modes))
                    await expect_reject(ws, ts.CloseCode.VERSION_MISMATCH)
            assert probe.accepts == 0  # refused before any public-key operation
            await assert_serves(server)
            assert recorder.everything() == [b"probe-after-attack"]


async def test_tampered_client_hello_breaks_transcript(
    probe: VenueProbe, recorder: Recorder
) -> None:
    """An on-path attacker edits the genuine participant's offer (version and mode lists):
    the venue signs the edited M1, so the participant's transcript no longer matches."""
    with trio.fail_after(DEADLINE):
        async with live_venue(recorder.handler) as server:
            sessions_before = len(server.sessions)
            async with raw_participant(server, handshake=False) as raw:
                genuine = raw.m1
                prefix = genuine[:HEADER_LEN]
                hello = decode_body(FrameType.CLIENT_HELLO, genuine[HEADER_LEN:], ClientHello)
                edited = prefix + encode_body(
                    ClientHello(
                        ver=[1, 0],
                        modes=[MODE["current"], "none"],
                        key_id=hello.key_id,
                        p_nonce=hello.p_nonce,
                        e_p=hello.e_p,
                        window=hello.window,
                    )
                )
                raw.unsent.clear()  # the genuine M1 is swallowed by the attacker
                await raw.send(edited)
                m2 = await raw.recv()
                assert m2[0] == FrameType.SERVER_HELLO  # the venue accepted the edited offer
                with pytest.raises(ts.AuthenticationError) as info:
                    raw.conn.receive_data(m2)
                assert info.value.code is ts.CloseCode.AUTH_FAILED
            assert probe.accepts == 1
            assert len(server.sessions) == sessions_before  # no session came of it
            await assert_serves(server)


async def test_aead_stripped_from_the_offer(probe: VenueProbe, recorder: Recorder) -> None:
    """Downgrade to read the traffic: the genuine participant offers ["aead", "mac"]; an
    on-path attacker forwards ["mac"].  A venue accepting "mac" signs the edited offer and
    the participant's signature check fails; a venue in mode "aead" only refuses it."""
    with trio.fail_after(DEADLINE):
        async with live_venue(recorder.handler, modes=("mac", "aead")) as server:
            both = ts.SessionConfig(modes=("aead", "mac"))
            async with raw_participant(server, handshake=False, config=both) as raw:
                genuine = raw.m1
                hello = decode_body(FrameType.CLIENT_HELLO, genuine[HEADER_LEN:], ClientHello)
                assert hello.modes == ["aead", "mac"]
                stripped = genuine[:HEADER_LEN] + encode_body(
                    ClientHello(
                        ver=hello.ver,
                        modes=["mac"],
                        key_id=hello.key_id,
                        p_nonce=hello.p_nonce,
                        e_p=hello.e_p,
                        window=hello.window,
                    )
                )
                raw.unsent.clear()
                await raw.send(stripped)
                m2 = await raw.recv()
                assert m2[0] == FrameType.SERVER_HELLO and b"\xa4mode\xa3mac" in m2
                with pytest.raises(ts.AuthenticationError) as info:
                    raw.conn.receive_data(m2)
                assert info.value.code is ts.CloseCode.AUTH_FAILED
                assert raw.conn.mode is None  # never opened
        async with live_venue(recorder.handler, modes=("aead",)) as strict:
            async with raw_ws(strict) as ws:
                await ws.send_message(client_hello(modes=["mac"]))
                await expect_reject(ws, ts.CloseCode.VERSION_MISMATCH)
            assert recorder.sessions == []
            await assert_serves(strict, modes=("aead",))


async def test_handshake_replay(probe: VenueProbe, recorder: Recorder) -> None:
    with trio.fail_after(DEADLINE):
        async with live_venue(recorder.handler) as server:
            async with raw_participant(server) as genuine:
                m1, m3 = genuine.sent[0], genuine.sent[1]
                m2 = genuine.received[0]
                async with raw_ws(server) as ws:
                    await ws.send_message(m1)
                    fresh_m2 = await ws.get_message()
                    assert isinstance(fresh_m2, bytes) and fresh_m2[0] == FrameType.SERVER_HELLO
                    assert fresh_m2 != m2  # fresh nonce, ephemeral and session id
                    await ws.send_message(m3)
                    await expect_reject(ws, ts.CloseCode.AUTH_FAILED)
                await genuine.send_data(b"still mine")
                await genuine.expect_echo(b"still mine")
            await assert_serves(server)
            assert recorder.messages(genuine.session_id) == [b"still mine"]
            assert len(recorder.sessions) == 2  # the genuine one and assert_serves


async def test_identity_misbinding_claimed_key_id(probe: VenueProbe, recorder: Recorder) -> None:
    """OTHER (a registered participant) claims PARTICIPANT's key_id."""
    impostor = ts.Identity.from_seed(OTHER_SEED, key_id=PARTICIPANT.key_id)
    assert impostor.public_key == OTHER.public_key
    with trio.fail_after(DEADLINE):
        async with live_venue(recorder.handler) as server:
            async with raw_participant(server, impostor, handshake=False) as raw:
                await raw.flush()
                (done,) = await raw.recv_events()
                assert isinstance(done, HandshakeComplete)
                await raw.flush()  # M3 signed with OTHER's key
                (ev,) = await raw.recv_events()
                assert isinstance(ev, CloseReceived) and ev.code is ts.CloseCode.AUTH_FAILED
                assert (await raw.outcome()).events == []
            assert recorder.sessions == []
            await assert_serves(server)


async def test_mitm_impostor_venue(recorder: Recorder) -> None:
    """A venue that does not hold the pinned key cannot complete a handshake."""
    impostor_log = Recorder()
    with trio.fail_after(DEADLINE):
        async with (
            live_venue(recorder.handler) as server,
            live_venue(impostor_log.handler, identity=OTHER) as impostor,
        ):
            with pytest.raises(ts.AuthenticationError) as info:
                async with ts.connect(
                    url(impostor), PARTICIPANT, VENUE.public_key, config=mode_config()
                ):
                    pytest.fail("connected to an impostor")  # pragma: no cover
            assert info.value.code is ts.CloseCode.AUTH_FAILED
            assert impostor_log.sessions == []
            await assert_serves(server)


async def established_session(server: ts.VenueServer) -> SessionState:
    """A session that exchanged one message (b"a1") and whose connection then
    closed: the participant state a resume starts from."""
    async with raw_participant(server) as first:
        await first.send_data(b"a1")
        await first.expect_echo(b"a1")
    state = first.conn.session
    assert state is not None
    return state


# -- resume -------------------------------------------------------------------------------


async def test_resume_captured_binder_single_use(probe: VenueProbe, recorder: Recorder) -> None:
    with trio.fail_after(DEADLINE):
        async with live_venue(recorder.handler) as server:
            state = await established_session(server)
            sid = state.session_id

            async with raw_participant(server, resume=state, handshake=False) as genuine:
                captured = genuine.m1
                # The attacker races the genuine participant with its captured M1.  The
                # binder is still current, so the venue answers M2, which the attacker
                # cannot complete (no signing key, no ephemeral secret).
                async with raw_ws(server) as ws:
                    await ws.send_message(captured)
                    m2 = await ws.get_message()
                    assert isinstance(m2, bytes) and m2[0] == FrameType.SERVER_HELLO
                    await ws.send_message(
                        pack_header(FrameType.CLIENT_FINISH, 0, 0, 0) + b"\x80" + os.urandom(80)
                    )
                    await expect_reject(ws, ts.CloseCode.AUTH_FAILED)
                # ... and the session was not affected: the genuine resume succeeds.
                done = await genuine.handshake()
                assert done.resumed and done.session_id == sid
                await genuine.send_data(b"b1")
                await genuine.expect_echo(b"b1")

                # Replayed after the genuine resume completed: the secret is spent.
                async with raw_ws(server) as ws:
                    await ws.send_message(captured)
                    await expect_reject(ws, ts.CloseCode.BINDER_REUSED)

                # The live session is left alone (protocol.md, deviation 18).
                await genuine.send_data(b"b2")
                await genuine.expect_echo(b"b2")
            await assert_serves(server)
            assert recorder.messages(sid) == [b"a1", b"b1", b"b2"]


async def test_resume_from_another_identity(probe: VenueProbe, recorder: Recorder) -> None:
    with trio.fail_after(DEADLINE):
        async with live_venue(recorder.handler) as server:
            state = await established_session(server)
            sid = state.session_id

            # 1. OTHER (registered) presents the stolen session id and resume secret
            #    under its own key id: the venue never hands a session to another key.
            async with raw_participant(server, OTHER, resume=copy.deepcopy(state)) as other:
                assert other.done is not None
                assert other.done.resume_requested and not other.done.resumed
                assert other.session_id != sid
                await other.send_data(b"o1")
                await other.expect_echo(b"o1")

            # 2. The thief claims PARTICIPANT's key id: the stolen binder verifies and the
            #    venue answers M2, but M3 needs PARTICIPANT's signature.
            impostor = ts.Identity.from_seed(OTHER_SEED, key_id=PARTICIPANT.key_id)
            async with raw_participant(
                server, impostor, resume=copy.deepcopy(state), handshake=False
            ) as thief:
                await thief.flush()
                (done,) = await thief.recv_events()
                assert isinstance(done, HandshakeComplete) and done.resumed
                await thief.flush()
                (ev,) = await thief.recv_events()
                assert isinstance(ev, CloseReceived) and ev.code is ts.CloseCode.AUTH_FAILED

            # The genuine participant still resumes its session.
            async with raw_participant(server, resume=state) as genuine:
                assert genuine.done is not None and genuine.done.resumed
                await genuine.send_data(b"a2")
                await genuine.expect_echo(b"a2")
            await assert_serves(server)
            assert recorder.messages(sid) == [b"a1", b"a2"]
            assert recorder.messages(other.session_id) == [b"o1"]


# -- key epochs ---------------------------------------------------------------------------


async def test_stale_epoch_after_tier1_switch(probe: VenueProbe, recorder: Recorder) -> None:
    with trio.fail_after(DEADLINE):
        async with live_venue(recorder.handler) as server:
            async with raw_participant(server) as raw:
                await raw.send_data(b"e0")
                await raw.expect_echo(b"e0")
                old_key = forge.current_sending_key(raw.conn)  # epoch 0, kept by the "attacker"
                raw.conn.ratchet()
                await raw.send_data(b"e1")  # epoch 1: the venue switches, deletes epoch 0
                await raw.expect_echo(b"e1")
                assert raw.conn.epochs[0] == 1
                s = raw.conn.session
                assert s is not None
                # A frame genuinely sealed under the old key, with the right next seq.
                body = forge.data_body(s.next_rx_seq, 4096, [b"stale"])
                await raw.send(
                    forge.seal_under(old_key, FrameType.DATA, body, epoch=0, seq=s.next_tx_seq)
                )
                await expect_dropped(raw)
            assert probe.error_codes(raw.session_id) == [ts.CloseCode.INTEGRITY_FAILURE]
            await assert_serves(server)
            assert recorder.messages(raw.session_id) == [b"e0", b"e1"]


# -- key ids --------------------------------------------------------------------------------


async def test_unknown_key_id_rejected_before_crypto(probe: VenueProbe, recorder: Recorder) -> None:
    stranger = ts.Identity.generate()
    with trio.fail_after(DEADLINE):
        async with live_venue(recorder.handler) as server:
            async with raw_ws(server) as ws:
                await ws.send_message(client_hello(stranger))
                await expect_reject(ws, ts.CloseCode.UNKNOWN_KEY)
            assert probe.accepts == 0
            await assert_serves(server)
            assert recorder.everything() == [b"probe-after-attack"]


async def test_revoked_key_id_rejected_before_crypto(probe: VenueProbe, recorder: Recorder) -> None:
    leaver = ts.Identity.generate()
    reg = make_registry(leaver)
    with trio.fail_after(DEADLINE):
        async with live_venue(recorder.handler, reg=reg) as server:
            async with raw_participant(server, leaver) as live:
                await live.send_data(b"before")
                await live.expect_echo(b"before")
                reg.revoke(leaver.key_id)
                # Revocation ends the live session with an authenticated CLOSE.
                out = await live.outcome()
                assert [c.code for c in out.closes] == [ts.CloseCode.KEY_REVOKED]
            assert probe.accepts == 1
            async with raw_ws(server) as ws:
                await ws.send_message(client_hello(leaver))
                await expect_reject(ws, ts.CloseCode.KEY_REVOKED)
            assert probe.accepts == 1  # the refused hello cost no public-key operation
            await assert_serves(server)
            assert recorder.messages(live.session_id) == [b"before"]


# -- sizes ----------------------------------------------------------------------------------

SMALL_FRAMES: dict[str, Any] = {
    "max_frame_size": 2**16,
    "max_message_size": 2**14,
    "max_batch_bytes": 2**14,
}


async def test_oversized_frame(probe: VenueProbe, recorder: Recorder) -> None:
    limit = SMALL_FRAMES["max_frame_size"]
    with trio.fail_after(DEADLINE):
        async with live_venue(recorder.handler, **SMALL_FRAMES) as server:
            # After the handshake: one byte over max_frame_size, refused before parsing.
            async with raw_participant(server) as raw:
                huge = pack_header(FrameType.DATA, 0, 0, 0) + b"\x93\x00\x00\x91\xc6"
                huge += bytes(limit + 1 - len(huge))
                await raw.send(huge)
                out = await expect_dropped(raw)
                assert out.delivered == []
            # A message over max_message_size inside a frame that fits, validly tagged
            # (an authenticated but hostile participant): a protocol violation.
            async with raw_participant(server) as raw2:
                s = raw2.conn.session
                assert s is not None
                body = encode_body(Data(0, 4096, [bytes(SMALL_FRAMES["max_message_size"] + 1)]))
                await raw2.send(forge.seal(raw2.conn, FrameType.DATA, body, seq=s.next_tx_seq))
                await expect_dropped(raw2)
            assert probe.error_codes(raw2.session_id) == [ts.CloseCode.PROTOCOL_ERROR]
            # Before the handshake: an oversized ClientHello never reaches the state machine.
            accepts = probe.accepts
            async with raw_ws(server) as ws:
                hello = client_hello()
                await ws.send_message(hello + bytes(limit + 1 - len(hello)))
                try:
                    frame = await ws.get_message()
                except trio_websocket.ConnectionClosed:
                    pass
                else:  # if the venue answers at all, it is REJECT(PROTOCOL_ERROR)
                    assert isinstance(frame, bytes)
                    assert parse_reject(frame).code == ts.CloseCode.PROTOCOL_ERROR
            assert probe.accepts == accepts
            await assert_serves(server)
            assert recorder.messages(raw.session_id) == []
            assert recorder.messages(raw2.session_id) == []


#: msgpack headers that declare absurd sizes in a few bytes.
BOMBS = {
    "array32": b"\xdd\xff\xff\xff\xff",
    "map32": b"\xdf\xff\xff\xff\xff",
    "str32": b"\xdb\xff\xff\xff\xff",
    "bin32 field": b"\x81\xa7p_nonce\xc6\xff\xff\xff\xff",
    "deep nesting": b"\x91" * 200_000 + b"\xc0",
}


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


async def test_msgpack_size_bomb(probe: VenueProbe, recorder: Recorder) -> None:
    peak_before = _peak_rss_bytes()
    with trio.fail_after(DEADLINE):
        async with live_venue(recorder.handler) as server:
            # Unauthenticated, in the ClientHello: decoded with strict types, fails cleanly.
            for name, bomb in BOMBS.items():
                async with raw_ws(server) as ws:
                    await ws.send_message(pack_header(FrameType.CLIENT_HELLO, 0, 0, 0) + bomb)
                    try:
                        await expect_reject(ws, ts.CloseCode.PROTOCOL_ERROR)
                    except AssertionError as exc:  # pragma: no cover - diagnostic
                        raise AssertionError(f"bomb {name!r}: {exc}") from exc
            assert probe.accepts == 0

            # After the handshake, with a garbage tag: never decoded (INTEGRITY, not PROTOCOL).
            bomb_body = b"\x93\x00\xcd\x10\x00" + BOMBS["array32"]
            async with raw_participant(server) as raw:
                forged = pack_header(FrameType.DATA, 0, 0, 0) + bomb_body + os.urandom(16)
                await raw.send(forged)
                await expect_dropped(raw)
            assert probe.error_codes(raw.session_id) == [ts.CloseCode.INTEGRITY_FAILURE]

            # After the handshake, validly tagged by a hostile participant: fails cleanly.
            async with raw_participant(server) as raw2:
                await raw2.send(forge.seal(raw2.conn, FrameType.DATA, bomb_body, seq=0))
                await expect_dropped(raw2)
            assert probe.error_codes(raw2.session_id) == [ts.CloseCode.PROTOCOL_ERROR]
            await assert_serves(server)
            assert recorder.messages(raw.session_id) == []
            assert recorder.messages(raw2.session_id) == []
    grown = _peak_rss_bytes() - peak_before
    assert grown < 64 * 2**20, f"peak RSS grew by {grown / 2**20:.1f} MiB"


# -- slowloris, flood, slow consumer ------------------------------------------------------

#: A WebSocket upgrade request that is never finished (no final blank line).
PARTIAL_UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Slow: "
    + b"a"
    * 200
)


async def _slowloris_upgrade(port: int, results: list[tuple[float, bytes]]) -> None:
    """TCP connect, then trickle the upgrade request a byte at a time, forever."""
    start = trio.current_time()
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:

        async def trickle() -> None:
            try:
                for byte in PARTIAL_UPGRADE:
                    await stream.send_all(bytes((byte,)))
                    await trio.sleep(0.02)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            got = b""
            try:
                while chunk := await stream.receive_some():
                    got += chunk
            except trio.BrokenResourceError:
                pass  # reset by the venue: also a drop
            nursery.cancel_scope.cancel()
    results.append((trio.current_time() - start, got))


async def _serves_quickly(server: ts.VenueServer, within: float) -> None:
    start = trio.current_time()
    await assert_serves(server)
    assert trio.current_time() - start < within


async def test_slowloris_http_upgrade(probe: VenueProbe, recorder: Recorder) -> None:
    timeout = BASE["handshake_timeout"]
    results: list[tuple[float, bytes]] = []
    with trio.fail_after(DEADLINE):
        async with live_venue(recorder.handler) as server:
            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(_slowloris_upgrade, server.port, results)
                await trio.sleep(0.1)
                # While 20 connections hang in the upgrade, a participant connects at once.
                await _serves_quickly(server, within=timeout)
            assert len(results) == 20
            for elapsed, got in results:
                assert got == b""  # never upgraded, never answered
                assert elapsed < timeout + 0.4, f"dropped after {elapsed:.2f}s"
            assert probe.accepts == 1  # only the normal participant's


async def _silent_after_upgrade(
    server: ts.VenueServer, results: list[tuple[float, Reject | None]], *, send_m1: bool
) -> None:
    """Finish the upgrade, then never send ClientHello (or never send ClientFinish)."""
    start = trio.current_time()
    async with raw_ws(server) as ws:
        if send_m1:
            await ws.send_message(client_hello())
            m2 = await ws.get_message()
            assert isinstance(m2, bytes) and m2[0] == FrameType.SERVER_HELLO
        reject: Reject | None = None
        try:
            while True:
                frame = await ws.get_message()
                assert isinstance(frame, bytes)
                reject = parse_reject(frame)
        except trio_websocket.ConnectionClosed:
            pass
    results.append((trio.current_time() - start, reject))


async def test_slowloris_no_client_hello(probe: VenueProbe, recorder: Recorder) -> None:
    timeout = BASE["handshake_timeout"]
    results: list[tuple[float, Reject | None]] = []
    with trio.fail_after(DEADLINE):
        async with live_venue(recorder.handler) as server:
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(
                        partial(_silent_after_upgrade, server, results, send_m1=i % 2 == 1)
                    )
                await trio.sleep(0.1)
                await _serves_quickly(server, within=timeout)
            assert len(results) == 20
            for elapsed, _ in results:
                assert elapsed < timeout + 0.4, f"dropped after {elapsed:.2f}s"
            # protocol.md, "REJECT": the venue sends REJECT instead of M2 on a handshake
            # timeout; HANDSHAKE_TIMEOUT is the documented code.
            codes = [None if r is None else ts.CloseCode.from_wire(r.code) for _, r in results]
            assert codes == [ts.CloseCode.HANDSHAKE_TIMEOUT] * 20, codes


async def test_slowloris_total_handshake_deadline(probe: VenueProbe, recorder: Recorder) -> None:
    """SessionConfig.handshake_timeout bounds connect + upgrade + handshake together
    (protocol.md, HANDSHAKE_TIMEOUT): a client that spends most of it on the upgrade
    must not get a second full timeout for its ClientHello."""
    timeout = BASE["handshake_timeout"]
    request = PARTIAL_UPGRADE.split(b"X-Slow")[0] + b"\r\n"
    with trio.fail_after(DEADLINE):
        async with live_venue(recorder.handler) as server:
            start = trio.current_time()
            async with await trio.open_tcp_stream(HOST, server.port) as stream:
                step = len(request) // 10 + 1
                for i in range(0, len(request), step):  # the upgrade, done at ~0.6 x timeout
                    await stream.send_all(request[i : i + step])
                    await trio.sleep(0.06 * timeout)
                response = b""
                while b"\r\n\r\n" not in response:
                    response += await stream.receive_some()
                assert response.startswith(b"HTTP/1.1 101")
                rest = response.split(b"\r\n\r\n", 1)[1]
                # The venue gives up: its next bytes (a REJECT, or a WebSocket close
                # frame) or the end of the stream.  We never answer a close frame.
                try:
                    if not rest:
                        await stream.receive_some()
                except trio.BrokenResourceError:
                    pass
                gave_up = trio.current_time() - start
                try:
                    while await stream.receive_some():
                        pass
                except trio.BrokenResourceError:
                    pass
                released = trio.current_time() - start
            assert gave_up < timeout + 0.15, (
                f"venue gave up {gave_up:.2f}s after connect (socket released after "
                f"{released:.2f}s); handshake_timeout is {timeout}s"
            )
            await assert_serves(server)


async def test_handshake_flood_rate_limited(probe: VenueProbe, recorder: Recorder) -> None:
    rate, n = 20, 200
    replies: list[bytes] = []

    async def hello(limiter: trio.CapacityLimiter) -> None:
        async with limiter, raw_ws(server, queue=4) as ws:
            await ws.send_message(client_hello())
            reply = await ws.get_message()
            assert isinstance(reply, bytes)
            replies.append(reply)

    with trio.fail_after(DEADLINE):
        async with live_venue(
            recorder.handler,
            handshake_rate_per_key=rate,
            handshake_rate_per_address=100_000,  # isolate the per-key limit
            handshake_timeout=5.0,
        ) as server:
            limiter = trio.CapacityLimiter(100)
            cpu0, wall0 = time.process_time(), trio.current_time()
            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(hello, limiter)
            cpu, wall = time.process_time() - cpu0, trio.current_time() - wall0

            accepted = [r for r in replies if r[0] == FrameType.SERVER_HELLO]
            rejects = [parse_reject(r) for r in replies if r[0] == FrameType.REJECT]
            assert len(accepted) + len(rejects) == n
            assert all(ts.CloseCode.from_wire(r.code) is ts.CloseCode.RATE_LIMITED for r in rejects)
            assert all(
                r.retry_after_ms is not None and r.retry_after_ms <= 1000 / rate for r in rejects
            )
            # Token bucket: a burst of `rate`, then `rate` per second.
            allowed = rate + rate * wall + 1
            assert rate <= len(accepted) <= allowed, (len(accepted), wall)
            assert len(rejects) >= n - allowed
            # Only the admitted hellos reached the expensive step.
            assert probe.accepts == len(accepted)
            per_accept = probe.accept_cpu / max(1, probe.accepts)
            assert per_accept < 0.005, f"{per_accept * 1e6:.0f} us per accept"
            assert cpu / n < 0.02, f"{cpu:.2f}s CPU for {n} hellos ({wall:.2f}s wall)"

            # Other keys are not affected; the flooding key is served again after retry_after.
            await assert_serves(server, OTHER)
            await trio.sleep(max((r.retry_after_ms or 0) for r in rejects) / 1000 + 1 / rate)
            await assert_serves(server, PARTICIPANT)


class Flooder:
    """Venue handler: streams market data to OTHER as fast as credit allows; echoes for
    everyone else.  Records the OTHER session and how its blocked ``send`` ended."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.session: ts.Session | None = None
        self.started = trio.Event()
        self.send_ended: list[tuple[float, BaseException]] = []
        self.send_released = trio.Event()

    async def handler(self, session: ts.Session) -> None:
        if session.key_id != OTHER.key_id:
            await Recorder().handler(session)
            return
        self.session = session
        self.started.set()
        try:
            while True:
                await session.send(self.payload)
        except ts.SessionError as exc:
            self.send_ended.append((trio.current_time(), exc))
            self.send_released.set()

    async def wait_closed(self, within: float) -> float | None:
        """When the venue ended the flooded session (None: not within ``within``)."""
        with trio.move_on_after(within):
            await self.started.wait()
            assert self.session is not None
            await self.session.wait_state(ts.State.CLOSED)
            return trio.current_time()
        return None


async def test_slow_consumer(probe: VenueProbe) -> None:
    """The participant never consumes: its window (4 messages) runs out and stays out.
    The venue's heartbeat interval is the default 5 s: the slow-consumer deadline must
    not wait for the next heartbeat tick."""
    stall = 0.5
    flood = Flooder(b"md" * 50)
    with trio.fail_after(DEADLINE):
        async with live_venue(
            flood.handler, outbound_capacity=4, inbound_capacity=4, slow_consumer_timeout=stall
        ) as server:
            cfg = mode_config(inbound_capacity=4)
            async with raw_participant(server, OTHER, config=cfg) as raw:
                start = trio.current_time()
                closed_at = await flood.wait_closed(within=stall + 0.3)  # never reads
                with trio.move_on_after(6):
                    out = await raw.outcome()
                late = trio.current_time() - start
            assert flood.session is not None and flood.session.error is not None
            assert flood.session.error.code is ts.CloseCode.SLOW_CONSUMER
            assert len(out.delivered) == 4  # exactly the credit it granted
            assert [c.code for c in out.closes] == [ts.CloseCode.SLOW_CONSUMER]
            assert closed_at is not None, (
                f"SLOW_CONSUMER came {late:.2f}s after the stall began; "
                f"slow_consumer_timeout is {stall}s"
            )
            assert stall <= closed_at - start < stall + 0.3
            await assert_serves(server)


async def test_slow_consumer_releases_blocked_handler(probe: VenueProbe) -> None:
    """After the venue ends a slow consumer's session, the handler blocked in
    ``Session.send()`` on the full outbound queue must get the session's typed error."""
    stall = 0.5
    flood = Flooder(b"md" * 50)
    with trio.fail_after(DEADLINE):
        async with live_venue(
            flood.handler,
            outbound_capacity=4,
            inbound_capacity=4,
            slow_consumer_timeout=stall,
            heartbeat_interval=0.1,  # so the timer above cannot delay the close
            heartbeat_timeout=5.0,
        ) as server:
            cfg = mode_config(inbound_capacity=4)
            async with raw_participant(server, OTHER, config=cfg) as raw:
                closed_at = await flood.wait_closed(within=stall + 0.5)
                assert closed_at is not None
                await raw.outcome()
            with trio.move_on_after(1.0):
                await flood.send_released.wait()
            assert flood.session is not None
            assert flood.send_ended, (
                "venue handler still blocked in Session.send() 1 s after its session was "
                f"closed with SLOW_CONSUMER (session {flood.session.state.name})"
            )
            ((_, err),) = flood.send_ended
            assert isinstance(err, ts.SessionError) and err.code is ts.CloseCode.SLOW_CONSUMER
            await assert_serves(server)


async def test_slow_consumer_not_reading_socket(probe: VenueProbe) -> None:
    """The participant grants a large window but stops reading the socket: the venue's
    writer blocks on TCP backpressure, and its outbound queue stays full all the same."""
    stall = 0.5
    # Closing may take two close_timeouts more: the CLOSE frame cannot get through a full
    # TCP buffer, nor can the WebSocket close handshake.
    grace = stall + 2 * BASE["close_timeout"] + 0.3
    flood = Flooder(bytes(8000))
    with trio.fail_after(DEADLINE):
        async with live_venue(
            flood.handler,
            outbound_capacity=4,
            slow_consumer_timeout=stall,
            max_batch_bytes=2**15,
            heartbeat_interval=0.1,  # timers tick often: only the blocked writer matters
            heartbeat_timeout=5.0,
        ) as server:
            cfg = mode_config(inbound_capacity=1_000_000)
            conn = ClientConnection(OTHER, VENUE.public_key, cfg, clock=trio.current_time)
            async with raw_ws(server, queue=1) as ws:
                raw = Raw(ws, conn)
                await raw.handshake()
                start = trio.current_time()

                async def keep_alive() -> None:
                    # Stops reading, but keeps talking: visibly alive to the venue.
                    while True:
                        await raw.send_data(b"still here")
                        await trio.sleep(0.1)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(keep_alive)
                    closed_at = await flood.wait_closed(within=grace)
                    nursery.cancel_scope.cancel()
            assert flood.session is not None
            assert closed_at is not None, (
                f"venue still holds a participant that stopped reading {grace}s ago "
                f"(slow_consumer_timeout={stall}s): session {flood.session.state}, "
                f"outbound depth {flood.session.stats.outbound_depth}"
            )
            assert closed_at - start < grace
            assert flood.session.error is not None
            assert flood.session.error.code is ts.CloseCode.SLOW_CONSUMER
            await assert_serves(server)


# -- docs/security.md ---------------------------------------------------------------------


def _test_names(module: Path) -> set[str]:
    """Test functions defined at the top level of ``module`` (an absent module has none)."""
    if not module.is_file():
        return set()
    tree = ast.parse(module.read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.name.startswith("test")
    }


def test_security_doc_names_existing_tests() -> None:
    doc = (ROOT / "docs" / "security.md").read_text()
    cited = re.findall(r"tests/((?:protocol/)?test_\w+\.py)::(\w+)", doc)
    assert cited, "docs/security.md names no tests"
    names = {m: _test_names(ROOT / "tests" / m) for m in {m for m, _ in cited}}
    missing = [f"{m}::{t}" for m, t in cited if t not in names[m]]
    assert missing == [], f"docs/security.md names tests that do not exist: {missing}"
    # Both attack modules are cited, and every live attack test is in the table.
    modules = {m for m, _ in cited}
    assert {"test_attacks_live.py", "protocol/test_attacks.py"} <= modules
    live_cited = {t for m, t in cited if m == "test_attacks_live.py"}
    uncited = sorted(names["test_attacks_live.py"] - live_cited - {_self_name()})
    assert uncited == [], f"live attack tests missing from docs/security.md: {uncited}"


def _self_name() -> str:
    return test_security_doc_names_existing_tests.__name__
