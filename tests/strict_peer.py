"""A participant written only from docs/protocol.md, strict in every MUST it states.

It imports nothing of ``trio_session``: the wire format, the key schedule, both frame
protection modes, resume, heartbeats, rekeys and close are implemented here and in
tests/strict_spec.py from the spec's text, with hashlib, PyNaCl, msgspec (generic
msgpack only) and trio-websocket.  Whatever the venue sends that the spec forbids raises
:class:`~tests.strict_spec.Violation` with the close code the spec names, so a test that
runs this peer against ``ts.serve`` checks the venue against the spec as well as the
spec against a second implementation.

Section names in comments are those of docs/protocol.md.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import msgspec
import nacl.bindings
import nacl.exceptions
import nacl.signing
import trio
import trio_websocket

from .strict_spec import (
    ACK,
    AUTH_FAILED,
    C2V,
    CLOSE,
    CLOSE_FIELDS,
    DATA,
    FROM_VENUE,
    HEADER,
    HEARTBEAT,
    HEARTBEAT_ACK,
    INTEGRITY_FAILURE,
    KDF,
    M1,
    M2,
    M3,
    MAC,
    MAX_FRAME,
    MAX_MESSAGE,
    NOTICE_FIELDS,
    PROBE,
    PROTOCOL_ERROR,
    REJECT,
    REJECT_BODY,
    REJECT_OPTIONAL,
    REKEY,
    REKEY_ACK,
    REKEY_REQUEST,
    RESUMABLE,
    SEQ_LIMIT,
    SEQUENCE_ERROR,
    SERVER_HELLO,
    SERVER_HELLO_OPTIONAL,
    SYSTEM,
    TAG,
    V2C,
    VERSION_MISMATCH,
    Closed,
    Delivered,
    Direction,
    H,
    Lost,
    Refused,
    Session,
    Violation,
    check,
    crypto_kx_client,
    decode,
    is_bin,
    key_id_of,
    strict_array,
    strict_map,
    u32,
    u63,
)

__all__ = ["StrictParticipant", "client_finish", "client_hello", "verify_server_hello"]

#: M3's fixed prefix: header and the empty map (M3: ClientFinish).
M3_PREFIX = HEADER.pack(M3, 0, 0, 0) + b"\x80"


def b64url(data: bytes) -> bytes:
    """Base64url without padding (RFC 4648 section 5), as the Tsess-Hello header is."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def unb64url(value: bytes) -> bytes:
    value = value.strip()
    check(len(value) % 4 != 1 and value.replace(b"-", b"").replace(b"_", b"").isalnum(), "b64url")
    try:
        return base64.urlsafe_b64decode(value + b"=" * (-len(value) % 4))
    except binascii.Error:
        check(False, "Tsess-Hello is not base64url")
        raise


def client_hello(
    modes: list[str], key_id: str, window: int, resume: Session | None
) -> tuple[bytes, bytes, bytes, list[int]]:
    """M1 with a binder per resume generation held (at most the two newest, ascending):
    ``(m1, e_pk, e_sk, generations)``."""
    e_pk, e_sk = nacl.bindings.crypto_kx_keypair()
    hello: dict[str, Any] = {
        "ver": [1],
        "modes": modes,
        "key_id": key_id,
        "p_nonce": os.urandom(32),
        "e_p": e_pk,
        "window": window,
        "resume": None,
    }
    gens: list[int] = []
    if resume is not None:
        hello["resume"] = {"session_id": resume.session_id, "next_rx_seq": resume.next_rx}
        gens = sorted(resume.secrets)[-2:]
    prefix = HEADER.pack(M1, len(gens), 0, 0) + msgspec.msgpack.encode(hello)
    trailer = b""
    for gen in gens:
        assert resume is not None
        binder_key = KDF(resume.secrets[gen], b"tsess binder", resume.session_id)
        trailer += struct.pack("!I", gen) + MAC(binder_key, prefix)
    return prefix + trailer, e_pk, e_sk, gens


def verify_server_hello(
    frame: bytes, m1: bytes, venue_pk: bytes, modes: list[str], e_pk: bytes, e_sk: bytes
) -> tuple[dict[str, Any], bytes, bytes, bytes, bytes]:
    """Participant processing, steps 1-6: ``(m2 fields, kx_c2v, kx_v2c, th2s, fin_v)``."""
    check(len(frame) >= 14, "frame shorter than a header")
    ftype, flags, epoch, seq = HEADER.unpack_from(frame)
    check((flags, epoch, seq) == (0, 0, 0) and ftype == M2, f"expected M2, got {frame[:14]!r}")
    check(len(frame) >= 95, "M2 too short")
    prefix, sig_v, fin_v = frame[:-80], frame[-80:-16], frame[-16:]
    m2 = strict_map(decode(prefix[14:]), SERVER_HELLO, SERVER_HELLO_OPTIONAL)
    th2 = H(b"tsess/v1", venue_pk, m1, prefix)
    try:
        nacl.signing.VerifyKey(venue_pk).verify(b"tsess/v1 server" + th2, sig_v)
    except nacl.exceptions.BadSignatureError:
        raise Violation(AUTH_FAILED, "venue signature") from None
    if m2["ver"] != 1 or m2["mode"] not in modes:
        raise Violation(VERSION_MISMATCH, f"venue chose {m2['ver']}/{m2['mode']}")
    kx_c2v, kx_v2c = crypto_kx_client(e_sk, e_pk, m2["e_v"], AUTH_FAILED)
    th2s = H(th2, sig_v)
    if not hmac.compare_digest(MAC(KDF(kx_v2c, b"tsess fin v", th2), th2s), fin_v):
        raise Violation(AUTH_FAILED, "venue finish MAC")
    return m2, kx_c2v, kx_v2c, th2s, fin_v


def client_finish(
    signing: nacl.signing.SigningKey, th2s: bytes, fin_v: bytes, kx_c2v: bytes
) -> tuple[bytes, bytes]:
    """M3 and the handshake hash ``th``."""
    th3 = H(th2s, fin_v, bytes(signing.verify_key))
    sig_p = signing.sign(b"tsess/v1 client" + th3).signature
    th3s = H(th3, sig_p)
    fin_p = MAC(KDF(kx_c2v, b"tsess fin p", th3), th3s)
    return M3_PREFIX + sig_p + fin_p, H(th3s, fin_p)


def parse_reject(frame: bytes) -> Refused:
    """REJECT: header all zero, a ``Reject`` map, no trailer."""
    check(frame[1:14] == bytes(13), "REJECT header not all zero")
    body = strict_map(decode(frame[14:]), REJECT_BODY, REJECT_OPTIONAL)
    return Refused(body["code"], body["reason"])


class StrictParticipant:
    """One participant identity and its logical session, over as many connections as needed.

    ``async with peer.connect(url) as m2`` runs a handshake (a resume when the session is
    resumable) and yields M2's fields; :meth:`send` sends data, :meth:`next_event` reads
    until the venue delivers something (answering heartbeats and rekeys on the way, and
    sending heartbeats when due), and :meth:`close` logs out.
    """

    def __init__(
        self,
        seed: bytes,
        venue_public_key: bytes,
        *,
        modes: tuple[str, ...] = ("mac",),
        capacity: int = 1024,
        hello_in_upgrade: bool = False,
    ) -> None:
        self.signing = nacl.signing.SigningKey(seed)
        self.public_key = bytes(self.signing.verify_key)
        self.key_id = key_id_of(self.public_key)
        self.venue_pk = venue_public_key
        self.modes, self.capacity = list(modes), capacity
        #: M1 in the upgrade request's Tsess-Hello header (The first messages in the upgrade).
        self.hello_in_upgrade = hello_in_upgrade
        #: The last connection's venue answered in its 101 (it took M1 from the request).
        self.hello_taken = False
        self.session: Session | None = None
        #: False after a close whose code is not resumable: the next handshake is new.
        self.resumable = False
        self.ws: trio_websocket.WebSocketConnection | None = None
        self.mode = ""
        self.connections = 0
        #: A fault for tests: what the peer sends is lost on the way (it still reads).
        self.mute = False
        #: DH rekeys answered, over all connections.
        self.rekeys = 0

    # -- handshake (M1, M2, M3; Participant processing; Resume) ----------------------------

    @asynccontextmanager
    async def connect(self, url: str) -> AsyncIterator[dict[str, Any]]:
        resume = self.session if self.resumable and self.session else None
        window = self.capacity if resume is None else resume.consumed + self.capacity
        hello = client_hello(self.modes, self.key_id, window, resume)
        headers = [(b"tsess-hello", b64url(hello[0]))] if self.hello_in_upgrade else None
        async with trio_websocket.open_websocket_url(
            url, max_message_size=MAX_FRAME, extra_headers=headers
        ) as ws:
            self.ws = ws
            self.connections += 1
            answer = [v for k, v in ws.handshake_headers if k.lower() == b"tsess-hello"]
            check(not answer or self.hello_in_upgrade, "Tsess-Hello in a 101 we did not ask")
            check(len(answer) <= 1, "Tsess-Hello twice in the 101")
            first = unb64url(answer[0]) if answer else None
            self.hello_taken = first is not None
            try:
                yield await self._handshake(resume, hello, first)
            finally:
                self.ws = None

    async def _handshake(
        self,
        resume: Session | None,
        hello: tuple[bytes, bytes, bytes, list[int]],
        first: bytes | None,
    ) -> dict[str, Any]:
        """``first``: the venue's first frame from the 101 (then M1 went in the request)."""
        m1, e_pk, e_sk, self.offered_gens = hello
        if first is None:  # M1 in band: the venue did not take it from the request
            await self._send_raw(m1)
            frame = await self._recv_raw()
        else:
            check(len(first) <= MAX_FRAME, "frame over max_frame_size")
            frame = first
        if frame[:1] == bytes((REJECT,)):
            raise self._refused(frame)
        m2, kx_c2v, kx_v2c, th2s, fin_v = verify_server_hello(
            frame, m1, self.venue_pk, self.modes, e_pk, e_sk
        )
        session, resume_k = self._session_for(m2, resume)
        m3, th = client_finish(self.signing, th2s, fin_v, kx_c2v)
        mix = H(kx_c2v, kx_v2c) if resume_k is None else H(kx_c2v, kx_v2c, resume_k)
        self._open(session, m2, th, KDF(mix, b"tsess root", th))
        await self._send_raw(m3)
        await self._retransmit()  # right after M3, by original seq (Retransmission)
        return m2

    def _session_for(self, m2: dict[str, Any], old: Session | None) -> tuple[Session, bytes | None]:
        """Steps 7 and 8; nothing is committed before they pass."""
        if m2["resumed"]:
            check(old is not None and m2["session_id"] == old.session_id, "unasked resume")
            assert old is not None
            check(m2["resume_gen"] in self.offered_gens, "resume_gen not offered")
            session, resume_k = old, old.secrets[m2["resume_gen"]]
        else:
            check(m2["resume_gen"] is None, "resume_gen on a new session")
            check(old is None or m2["session_id"] != old.session_id, "new session, old id")
            session, resume_k = Session(m2["session_id"]), None
        check(session.peer_ack <= m2["next_rx_seq"] <= session.next_tx, "bad next_rx_seq")
        return session, resume_k

    def _open(self, session: Session, m2: dict[str, Any], th: bytes, root: bytes) -> None:
        """Keys, resume generations, credit and timers of the new connection."""
        self.session, self.resumable, self.mode = session, True, m2["mode"]
        self.th, self.root = th, root
        sid = session.session_id
        self.tx = Direction(self.mode, sid, C2V, KDF(root, b"tsess ck c2v", th))
        self.rx = Direction(self.mode, sid, V2C, KDF(root, b"tsess ck v2c", th))
        new_secret = KDF(root, b"tsess resume", th)
        if m2["resumed"]:
            gen = m2["resume_gen"]
            session.secrets = {gen: session.secrets[gen], gen + 1: new_secret}
            self.forget_on_first_frame: int | None = gen
        else:
            session.secrets = {0: new_secret}
            self.forget_on_first_frame = None
        session.trim(m2["next_rx_seq"])
        session.peer_window = max(session.peer_window, m2["window"])
        self.adv_window = session.consumed + self.capacity
        self.ack_sent = session.next_rx
        self.tx_ctl = self.rx_ctl = 0
        self.authenticated = self.closed = self.close_sent = False
        self.forget_on_dh: int | None = None
        self.step_due = False
        self.interval = m2["heartbeat_ms"] / 1000
        self.timeout = max(m2["heartbeat_timeout_ms"] / 1000, 1.5 * self.interval)
        self.last_rx = self.last_tx = trio.current_time()
        self.hb_id, self.probe_out = 0, False

    async def _retransmit(self) -> None:
        assert self.session is not None
        for seq, msgs, flags in list(self.session.replay):
            await self._send_data(seq, msgs, flags)

    def _refused(self, frame: bytes) -> Refused:
        refused = parse_reject(frame)
        if refused.code not in RESUMABLE:
            self.resumable = False
        return refused

    # -- transport ---------------------------------------------------------------------------

    async def _send_raw(self, frame: bytes) -> None:
        assert self.ws is not None
        if not self.mute:
            await self.ws.send_message(frame)
        self.last_tx = trio.current_time()

    async def _recv_raw(self) -> bytes:
        assert self.ws is not None
        frame = await self.ws.get_message()
        check(isinstance(frame, bytes), "TEXT message")
        assert isinstance(frame, bytes)
        check(len(frame) <= MAX_FRAME, "frame over max_frame_size")
        self.last_rx = trio.current_time()
        return frame

    def _header(self, frame: bytes) -> tuple[int, int, int, int]:
        check(len(frame) >= 14, "frame shorter than a header")
        ftype, flags, epoch, seq = HEADER.unpack_from(frame)
        check(ftype in {M1, M2, M3, REJECT} | FROM_VENUE | {REKEY_ACK, REKEY_REQUEST}, "type")
        return ftype, flags, epoch, seq

    # -- sending ------------------------------------------------------------------------------

    def _grant(self) -> tuple[int, int]:
        assert self.session is not None
        self.adv_window = max(self.adv_window, self.session.consumed + self.capacity)
        self.ack_sent = self.session.next_rx
        return self.session.next_rx, self.adv_window

    def _seal(self, ftype: int, flags: int, seq: int, body: bytes) -> bytes:
        tx = self.tx
        if self.step_due and tx.frames_in_epoch > 0:  # tier 1: never in an empty epoch
            self.step_due = False
            tx.advance()
        return tx.seal(ftype, flags, seq, body)

    async def _send_control(self, ftype: int, body: list[Any], flags: int = 0) -> None:
        seq = self.tx_ctl
        assert seq < SEQ_LIMIT
        self.tx_ctl += 1
        await self._send_raw(self._seal(ftype, flags, seq, msgspec.msgpack.encode(body)))

    async def _send_data(self, seq: int, msgs: list[bytes], flags: int = 0) -> None:
        ack, window = self._grant()
        body = msgspec.msgpack.encode([ack, window, msgs])
        await self._send_raw(self._seal(DATA, flags, seq, body))

    async def send(self, *msgs: bytes) -> int:
        """Send one DATA frame; returns the data seq of its first message."""
        s = self.session
        assert s is not None and msgs and not self.close_sent
        assert s.next_tx + len(msgs) <= s.peer_window, "no credit"
        seq = s.next_tx
        s.replay.append((seq, list(msgs), 0))
        s.next_tx += len(msgs)
        await self._send_data(seq, list(msgs))
        return seq

    def ratchet(self) -> None:
        """Step our sending chain (tier 1) with the next frame."""
        self.step_due = True

    # -- receiving (Receiving an authenticated frame) ------------------------------------------

    async def next_event(self, *, until: float = 10.0) -> Delivered | Closed | Lost:
        """Read frames until the venue delivers messages or the connection ends.

        Heartbeats are sent when due; a venue silent for the heartbeat timeout is dead
        (``Lost(None)``).  ``until`` bounds the wait in seconds."""
        give_up = trio.current_time() + until
        while True:
            now = trio.current_time()
            if now >= self.last_rx + self.timeout:
                return Lost(None)
            beat = min(self._probe_at(), self.last_tx + 0.9 * self.interval)
            if now >= beat:
                await self._heartbeat(now)
                continue
            with trio.move_on_at(min(beat, self.last_rx + self.timeout, give_up)):
                try:
                    frame = await self._recv_raw()
                except trio_websocket.ConnectionClosed as exc:
                    return Lost(exc.reason.code if exc.reason else None)
                event = await self._receive(frame)
                if event is not None:
                    return event
                continue
            assert trio.current_time() < give_up, "no event within the test's bound"

    def _probe_at(self) -> float:
        return float("inf") if self.probe_out else self.last_rx + 0.9 * self.interval

    async def _heartbeat(self, now: float) -> None:
        """Probe when nothing was received for the interval (one probe outstanding at a
        time), else an idle heartbeat; both at once make one probe (Heartbeats)."""
        probe = now >= self._probe_at()
        self.hb_id = (self.hb_id + 1) % 2**32
        self.probe_out = self.probe_out or probe
        ack, window = self._grant()
        assert self.session is not None
        body = [self.hb_id, ack, window, self.session.next_tx]
        await self._send_control(HEARTBEAT, body, PROBE if probe else 0)

    async def _receive(self, frame: bytes) -> Delivered | Closed | None:
        check(not self.closed, "frame after the venue's CLOSE")
        if not self.authenticated and frame[:1] == bytes((REJECT,)):
            raise self._refused(frame)
        check(len(frame) >= 14 + TAG, "frame shorter than header + tag")
        ftype, flags, epoch, seq = self._header(frame)
        check(ftype not in {M1, M2, M3, REJECT}, "handshake frame after the handshake")
        check(
            flags == 0 or (flags, ftype) in {(PROBE, HEARTBEAT), (SYSTEM, DATA)}, "reserved flags"
        )
        rx = self.rx
        if epoch not in (rx.epoch, rx.epoch + 1):
            raise Violation(INTEGRITY_FAILURE, f"epoch {epoch}, ours {rx.epoch}")
        chain = rx.chain if epoch == rx.epoch else rx.next_chain()
        body = rx.open(frame, chain, epoch, ftype, seq)
        assert self.session is not None
        expected = self.session.next_rx if ftype == DATA else self.rx_ctl
        if seq != expected:
            raise Violation(SEQUENCE_ERROR, f"seq {seq}, expected {expected}")
        if epoch == rx.epoch + 1 and rx.advance() and self.forget_on_dh is not None:
            self.session.secrets.pop(self.forget_on_dh, None)  # switch rule 3
            self.forget_on_dh = None
        if ftype != DATA:
            self.rx_ctl += 1
        if not self.authenticated:
            self.authenticated = True
            if self.forget_on_first_frame is not None:
                self.session.secrets.pop(self.forget_on_first_frame, None)
        check(ftype in FROM_VENUE, f"type 0x{ftype:02x} from the venue")
        return await self._dispatch(ftype, flags, seq, decode(body))

    async def _dispatch(
        self, ftype: int, flags: int, seq: int, body: Any
    ) -> Delivered | Closed | None:
        s = self.session
        assert s is not None
        if ftype == DATA:
            ack, window, msgs = strict_array(body, [u63, u63, list], [])
            check(len(msgs) >= 1 and all(is_bin(m) for m in msgs), "DATA messages")
            check(seq + len(msgs) <= self.adv_window, "DATA beyond the window we granted")
            check(all(len(m) <= MAX_MESSAGE for m in msgs), "message over max_message_size")
            notices = None
            if flags == SYSTEM:  # every message a Notice (Notices)
                notices = [strict_array(decode(m), NOTICE_FIELDS, ["", None]) for m in msgs]
            s.next_rx = seq + len(msgs)
            self._peer_grant(ack, window)
            s.consumed += len(msgs)  # handed to the test at once
            if s.next_rx - self.ack_sent >= max(1, self.capacity // 4):
                await self._send_control(ACK, list(self._grant()))
            return Delivered(seq, msgs, notices)
        if ftype == ACK:
            self._peer_grant(*strict_array(body, [u63, u63], []))
        elif ftype in (HEARTBEAT, HEARTBEAT_ACK):
            hb_id, ack, window, next_seq = strict_array(body, [u32, u63, u63, u63], [])
            if next_seq != s.next_rx:
                raise Violation(SEQUENCE_ERROR, f"venue sent up to {next_seq}, we have {s.next_rx}")
            self._peer_grant(ack, window)
            if ftype == HEARTBEAT:
                await self._send_control(HEARTBEAT_ACK, [hb_id, *self._grant(), s.next_tx])
            else:
                self.probe_out = False
        elif ftype == REKEY:
            await self._rekey(*strict_array(body, [u32, lambda x: is_bin(x, 32)], []))
        else:  # CLOSE
            code, reason, _retry = strict_array(body, CLOSE_FIELDS, ["", None])
            return await self._closed(code, reason)
        return None

    def _peer_grant(self, ack: int, window: int) -> None:
        assert self.session is not None
        self.session.trim(ack)
        self.session.peer_window = max(self.session.peer_window, window)

    # -- DH rekey (Tier 2, Switch rules) -------------------------------------------------------

    async def _rekey(self, rekey_id: int, e_v: bytes) -> None:
        check(self.rx.pending is None, "REKEY while waiting for the venue's switch")
        e_pk, e_sk = nacl.bindings.crypto_kx_keypair()
        kx_c2v, kx_v2c = crypto_kx_client(e_sk, e_pk, e_v, PROTOCOL_ERROR)
        th_r = H(self.th, struct.pack("!I", rekey_id), e_v, e_pk)
        self.root = KDF(self.root, b"tsess dh", kx_c2v + kx_v2c + th_r)
        s = self.session
        assert s is not None
        gen = max(s.secrets)
        s.secrets[gen + 1] = KDF(self.root, b"tsess resume", th_r)
        self.forget_on_dh = gen  # kept until the venue's first new-epoch frame
        self.rx.pending = KDF(self.root, b"tsess ck v2c", th_r)
        self.step_due = False
        await self._send_control(REKEY_ACK, [rekey_id, e_pk])  # still the current c2v epoch
        self.tx.pending = KDF(self.root, b"tsess ck c2v", th_r)
        self.tx.advance()  # rule 1: every later c2v frame is in the new epoch
        self.rekeys += 1

    # -- close (Close, After a venue CLOSE) -----------------------------------------------------

    async def _closed(self, code: int, reason: str) -> Closed:
        """The venue's CLOSE: echo it (unless we sent ours), close the WebSocket, and
        follow the code's category."""
        self.closed = True
        if not self.close_sent:
            self.close_sent = True
            # The venue may already have closed the WebSocket.
            with suppress(trio_websocket.ConnectionClosed):
                await self._send_control(CLOSE, [code, "", None])
        assert self.ws is not None
        await self.ws.aclose()
        if code not in RESUMABLE:
            self.resumable = False
        return Closed(code, reason)

    async def close(self) -> Closed | Lost:
        """Log out: CLOSE(NORMAL), then read (bounded) until the venue's CLOSE or the end."""
        self.close_sent = True
        await self._send_control(CLOSE, [0, "", None])
        self.resumable = False
        with trio.move_on_after(2.0):
            while True:
                event = await self.next_event()
                if not isinstance(event, Delivered):
                    return event
        return Lost(None)
