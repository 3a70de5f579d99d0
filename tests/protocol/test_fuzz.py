"""Soak fuzzing (``nox -s soak``): >= 100,000 generated inputs against the frame
decoder, the handshake and both state machines, in each frame protection mode; only
typed errors may escape."""

from __future__ import annotations

import random

import pytest

from trio_session import SessionConfig, SessionError
from trio_session.protocol import ClientConnection, MessagesReceived, VenueConnection
from trio_session.protocol._wire import MODES

from .helpers import PARTICIPANT, VENUE, handshake, pump

INPUTS = 120_000


def _mutate(rng: random.Random, frame: bytes) -> bytes:
    choice = rng.randrange(5)
    data = bytearray(frame)
    if choice == 0 and data:  # flip 1-8 bits
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif choice == 1:  # truncate
        del data[rng.randrange(len(data) + 1) :]
    elif choice == 2:  # random bytes of random length
        return rng.randbytes(rng.randrange(0, 300))
    elif choice == 3 and data:  # overwrite a slice with random bytes
        i = rng.randrange(len(data))
        data[i : i + 8] = rng.randbytes(8)
    else:  # splice random bytes in
        i = rng.randrange(len(data) + 1)
        data[i:i] = rng.randbytes(rng.randint(1, 16))
    return bytes(data)


@pytest.mark.soak
@pytest.mark.parametrize("mode", MODES)
def test_fuzz_state_machines_with_100k_inputs(mode: str) -> None:
    rng = random.Random(2026)
    cfg = SessionConfig(modes=(mode,))
    counts = {"typed_error": 0, "accepted_hello": 0, "accepted_unchanged": 0, "inputs": 0}
    p, v, _, _ = handshake(cfg)
    assert p.mode == mode
    hello_src = ClientConnection(PARTICIPANT, VENUE.public_key, cfg)
    (m1,) = hello_src.data_to_send()
    for i in range(INPUTS):
        counts["inputs"] += 1
        target = i % 3
        if target == 0:  # handshake: mutated ClientHello to a fresh venue
            conn: ClientConnection | VenueConnection = VenueConnection(VENUE, cfg)
            original = m1
        elif target == 1:  # an OPEN venue receiving a mutated data frame
            if v.state.value != "open" or p.state.value != "open" or p.send_window() < 8:
                p, v, _, _ = handshake(cfg)
            conn, original = v, p.send_data([rng.randbytes(rng.randrange(1, 64))])
        else:  # an OPEN participant receiving a mutated venue frame
            if v.state.value != "open" or p.state.value != "open" or v.send_window() < 8:
                p, v, _, _ = handshake(cfg)
            conn, original = p, v.send_data([b"report"])
        frame = _mutate(rng, original)
        try:
            events = conn.receive_data(frame)
        except SessionError:
            counts["typed_error"] += 1
            if conn is v or conn is p:
                p, v, _, _ = handshake(cfg)
            continue
        if target == 0:
            # ClientHello is unauthenticated: a mutated one may parse, but it can
            # only ever be reported for the venue to check (and M2/M3 then fail).
            assert [type(e).__name__ for e in events] == ["HelloReceived"]
            counts["accepted_hello"] += 1
            continue
        # After the handshake every byte is under the tag: only an unchanged frame
        # (a mutation that happened to restore the original) can be accepted.
        assert frame == original, "a mutated authenticated frame was accepted"
        assert all(isinstance(e, MessagesReceived) for e in events)
        counts["accepted_unchanged"] += 1
        pump(p, v)
        pump(v, p)
    print(f"fuzz soak: {counts}")
    assert counts["inputs"] >= 100_000
    assert counts["typed_error"] > 0.9 * counts["inputs"]
