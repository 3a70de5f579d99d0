"""Key schedule: the root key of a connection, its DH rekeys, and per-direction key epochs.

Two objects (docs/protocol.md, "Key schedule" and "Key rotation"):

* :class:`KeySchedule` holds a connection's root key and handshake hash.  It
  turns the handshake's key exchange into the first chain key of each
  direction and the next resume secret, and every DH rekey into the next ones
  (:class:`ChainKeys`).  Nothing else ever sees the root key.
* :class:`EpochKeys` holds one direction's key epoch: the chain key, the frame
  key of the current epoch (a MAC or an AEAD, by the connection's mode), and a
  chain key a DH rekey installed for the next epoch.  Its state
  (:class:`KeyState`) says which key epoch + 1 will use::

      STEADY  --install_pending()-->  DH_PENDING
      STEADY  --advance()-------->    STEADY       (tier-1 step: chain.step())
      DH_PENDING --advance()----->    STEADY       (tier-2 switch to the DH chain)

  Epochs only ever move by one, and every epoch number is used at most once.
"""

from __future__ import annotations

import enum
from typing import Final

import attrs

from .._config import MODE_MAC
from .._errors import CloseCode, SessionError
from . import _crypto as c
from ._types import DIR_C2V

__all__ = ["MAX_EPOCH", "ChainKeys", "EpochKeys", "KeySchedule", "KeyState"]

#: Highest key epoch; a key change beyond it ends the session (SESSION_EXPIRED).
MAX_EPOCH: Final = 2**32 - 2


@attrs.frozen(repr=False)
class ChainKeys:
    """What one derivation step yields: both directions' chain keys and a resume secret."""

    c2v: c.ChainKey
    v2c: c.ChainKey
    resume: bytes

    def for_direction(self, direction: int) -> c.ChainKey:
        return self.c2v if direction == DIR_C2V else self.v2c

    def __repr__(self) -> str:
        return "<ChainKeys (hidden)>"


class KeySchedule:
    """A connection's root key and handshake hash ``th``; derives chains and resume secrets.

    ``th`` is public (both ends compute it; the known-answer vectors show it);
    the root key never leaves this object.
    """

    __slots__ = ("_root", "th")

    def __init__(self, root: bytes, th: bytes) -> None:
        self._root = root
        self.th = th

    @classmethod
    def from_handshake(
        cls, kx_c2v: bytes, kx_v2c: bytes, th: bytes, resume_k: bytes | None
    ) -> tuple[KeySchedule, ChainKeys]:
        """Root, epoch-0 chains and the next resume secret of a completed handshake.

        ``resume_k`` is the resume secret a resume's binder proved, mixed in so a
        resumed connection's keys need both the fresh DH and the old session.
        """
        mix = c.h(kx_c2v, kx_v2c) if resume_k is None else c.h(kx_c2v, kx_v2c, resume_k)
        root = c.kdf(mix, c.L_ROOT, th)
        return cls(root, th), cls._chains(root, th)

    def rekey(
        self, rekey_id: int, e_v: bytes, e_p: bytes, kx_c2v: bytes, kx_v2c: bytes
    ) -> ChainKeys:
        """Mix a DH rekey into the root; returns the next epoch's chains and resume secret."""
        th_r = c.h(self.th, c.u32(rekey_id), e_v, e_p)
        self._root = c.kdf(self._root, c.L_DH, kx_c2v + kx_v2c + th_r)
        return self._chains(self._root, th_r)

    @staticmethod
    def _chains(root: bytes, context: bytes) -> ChainKeys:
        return ChainKeys(
            c.ChainKey(c.kdf(root, c.L_CK_C2V, context)),
            c.ChainKey(c.kdf(root, c.L_CK_V2C, context)),
            c.kdf(root, c.L_RESUME, context),
        )

    def __repr__(self) -> str:
        return "<KeySchedule (keys hidden)>"


class KeyState(enum.Enum):
    """Where epoch + 1 of a direction gets its key from."""

    STEADY = "steady"  # a tier-1 step of the current chain
    DH_PENDING = "dh_pending"  # the chain a DH rekey installed


class EpochKeys:
    """One direction's keys on one connection: epoch, chain, frame key, pending DH chain.

    ``mode`` decides what protects the frames (``"mac"`` or ``"aead"``); both modes
    derive their epoch keys from the same chains, so rekeys and ratchets are one
    mechanism.

    The sender's side counts ``frames_in_epoch`` (a sender steps only after at
    least one frame in the epoch, so a receiver never sees a gap of epochs) and
    ``epoch_started`` (for the tier-1 timer).
    """

    __slots__ = (
        "chain",
        "direction",
        "epoch",
        "epoch_started",
        "frame_key",
        "frames_in_epoch",
        "mode",
        "pending",
        "session_id",
    )

    def __init__(
        self,
        direction: int,
        session_id: bytes,
        chain: c.ChainKey,
        now: float,
        mode: str = MODE_MAC,
    ) -> None:
        self.direction = direction
        self.session_id = session_id
        self.mode = mode
        self.epoch = 0
        self.chain = chain
        self.frame_key = c.frame_key(mode, chain, session_id, direction, 0)
        self.pending: c.ChainKey | None = None
        self.frames_in_epoch = 0
        self.epoch_started = now

    @property
    def state(self) -> KeyState:
        return KeyState.STEADY if self.pending is None else KeyState.DH_PENDING

    def candidate(self) -> tuple[c.ChainKey, c.FrameKey]:
        """Keys of epoch + 1: the pending DH chain if one is installed, else a ratchet step."""
        chain = self.pending if self.pending is not None else self.chain.step()
        key = c.frame_key(self.mode, chain, self.session_id, self.direction, self.epoch + 1)
        return chain, key

    def install_pending(self, chain: c.ChainKey) -> None:
        """A DH rekey produced the chain of epoch + 1 (STEADY -> DH_PENDING)."""
        self.pending = chain

    def advance(self, chain: c.ChainKey, frame_key: c.FrameKey, now: float) -> bool:
        """Switch to epoch + 1 with the keys :meth:`candidate` gave; True for a DH switch.

        The old key is gone afterwards.  Raises SESSION_EXPIRED past MAX_EPOCH.
        """
        tier2 = self.pending is not None
        if self.epoch >= MAX_EPOCH:
            raise SessionError(
                "key epoch space exhausted; start a new session", code=CloseCode.SESSION_EXPIRED
            )
        self.epoch += 1
        self.chain, self.frame_key, self.pending = chain, frame_key, None
        self.frames_in_epoch = 0
        self.epoch_started = now
        return tier2

    def switch_to(self, chain: c.ChainKey, now: float) -> None:
        """Sender after a DH rekey: the next frame goes out in epoch + 1 under ``chain``."""
        self.install_pending(chain)
        self.advance(*self.candidate(), now)

    def __repr__(self) -> str:
        return f"<EpochKeys dir={self.direction} epoch={self.epoch} {self.mode} {self.state.value}>"
