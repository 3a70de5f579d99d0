"""What a session store keeps, and what it is asked to do.

A store keeps, per logical session, exactly what a restarted process needs to
resume it (never the identity's private key):

* :class:`StoredState`: ids, sequence state both ways, the resume secrets by
  generation (and recently spent ones), the lifecycle status and detach time,
  how far the outbound journal was sealed into frames, and the redelivery
  bound;
* the **frames**: DATA frames sent (or about to be) and not yet acknowledged,
  by their first data sequence number, retransmitted after a resume;
* the **journal**: lossless messages ``send()`` accepted that are not yet in a
  frame, numbered in queue order (journal numbers ``j``).

The runtime hands a store batches of :class:`SessionWrite`; each is applied
atomically and is durable (by the store's sync policy) when
:meth:`SessionStore.write` returns.  A store is keyed by :attr:`StoredState.key`:
the session id on the venue, the participant's key id and the venue's key on
the participant (so a session replaced after a refused resume keeps its key,
and with it its journal).
"""

# No ``from __future__ import annotations``: these Structs are documented with
# their field types, which tools resolve from the public ``trio_session.store``.
import enum
from typing import Final

import attrs
import msgspec

from ..protocol import Role, SessionRecord
from ..protocol._record import MAX_SPENT_SECRETS, SNAPSHOT_VERSION

__all__ = [
    "JournalEntry",
    "ReplayEntry",
    "SessionStatus",
    "SessionWrite",
    "StoreContents",
    "StoredSession",
    "StoredState",
    "decode_messages",
    "decode_state",
    "encode_messages",
    "encode_state",
    "participant_key",
]

#: One DATA frame: (data seq of its first message, the messages, frame flags).
ReplayEntry = tuple[int, list[bytes], int]
#: One item ``send()`` accepted: (journal number of its first message, the messages).
JournalEntry = tuple[int, list[bytes]]


class SessionStatus(enum.Enum):
    """Where a stored session is in its life (what a restarted venue does with it)."""

    #: A connection was attached (or the session was just created).  After a
    #: crash, its detach time is the venue's last liveness stamp.
    ATTACHED = "attached"
    #: The connection was lost at ``detached_at``: resumable within ``resume_ttl``.
    DETACHED = "detached"
    #: Ended without a logout (the dead man's switch fired, or a failure);
    #: ``on_session_lost`` is owed until the entry is gone.
    LOST = "lost"
    #: The participant logged out; ``on_logout`` is owed until the entry is gone.
    LOGGED_OUT = "logged_out"


def participant_key(key_id: str, venue_public_key: bytes) -> str:
    """The store key of a participant's session with one venue."""
    return f"{key_id}@{venue_public_key.hex()}"


class StoredState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The scalar part of a stored session (secrets never appear in its repr)."""

    session_id: bytes
    key_id: str
    role: Role
    #: Participant: the venue's public key (hex) the session belongs to; venue: "".
    peer: str
    status: SessionStatus
    #: Wall-clock seconds of the detach (``DETACHED``), else None.
    detached_at: float | None
    #: Wall-clock seconds of this write.
    updated_at: float
    #: Data seq of our next message (every frame below it is stored or acknowledged).
    next_tx_seq: int
    #: The peer's messages our application committed: the resume position.
    rx_committed: int
    peer_ack: int
    peer_window: int
    resume_secrets: tuple[tuple[int, bytes], ...]
    spent_secrets: tuple[bytes, ...]
    compromised: bool
    #: Journal numbers below this are sealed into frames (or acknowledged).
    journal_done: int
    #: The peer's messages below this seq may have reached the application
    #: before a restart: delivered again, they are flagged as redeliveries.
    redeliver_before: int

    def __repr__(self) -> str:
        return (
            f"<StoredState {self.session_id.hex()} {self.role.value} {self.status.value} "
            f"tx={self.next_tx_seq} rx={self.rx_committed} gen={self.resume_gen}>"
        )

    @property
    def key(self) -> str:
        """The store key (see the module docstring)."""
        if self.role is Role.PARTICIPANT:
            return f"{self.key_id}@{self.peer}"
        return self.session_id.hex()

    @property
    def resume_gen(self) -> int:
        """The newest resume secret generation held (-1 when none)."""
        return max((gen for gen, _ in self.resume_secrets), default=-1)

    @classmethod
    def of(
        cls,
        record: SessionRecord,
        *,
        peer: str,
        status: SessionStatus,
        detached_at: float | None,
        updated_at: float,
        rx_committed: int,
        journal_done: int,
        redeliver_before: int,
    ) -> "StoredState":
        """The state to store for ``record`` (whose replay buffer is stored as frames)."""
        return cls(
            session_id=record.session_id,
            key_id=record.key_id,
            role=record.role,
            peer=peer,
            status=status,
            detached_at=detached_at,
            updated_at=updated_at,
            next_tx_seq=record.next_tx_seq,
            rx_committed=rx_committed,
            peer_ack=record.peer_ack,
            peer_window=record.peer_window,
            resume_secrets=tuple(record.resume_secrets.items()),
            spent_secrets=tuple(record.spent_secrets[-MAX_SPENT_SECRETS:]),
            compromised=record.compromised,
            journal_done=journal_done,
            redeliver_before=redeliver_before,
        )


class SessionWrite(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One session's changes in a :meth:`SessionStore.write` batch, applied atomically.

    ``state`` replaces the stored state (None deletes the session with its frames
    and journal).  ``frames`` are new DATA frames, in order; frames that end at or
    below ``trim_below`` are acknowledged and may be deleted (lazily: a store
    may keep them, the runtime trims on load).  ``journal`` entries are new; the
    ones wholly below ``state.journal_done`` are sealed and need not be kept.
    ``replace`` starts a new logical session under the key: older frames go.

    A msgspec Struct: a store may encode a whole batch as it is.
    """

    key: str
    state: StoredState | None
    frames: list[ReplayEntry] = []
    trim_below: int = 0
    journal: list[JournalEntry] = []
    replace: bool = False

    def __repr__(self) -> str:
        return (
            f"<SessionWrite {self.key} {self.state!r} frames={len(self.frames)} "
            f"journal={len(self.journal)} trim_below={self.trim_below}>"
        )


@attrs.frozen(repr=False)
class StoredSession:
    """One session as loaded from a store."""

    state: StoredState
    #: Stored frames, oldest first (some may already be acknowledged).
    frames: list[ReplayEntry]
    #: Journal entries not wholly sealed, by journal number.
    journal: list[JournalEntry]

    def __repr__(self) -> str:
        return f"<StoredSession {self.state!r} frames={len(self.frames)}>"

    @property
    def key(self) -> str:
        return self.state.key

    def record(self) -> SessionRecord:
        """The session record to resume, validated like any snapshot.

        Raises ValueError naming the problem for a record that is not
        consistent (a store entry damaged or written by something else).
        """
        s = self.state
        frames = [(first, msgs, flags) for first, msgs, flags in self.frames]
        record = SessionRecord.from_snapshot(
            {
                "version": SNAPSHOT_VERSION,
                "session_id": s.session_id,
                "key_id": s.key_id,
                "role": s.role.value,
                "next_tx_seq": s.next_tx_seq,
                "next_rx_seq": s.rx_committed,
                "rx_consumed": s.rx_committed,
                "peer_ack": min(s.peer_ack, s.next_tx_seq),
                "peer_window": s.peer_window,
                "replay": frames,
                "resume_secrets": [list(pair) for pair in s.resume_secrets],
                "spent_secrets": list(s.spent_secrets),
                "compromised": s.compromised,
            }
        )
        record.trim(record.peer_ack)
        return record

    def unsent(self) -> list[bytes]:
        """Lossless messages ``send()`` accepted that were never sealed, in order."""
        done = self.state.journal_done
        out: list[bytes] = []
        expected = None
        for j, msgs in self.journal:
            if expected is not None and j != expected:
                raise ValueError(f"journal entry {j} leaves a gap (expected {expected})")
            expected = j + len(msgs)
            if expected > done:
                out.extend(msgs[max(0, done - j) :])
        return out


@attrs.frozen
class StoreContents:
    """What :meth:`SessionStore.load` returns."""

    sessions: list[StoredSession]
    #: The last liveness stamp a venue wrote (wall-clock seconds), if any.
    alive_at: float | None


_encode: Final = msgspec.msgpack.Encoder().encode
_state_decoder: Final = msgspec.msgpack.Decoder(StoredState)
_messages_decoder: Final = msgspec.msgpack.Decoder(list[bytes])


def encode_state(state: StoredState) -> bytes:
    return _encode(state)


def decode_state(data: bytes) -> StoredState:
    """Raises ValueError for anything that is not a valid stored state."""
    try:
        return _state_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"invalid stored session state: {exc}") from None


def encode_messages(msgs: list[bytes]) -> bytes:
    return _encode(msgs)


def decode_messages(data: bytes) -> list[bytes]:
    """Raises ValueError for anything that is not a list of messages."""
    try:
        return _messages_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"invalid stored messages: {exc}") from None
