"""The sans-IO hot path on its own: no Trio, no sockets, one process.

    python bench/sansio.py [--frames N] [--runs N] [--json]

A :class:`~trio_session.protocol.ClientConnection` and a
:class:`~trio_session.protocol.VenueConnection` complete a handshake back to
back, in each frame protection mode (``mac``, ``aead``), then the participant
seals DATA frames and the venue opens them:

* ``single``: one 100-byte message per frame (``send_data([m])``, then
  ``receive_data(frame)``): the per-frame cost of sealing and opening.
* ``batch64``: 64 messages of 100 bytes per frame: ``send_data`` of a batch, as
  the writer task does under load.

``seal`` times only ``send_data`` (header, body encoding, MAC, replay buffer),
``open`` only ``receive_data`` (size, header, epoch, MAC, sequence, decoding,
credit) of the frames just sealed; acknowledgements flow back between rounds,
untimed, so the replay buffer and the credit window never run dry.  Figures are
frames per second, the best of ``--runs`` runs (the least disturbed one).

``primitives`` times the per-frame cryptography alone, protect then check, on a
body of 100 bytes and one of 64 x 100 bytes: the BLAKE2b frame MAC of mode "mac",
and the two AEADs PyNaCl offers with a counter nonce, ChaCha20-Poly1305 (IETF,
12-byte nonce: what mode "aead" uses) and XChaCha20-Poly1305 (24-byte nonce),
in microseconds per frame.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import partial

import nacl.bindings

from trio_session import Identity, SessionConfig
from trio_session.protocol import ClientConnection, Connection, VenueConnection
from trio_session.protocol._crypto import FrameMac

PAYLOAD = b"x" * 100
ROUND = 1024  # frames sealed, then opened, per round

VENUE = Identity.from_seed(bytes(range(32)))
PARTICIPANT = Identity.from_seed(bytes(range(32, 64)))


def _pump(a: Connection, b: Connection) -> None:
    for frame in a.data_to_send():
        b.receive_data(frame)


def open_pair(mode: str) -> tuple[ClientConnection, VenueConnection]:
    """A handshake back to back in ``mode``, with room for a whole round in flight."""
    cfg = SessionConfig(
        modes=(mode,),
        inbound_capacity=64 * ROUND,
        replay_max_messages=64 * ROUND,
        outbound_capacity=64 * ROUND,
        ratchet_interval=1e9,
        rekey_interval=1e9,
        reject_after=2e9,
    )
    clock = [0.0]

    def now() -> float:
        return clock[0]

    p = ClientConnection(PARTICIPANT, VENUE.public_key, cfg, clock=now)
    v = VenueConnection(VENUE, cfg, clock=now)
    _pump(p, v)
    v.accept(PARTICIPANT.public_key)
    _pump(v, p)
    _pump(p, v)
    _pump(v, p)
    assert p.mode == v.mode == mode
    return p, v


def run(frames: int, per_frame: int, mode: str) -> tuple[float, float]:
    """Seal and open ``frames`` frames of ``per_frame`` messages; returns (seal/s, open/s)."""
    p, v = open_pair(mode)
    batch = [PAYLOAD] * per_frame
    send: Callable[[list[bytes]], bytes] = p.send_data
    receive = v.receive_data
    seal_time = open_time = 0.0
    done = 0
    while done < frames:
        n = min(ROUND, frames - done)
        t0 = time.perf_counter()
        sealed = [send(batch) for _ in range(n)]
        t1 = time.perf_counter()
        for frame in sealed:
            receive(frame)
        t2 = time.perf_counter()
        seal_time += t1 - t0
        open_time += t2 - t1
        done += n
        v.messages_consumed(n * per_frame)
        _pump(v, p)  # the venue's ACK: credit back, replay buffer trimmed
        _pump(p, v)
    return frames / seal_time, frames / open_time


def _blake2b(mac: FrameMac, frame: bytes) -> None:
    assert mac.verify(frame, mac.tag(frame))


def _aead(enc: Callable[..., bytes], dec: Callable[..., bytes], nonce: bytes, body: bytes) -> None:
    key, ad = bytes(range(32)), bytes(31)
    dec(enc(body, ad, nonce, key), ad, nonce, key)


def primitives(runs: int, n: int = 20_000) -> dict[str, dict[str, float]]:
    """Microseconds per frame to protect and check a body of 100 B and of 64 x 100 B."""
    mac = FrameMac(bytes(range(32)), bytes(16), 1)
    b = nacl.bindings
    chacha = (
        b.crypto_aead_chacha20poly1305_ietf_encrypt,
        b.crypto_aead_chacha20poly1305_ietf_decrypt,
    )
    xchacha = (
        b.crypto_aead_xchacha20poly1305_ietf_encrypt,
        b.crypto_aead_xchacha20poly1305_ietf_decrypt,
    )
    out: dict[str, dict[str, float]] = {}
    for label, size in (("100B", 100), ("64x100B", 64 * 100)):
        body = bytes(size)
        cases: dict[str, Callable[[], None]] = {
            "blake2b_mac": partial(_blake2b, mac, bytes(14) + body),
            "chacha20poly1305_ietf": partial(_aead, *chacha, bytes(12), body),
            "xchacha20poly1305_ietf": partial(_aead, *xchacha, bytes(24), body),
        }
        for name, fn in cases.items():
            best = float("inf")
            for _ in range(runs):
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                best = min(best, (time.perf_counter() - t0) / n * 1e6)
            out.setdefault(name, {})[label] = best
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200_000, help="frames per run (single)")
    parser.add_argument("--runs", type=int, default=5, help="runs per case; the best is kept")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    for name, per_frame, frames in (
        ("single", 1, args.frames),
        ("batch64", 64, max(1, args.frames // 16)),
    ):
        for mode in ("mac", "aead"):
            runs = [run(frames, per_frame, mode) for _ in range(args.runs)]
            results[f"{name}/{mode}"] = {
                "seal_frames_per_s": max(r[0] for r in runs),
                "open_frames_per_s": max(r[1] for r in runs),
                "frames": frames,
            }
    prims = primitives(args.runs)
    if args.json:
        print(json.dumps({**results, "primitives_us_per_frame": prims}))
        return
    print(f"{'case':<16}{'seal frames/s':>16}{'open frames/s':>16}{'seal+open us':>16}")
    for name, r in results.items():
        us = 1e6 / r["seal_frames_per_s"] + 1e6 / r["open_frames_per_s"]
        print(
            f"{name:<16}{r['seal_frames_per_s']:>16,.0f}{r['open_frames_per_s']:>16,.0f}{us:>16.2f}"
        )
    print(f"\n{'protect + check, us/frame':<28}{'100 B':>10}{'64 x 100 B':>12}")
    for name, by_size in prims.items():
        print(f"{name:<28}{by_size['100B']:>10.2f}{by_size['64x100B']:>12.2f}")


if __name__ == "__main__":
    main()
