"""The logical-session record: everything a session needs to survive its connection.

A connection ends; the session goes on.  What makes a resume possible is this
record, kept by the runtime (and, with a durable store, on disk or in a shared
cache) while no connection is attached:

* identity: ``session_id``, ``key_id``, ``role``;
* both data sequence spaces: ``next_tx_seq`` (our next message), ``next_rx_seq``
  (the peer's next message), ``rx_consumed`` (how many of the peer's messages
  the application took: the base of the credit window we grant);
* what the peer told us: ``peer_ack`` (everything below it arrived) and
  ``peer_window`` (the credit it granted);
* ``rx_held_bytes``: payload bytes of the peer's messages received and not yet
  consumed (counted by whole DATA frames), which bounds the credit we grant.
  Not part of a snapshot: the messages themselves live in the runtime's queue;
* the replay buffer: messages sent and not yet acknowledged, retransmitted by
  their original seqs after a resume;
* resume secrets by generation, and recently spent ones (to recognise a
  replayed resume binder);
* ``compromised``: never resume this session again;
* with a durable store, ``rx_stable``: the peer's messages the application
  committed and the store recorded.  Acknowledgements, credit and the resume
  position never go beyond it, so that a crash cannot lose a message the peer
  was told it may forget.

It is plain data on purpose: the protocol machines update it in place on the
hot path, and :meth:`SessionRecord.to_snapshot` / :meth:`SessionRecord.from_snapshot`
turn it into plain values and back so that a store can persist it.
"""

from __future__ import annotations

from collections import deque
from typing import Annotated, Any, Final, Literal

import attrs
import msgspec

from .._errors import LocalProtocolError
from ._empty import EMPTY
from ._types import Role
from ._wire import SEQ_LIMIT

__all__ = ["MAX_SPENT_SECRETS", "SNAPSHOT_VERSION", "SessionRecord", "SessionState"]

#: How many replaced resume secrets the venue remembers to detect a reused binder.
MAX_SPENT_SECRETS: Final = 8
#: Version of the :meth:`SessionRecord.to_snapshot` layout.
SNAPSHOT_VERSION: Final = 1

#: One replay entry: (data seq of the first message, the messages, DATA frame flags).
ReplayEntry = tuple[int, list[bytes], int]

#: The replay buffer and held frames of a record that has none yet: the shared,
#: read-only empty deque (``_empty.py``), replaced by the record's own on its first
#: entry (:meth:`SessionRecord.add_replay`, :meth:`SessionRecord.hold`).
NO_ENTRIES: Final[deque[Any]] = EMPTY


@attrs.define(eq=False, repr=False)
class SessionRecord:
    """The logical session: survives connections so it can be resumed.

    The protocol machines own the updates; the runtime reads the fields, and
    may lower ``rx_consumed`` bookkeeping or set ``compromised`` while no
    connection is attached.  Secrets never appear in the repr.
    """

    #: 16 random bytes chosen by the venue in the handshake.
    session_id: bytes
    #: The participant's key id (on both sides).
    key_id: str
    #: Our role in this session.
    role: Role
    #: Data seq of the next message we send.
    next_tx_seq: int = 0
    #: Data seq of the next message we expect from the peer.
    next_rx_seq: int = 0
    #: How many of the peer's messages the application consumed (<= ``next_rx_seq``).
    rx_consumed: int = 0
    #: The peer's latest acknowledgement (every message of ours below it arrived).
    peer_ack: int = 0
    #: The peer's latest credit (we may send messages with seq below it).
    peer_window: int = 0
    #: Payload bytes of the peer's DATA frames not yet wholly consumed, and those
    #: frames as (data seq after the frame, payload bytes), oldest first.
    rx_held_bytes: int = 0
    rx_frames: deque[tuple[int, int]] = attrs.field(default=NO_ENTRIES)
    #: Sent, unacknowledged messages, one entry per DATA frame, oldest first.
    replay: deque[ReplayEntry] = attrs.field(default=NO_ENTRIES)
    #: Messages and payload bytes in ``replay`` (kept so limits cost nothing).
    replay_messages: int = 0
    replay_bytes: int = 0
    #: Resume secrets by generation (one, or two while the participant is unsure
    #: which one the venue holds; docs/protocol.md, "Resume secret generations").
    resume_secrets: dict[int, bytes] = attrs.field(factory=dict)
    #: Recently replaced resume secrets (venue), to refuse a replayed binder.
    spent_secrets: list[bytes] = attrs.field(factory=list)
    #: Set by the participant's supervisor when the venue said REAUTHENTICATE:
    #: the session must never be resumed (a fresh one is started instead).
    compromised: bool = False
    #: Durable store: the peer's messages committed by the application and
    #: recorded by the store (acks and credit stop there).  None without a
    #: durable store: we acknowledge what we received.  Never in a snapshot.
    rx_stable: int | None = None
    #: The highest ``next_rx_seq`` this record reached: after a resume that
    #: offered less (:meth:`resume_at`), the retransmitted messages below it are
    #: already held and are dropped as duplicates.  Never in a snapshot.
    rx_dedup: int = 0

    def __repr__(self) -> str:
        return (
            f"<SessionRecord {self.session_id.hex()} {self.role.value} key_id={self.key_id!r} "
            f"tx={self.next_tx_seq} rx={self.next_rx_seq} unacked={self.replay_messages}>"
        )

    # -- replay buffer ---------------------------------------------------------------

    def trim(self, ack: int) -> None:
        """Drop replay entries the peer has acknowledged (all seq < ``ack``)."""
        replay = self.replay
        while replay:
            first, msgs, flags = replay[0]
            end = first + len(msgs)
            if end <= ack:
                replay.popleft()
                self.replay_messages -= len(msgs)
                self.replay_bytes -= sum(map(len, msgs))
            elif first < ack:
                cut = ack - first
                dropped = msgs[:cut]
                replay[0] = (ack, msgs[cut:], flags)
                self.replay_messages -= cut
                self.replay_bytes -= sum(map(len, dropped))
                break
            else:
                break
        if ack > self.peer_ack:
            self.peer_ack = ack

    def add_replay(self, entry: ReplayEntry) -> None:
        """A DATA frame's messages were sent: keep them until acknowledged (the
        caller counts ``replay_messages`` and ``replay_bytes``)."""
        replay = self.replay
        if replay is NO_ENTRIES:
            replay = self.replay = deque()
        replay.append(entry)

    def unacked_from(self, seq: int) -> list[ReplayEntry]:
        """Replay entries with seq >= ``seq`` (for retransmission)."""
        out = []
        for first, msgs, flags in self.replay:
            if first + len(msgs) <= seq:
                continue
            if first < seq:
                msgs = msgs[seq - first :]
                first = seq
            out.append((first, msgs, flags))
        return out

    def hold(self, end_seq: int, nbytes: int) -> None:
        """Messages of ``nbytes`` payload bytes up to data seq ``end_seq`` (exclusive)
        were delivered: they are held until consumed."""
        self.rx_held_bytes += nbytes
        frames = self.rx_frames
        if frames is NO_ENTRIES:
            frames = self.rx_frames = deque()
        frames.append((end_seq, nbytes))

    @property
    def rx_held_until(self) -> int:
        """The data seq after the last message held (received, even if a resume
        since asked the peer to send some of them again)."""
        return max(self.next_rx_seq, self.rx_dedup)

    def consume(self, n: int) -> None:
        """The application took ``n`` more of the peer's messages.

        A frame's bytes are released once all its messages are consumed (an
        upper bound of what is held, exact for a runtime that consumes by frame).
        """
        if n < 0 or self.rx_consumed + n > self.rx_held_until:
            raise LocalProtocolError("consumed more messages than were received")
        consumed = self.rx_consumed = self.rx_consumed + n
        frames = self.rx_frames
        while frames and frames[0][0] <= consumed:
            self.rx_held_bytes -= frames.popleft()[1]

    # -- the receiving position -------------------------------------------------------

    @property
    def ack_position(self) -> int:
        """What we acknowledge and offer to resume from: every message below it is
        safe with us (received; with a durable store, committed and recorded)."""
        stable = self.rx_stable
        return self.next_rx_seq if stable is None else stable

    @property
    def credit_base(self) -> int:
        """The base of the credit window we grant (``window = base + credit``).

        With a durable store it is the stable position, so that no window we
        ever advertised is larger than the one a restarted process grants.
        """
        stable = self.rx_stable
        return self.rx_consumed if stable is None else stable

    def resume_at(self, position: int) -> None:
        """A resume told the peer to retransmit from ``position``: expect it next.

        Messages between ``position`` and what we already received are held
        already; their retransmitted copies are dropped (see ``rx_dedup``).
        """
        held = self.rx_held_until
        if position > held:
            raise LocalProtocolError(f"resume position {position} beyond what we received")
        self.rx_dedup = held
        self.next_rx_seq = position

    # -- resume secrets ----------------------------------------------------------------

    @property
    def resume_gen(self) -> int:
        """The newest resume secret generation held (-1 when none)."""
        return max(self.resume_secrets, default=-1)

    def install_resume_secret(self, gen: int, secret: bytes, *, keep_previous: bool) -> None:
        """Install resume secret generation ``gen``.

        The venue forgets the previous ones at once (remembering them as spent to
        detect binder reuse); the participant keeps the previous one after a DH
        rekey until the venue is known to have switched, because a drop in
        between leaves it unsure which one the venue holds.
        """
        if not keep_previous:
            self.spent_secrets.extend(self.resume_secrets.values())
            del self.spent_secrets[:-MAX_SPENT_SECRETS]
            self.resume_secrets.clear()
        self.resume_secrets[gen] = secret

    def keep_accepted_generation(self, accepted: int, gen: int, secret: bytes) -> None:
        """Participant after a resume: hold the accepted generation and the new one.

        If M3 is lost the venue still holds ``accepted``; the venue's first
        authenticated frame proves it moved on (:meth:`confirm_latest_resume_secret`).
        """
        self.resume_secrets = {accepted: self.resume_secrets[accepted]}
        self.install_resume_secret(gen, secret, keep_previous=True)

    def confirm_latest_resume_secret(self) -> None:
        """The peer provably holds the newest generation: forget the older one."""
        if len(self.resume_secrets) > 1:
            latest = max(self.resume_secrets)
            self.resume_secrets = {latest: self.resume_secrets[latest]}

    # -- snapshots -----------------------------------------------------------------------

    def to_snapshot(self) -> dict[str, Any]:
        """The record as plain values (bytes, int, str, bool, lists), for a store.

        The result shares nothing mutable with the record.  msgpack encodes it
        as it is; JSON needs the bytes values encoded (e.g. base64).  The replay
        counters are not stored: :meth:`from_snapshot` recomputes them.
        """
        return {
            "version": SNAPSHOT_VERSION,
            "session_id": self.session_id,
            "key_id": self.key_id,
            "role": self.role.value,
            "next_tx_seq": self.next_tx_seq,
            "next_rx_seq": self.next_rx_seq,
            "rx_consumed": self.rx_consumed,
            "peer_ack": self.peer_ack,
            "peer_window": self.peer_window,
            "replay": [[first, list(msgs), flags] for first, msgs, flags in self.replay],
            "resume_secrets": [[gen, secret] for gen, secret in self.resume_secrets.items()],
            "spent_secrets": list(self.spent_secrets),
            "compromised": self.compromised,
        }

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any]) -> SessionRecord:
        """Rebuild a record from :meth:`to_snapshot` output.

        Raises ValueError naming the field for anything that is not a valid
        record (wrong types, bounds, a replay buffer with gaps), so a corrupted
        store entry is refused instead of resumed.
        """
        try:
            snap = msgspec.convert(snapshot, _Snapshot)
        except msgspec.ValidationError as exc:
            raise ValueError(f"invalid session snapshot: {exc}") from None
        _check_consistency(snap)
        replay: deque[ReplayEntry] = deque((first, list(msgs), f) for first, msgs, f in snap.replay)
        return cls(
            snap.session_id,
            snap.key_id,
            Role(snap.role),
            next_tx_seq=snap.next_tx_seq,
            next_rx_seq=snap.next_rx_seq,
            rx_consumed=snap.rx_consumed,
            peer_ack=snap.peer_ack,
            peer_window=snap.peer_window,
            replay=replay,
            replay_messages=sum(len(msgs) for _, msgs, _ in replay),
            replay_bytes=sum(sum(map(len, msgs)) for _, msgs, _ in replay),
            resume_secrets=dict(snap.resume_secrets),
            spent_secrets=list(snap.spent_secrets),
            compromised=snap.compromised,
        )


#: The name before the rename (it collided with ``State`` and ``ConnectionState``).
SessionState = SessionRecord

_Seq = Annotated[int, msgspec.Meta(ge=0, le=SEQ_LIMIT - 1)]
_Secret = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]


class _Snapshot(msgspec.Struct, forbid_unknown_fields=True):
    """The validated shape of a snapshot."""

    version: Literal[1]
    session_id: Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
    key_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    role: Literal["participant", "venue"]
    next_tx_seq: _Seq
    next_rx_seq: _Seq
    rx_consumed: _Seq
    peer_ack: _Seq
    peer_window: _Seq
    replay: list[tuple[_Seq, Annotated[list[bytes], msgspec.Meta(min_length=1)], int]]
    resume_secrets: list[tuple[Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)], _Secret]]
    spent_secrets: Annotated[list[_Secret], msgspec.Meta(max_length=MAX_SPENT_SECRETS)]
    compromised: bool


def _check_consistency(snap: _Snapshot) -> None:
    """Relations between fields that the types alone cannot express."""
    if snap.rx_consumed > snap.next_rx_seq:
        raise ValueError("invalid session snapshot: rx_consumed is beyond next_rx_seq")
    if snap.peer_ack > snap.next_tx_seq:
        raise ValueError("invalid session snapshot: peer_ack is beyond next_tx_seq")
    expected = None
    for first, msgs, _flags in snap.replay:
        if expected is not None and first != expected:
            raise ValueError(f"invalid session snapshot: replay entry at seq {first} leaves a gap")
        expected = first + len(msgs)
    if expected is not None and expected != snap.next_tx_seq:
        raise ValueError("invalid session snapshot: replay buffer does not end at next_tx_seq")
