"""One error hierarchy for everything trio_session raises.

Why a taxonomy and not just messages: a supervisor must decide, from the error
alone, whether to resume, re-authenticate, wait, or give up.  Every error
therefore carries a :class:`CloseCode` (what goes on the wire) and through it a
:class:`Category` (what a supervisor should do).  Blame is explicit, as in h11:
:class:`LocalProtocolError` means *we* misused the API, :class:`RemoteProtocolError`
means the peer sent something invalid.

Messages never contain key material: errors are built from codes, lengths and
sequence numbers only.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

__all__ = [
    "AuthenticationError",
    "Category",
    "CloseCode",
    "ConnectionLost",
    "ControlFlood",
    "FrameError",
    "HandshakeTimeout",
    "HeartbeatTimeout",
    "InDoubt",
    "IntegrityError",
    "InvalidMessage",
    "LocalProtocolError",
    "MemoryBudgetExceeded",
    "MessageRejected",
    "ProtocolError",
    "RateLimited",
    "RejectCode",
    "Rejected",
    "RekeyTimeout",
    "RemoteProtocolError",
    "ResumeRefused",
    "SequenceError",
    "SessionClosed",
    "SessionError",
    "SessionExpired",
    "SessionReset",
    "SlowConsumer",
    "StoreError",
    "TooManySessions",
]


class Category(enum.Enum):
    """What a supervisor should do after a session ends with a given close code."""

    #: Ended on purpose (graceful logout); do not restart.
    CLOSED = "closed"
    #: The logical session is intact on both sides: reconnect and resume it.
    RESUMABLE = "resumable"
    #: The logical session is gone: reconnect with a fresh handshake (new session).
    REAUTHENTICATE = "reauthenticate"
    #: The venue asked us to wait (``retry_after``) before trying again.
    RATE_LIMITED = "rate_limited"
    #: Retrying cannot help (bad credentials, revoked key, version mismatch).
    FATAL = "fatal"


class CloseCode(enum.IntEnum):
    """Close reasons carried in CLOSE and REJECT frames (u16 on the wire).

    The numeric ranges are part of the protocol (docs/protocol.md, "Close codes"):
    0-99 session lifecycle, 100-199 resumable faults, 200-299 reauthenticate,
    300-399 fatal, 400-499 rate limiting.
    """

    NORMAL = 0
    #: Reserved: this implementation never sends it (a venue that stops just drops
    #: its connections, and participants try to resume); received, it means
    #: "reauthenticate".
    GOING_AWAY = 1

    PROTOCOL_ERROR = 100
    INTEGRITY_FAILURE = 101
    SEQUENCE_ERROR = 102
    HEARTBEAT_TIMEOUT = 103
    REKEY_TIMEOUT = 104
    CONNECTION_LOST = 105
    HANDSHAKE_TIMEOUT = 106

    RESUME_REFUSED = 200
    #: Reserved: never sent; a sender's window stops at its replay limits
    #: (``replay_max_messages``, ``replay_max_bytes``) instead of overflowing.
    REPLAY_OVERFLOW = 201
    SLOW_CONSUMER = 202
    HANDLER_ERROR = 203
    INTERNAL_ERROR = 204
    SESSION_EXPIRED = 205
    #: The venue shed the session: its buffers held the most bytes when all sessions
    #: together reached the venue's ``max_buffered_bytes``.
    MEMORY_BUDGET = 206
    #: The peer sent control frames faster than ``control_frame_rate`` allows.
    CONTROL_FLOOD = 207

    AUTH_FAILED = 300
    UNKNOWN_KEY = 301
    KEY_REVOKED = 302
    VERSION_MISMATCH = 303
    BINDER_REUSED = 304
    #: Reserved: never sent (identities are not role-restricted in protocol version 1).
    WRONG_ROLE = 305

    RATE_LIMITED = 400
    #: A new session was refused: the key already has ``max_sessions_per_key``
    #: sessions, none of them detached.
    SESSION_LIMIT = 401

    @property
    def category(self) -> Category:
        """The restart decision this code implies."""
        v = int(self)
        if v < 100:
            return Category.CLOSED if self is CloseCode.NORMAL else Category.REAUTHENTICATE
        if v < 200:
            return Category.RESUMABLE
        if v < 300:
            return Category.REAUTHENTICATE
        if v < 400:
            return Category.FATAL
        return Category.RATE_LIMITED

    @classmethod
    def from_wire(cls, value: int) -> CloseCode:
        """Map a received code to a member; unknown codes degrade by range."""
        try:
            return cls(value)
        except ValueError:
            if 100 <= value < 200:
                return cls.PROTOCOL_ERROR
            if 200 <= value < 300:
                return cls.INTERNAL_ERROR
            if 300 <= value < 400:
                return cls.AUTH_FAILED
            if 400 <= value < 500:
                return cls.RATE_LIMITED
            return cls.INTERNAL_ERROR


@attrs.frozen
class InDoubt:
    """A message that was sent but never acknowledged when continuity was lost.

    The peer may or may not have received it: reconcile it (ask the venue for
    the order's status) rather than assume either way.  Carried by
    :class:`SessionReset` and by the final error of a session that ended
    with messages unacknowledged, in ``in_doubt``.
    """

    #: Its data sequence number in the session it was sent on (the n-th message, from 0).
    seq: int
    #: The message as sent: decoded (a ``messages=`` type) on a typed session, else bytes.
    message: Any
    #: Its encoded bytes.
    payload: bytes = attrs.field(repr=False)


class SessionError(Exception):
    """Root of every error trio_session raises to users.

    Attributes:
        code: the :class:`CloseCode` that describes this failure on the wire.
        remote: True when the peer reported or caused it.
        in_doubt: on :class:`SessionReset` and on the final error of a session
            that ended for good, the messages sent but not acknowledged, oldest
            first (see :class:`InDoubt`); empty otherwise.
        last_delivered_seq: with ``in_doubt``, the data sequence number of the
            last message received from the peer in that session (-1: none);
            None otherwise.
    """

    default_code: CloseCode = CloseCode.INTERNAL_ERROR
    in_doubt: tuple[InDoubt, ...] = ()
    last_delivered_seq: int | None = None

    def __init__(
        self, message: str = "", *, code: CloseCode | None = None, remote: bool = False
    ) -> None:
        super().__init__(message)
        self.code: CloseCode = code if code is not None else self.default_code
        self.remote: bool = remote

    @property
    def category(self) -> Category:
        """What a supervisor should do about this error."""
        return self.code.category


class AuthenticationError(SessionError):
    """A handshake failed to authenticate a peer: bad signature or finish MAC,
    unknown or revoked key, wrong pinned venue key, reused resume binder.

    Fatal (:attr:`Category.FATAL`) with one exception: ``AUTH_FAILED`` on a
    *reconnect* of an established session may be line damage rather than bad
    credentials, so a supervised participant retries it up to
    :attr:`RestartPolicy.auth_retries` times in a row.  The first connect never
    retries, and ``UNKNOWN_KEY``, ``KEY_REVOKED``, ``VERSION_MISMATCH`` and
    ``BINDER_REUSED`` end the session at once.
    """

    default_code = CloseCode.AUTH_FAILED


class ProtocolError(SessionError):
    """The protocol was violated.  Abstract: raise a Local or Remote subclass."""

    default_code = CloseCode.PROTOCOL_ERROR

    def __init__(
        self, message: str = "", *, code: CloseCode | None = None, remote: bool = False
    ) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise LocalProtocolError or RemoteProtocolError instead")
        super().__init__(message, code=code, remote=remote)


class LocalProtocolError(ProtocolError):
    """We (the caller of this library) tried to do something the protocol forbids
    in the current state, e.g. sending data before the handshake."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids.  The session must end; over
    TCP this is an attack or a bug, so the close is resumable."""


class FrameError(RemoteProtocolError):
    """A frame was malformed: truncated, oversized, unknown type or undecodable body."""


class IntegrityError(RemoteProtocolError):
    """A frame's tag did not verify, or it used a key epoch we do not hold."""

    default_code = CloseCode.INTEGRITY_FAILURE


class SequenceError(RemoteProtocolError):
    """A frame arrived out of sequence: replayed, reordered, or after a gap."""

    default_code = CloseCode.SEQUENCE_ERROR


class HeartbeatTimeout(SessionError):
    """The peer stopped answering within ``heartbeat_timeout`` (after a probe)."""

    default_code = CloseCode.HEARTBEAT_TIMEOUT


class RekeyTimeout(SessionError):
    """A DH rekey did not complete before ``reject_after``."""

    default_code = CloseCode.REKEY_TIMEOUT


class HandshakeTimeout(SessionError):
    """The connection or handshake did not complete within ``handshake_timeout``."""

    default_code = CloseCode.HANDSHAKE_TIMEOUT


class ConnectionLost(SessionError):
    """The transport broke (reset, EOF, TLS failure).  Resumable."""

    default_code = CloseCode.CONNECTION_LOST


class ResumeRefused(SessionError):
    """The venue could not resume the session (expired, unknown, buffer lost)."""

    default_code = CloseCode.RESUME_REFUSED


class RejectCode(enum.IntEnum):
    """Why the peer refused one message (the session itself continues)."""

    #: Did not decode or did not match the declared ``messages=`` schema.
    INVALID = 1
    #: Over a rate limit; ``retry_after`` says when to try again.
    RATE_LIMITED = 2
    #: Refused by the application (validation, business rules, handler error).
    REJECTED = 3


@attrs.frozen
class Rejected:
    """The peer refused one of our messages: a value, for code that wants rejects
    in its message loop (:meth:`Session.with_rejects`, ``Router.on_reject``)
    rather than as a :class:`MessageRejected` exception.  The session continues.
    """

    #: Data sequence number of the refused message (the n-th message we sent, from 0).
    ref_seq: int
    #: Why: a :class:`RejectCode` (or the raw value of a code this version does not know).
    code: RejectCode | int
    #: The peer's explanation (at most 200 characters).
    reason: str = ""
    #: Seconds after which the peer may accept it again (``RATE_LIMITED``), if it said.
    retry_after: float | None = None


class MessageRejected(SessionError):
    """The peer refused one of our messages; the session continues.

    Raised by :meth:`Session.receive` in stream order.  ``ref_seq`` is the
    data sequence number of the refused message (as seen by the peer, i.e.
    the n-th message we sent, from 0).  :meth:`Session.with_rejects` yields
    the same as a :class:`Rejected` value instead.
    """

    default_code = CloseCode.PROTOCOL_ERROR

    def __init__(
        self,
        message: str,
        *,
        ref_seq: int,
        reason_code: RejectCode | int,
        reason: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, remote=True)
        self.ref_seq = ref_seq
        try:
            self.reason_code: RejectCode | int = RejectCode(reason_code)
        except ValueError:
            self.reason_code = reason_code
        self.reason = reason
        self.retry_after = retry_after

    @property
    def rejected(self) -> Rejected:
        """The same reject as a value."""
        return Rejected(self.ref_seq, self.reason_code, self.reason, self.retry_after)


class InvalidMessage(SessionError):
    """A received message did not match the declared ``messages=`` schema.

    Only that message is rejected (the peer gets :class:`MessageRejected` with
    ``RejectCode.INVALID``); the session continues.  ``seq`` is the data
    sequence number of the offending message.
    """

    default_code = CloseCode.PROTOCOL_ERROR

    def __init__(self, message: str, *, seq: int) -> None:
        super().__init__(message, remote=True)
        self.seq = seq


class SessionReset(SessionError):
    """The logical session was replaced by a new one: continuity is broken.

    Raised once by :meth:`Session.receive` when a resume was impossible and a
    fresh session was established instead, after every message received on the
    old session.  ``in_doubt`` lists the messages sent on the old session that
    the venue never acknowledged (it may or may not have them: reconcile exactly
    those), and ``last_delivered_seq`` is the sequence number of the last message
    received from the old session.  Whatever the peer sent after that is lost:
    resync snapshots.  Messages still queued (never sent) go out on the new session.
    """

    default_code = CloseCode.RESUME_REFUSED

    def __init__(
        self,
        message: str = "",
        *,
        in_doubt: tuple[InDoubt, ...] = (),
        last_delivered_seq: int = -1,
    ) -> None:
        super().__init__(message)
        self.in_doubt = in_doubt
        self.last_delivered_seq = last_delivered_seq


class RateLimited(SessionError):
    """The venue refused the handshake for now; retry after ``retry_after`` seconds."""

    default_code = CloseCode.RATE_LIMITED

    def __init__(
        self,
        message: str = "",
        *,
        retry_after: float = 1.0,
        code: CloseCode | None = None,
        remote: bool = True,
    ) -> None:
        super().__init__(message, code=code, remote=remote)
        self.retry_after = retry_after


class SessionClosed(SessionError):
    """The session is closed: by us (``remote=False``) or by the peer, with a code.

    Also raised when using a session after :meth:`Session.aclose`.
    """

    default_code = CloseCode.NORMAL

    def __init__(
        self,
        message: str = "",
        *,
        code: CloseCode | None = None,
        remote: bool = False,
        reason: str = "",
    ) -> None:
        super().__init__(message, code=code, remote=remote)
        self.reason = reason


class SlowConsumer(SessionClosed):
    """The venue closed the session because the participant stopped consuming
    (``SLOW_CONSUMER``): its outbound queue stayed full, or a write to it stayed
    blocked, for ``slow_consumer_timeout``.

    Raised on both sides: on the venue (``remote=False``) to the handler and its
    pending :meth:`~Session.send`, on the participant (``remote=True``) after
    every message received before the close.  A supervised participant starts a
    new session (:class:`SessionReset`); it is a :class:`SessionClosed`, so code
    that catches that keeps working.
    """

    default_code = CloseCode.SLOW_CONSUMER


class MemoryBudgetExceeded(SessionClosed):
    """The venue shed the session (``MEMORY_BUDGET``): the bytes buffered by all its
    sessions reached ``max_buffered_bytes`` and this one held the most.

    Its queued messages are dropped at once, so the venue's memory comes back; a
    participant that receives it starts a new session (:class:`SessionReset`:
    resync and reconcile).  It is a :class:`SessionClosed`.
    """

    default_code = CloseCode.MEMORY_BUDGET


class ControlFlood(SessionClosed):
    """The peer sent control frames (acks, heartbeats, rekey frames ...) faster than
    ``control_frame_rate`` beyond what our own traffic calls for
    (``CONTROL_FLOOD``): the session is ended, not resumed.  It is a
    :class:`SessionClosed`.
    """

    default_code = CloseCode.CONTROL_FLOOD


class TooManySessions(RateLimited):
    """The venue refused a new session (``SESSION_LIMIT``): the key already has
    ``max_sessions_per_key`` sessions and none of them is detached.  Retry after
    ``retry_after`` seconds, or close one of the others."""

    default_code = CloseCode.SESSION_LIMIT


class SessionExpired(SessionClosed):
    """The logical session reached its end (``SESSION_EXPIRED``).

    On the venue: the participant did not resume within ``resume_ttl`` (the dead
    man's switch, ``on_session_lost``, fires with it), or the key epoch space
    ran out.  A participant that receives it starts a new session.  It is a
    :class:`SessionClosed`, so code that catches that keeps working.
    """

    default_code = CloseCode.SESSION_EXPIRED


class StoreError(SessionError):
    """A session store cannot be used or written (``INTERNAL_ERROR``).

    At start: the file is held by another process, is corrupt, is not a
    trio_session store, or was written by a newer version (the message names
    the file and the fix; nothing starts, so nothing is silently lost).  While
    running: a write failed (e.g. the disk is full): the durability promise no
    longer holds, so the sessions using the store end with it.
    """

    default_code = CloseCode.INTERNAL_ERROR

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        #: The store's file (or address), when it has one.
        self.path = path


def is_clean_close(err: SessionError) -> bool:
    """True for a graceful close (``NORMAL``), by either side: not a failure."""
    return isinstance(err, SessionClosed) and err.code is CloseCode.NORMAL


#: Codes whose error is a SessionClosed subclass of their own.
_CLOSED_BY_CODE: dict[CloseCode, type[SessionClosed]] = {
    CloseCode.SLOW_CONSUMER: SlowConsumer,
    CloseCode.SESSION_EXPIRED: SessionExpired,
    CloseCode.MEMORY_BUDGET: MemoryBudgetExceeded,
    CloseCode.CONTROL_FLOOD: ControlFlood,
}


def error_for_code(
    code: CloseCode, reason: str, *, remote: bool, retry_after: float | None = None
) -> SessionError:
    """Build the typed error that a received CLOSE/REJECT frame stands for."""
    msg = f"peer closed the session: {code.name}" + (f" ({reason})" if reason else "")
    if code is CloseCode.RATE_LIMITED or code is CloseCode.SESSION_LIMIT:
        cls = RateLimited if code is CloseCode.RATE_LIMITED else TooManySessions
        return cls(msg, retry_after=retry_after if retry_after is not None else 1.0, code=code)
    cat = code.category
    if cat is Category.FATAL:
        return AuthenticationError(msg, code=code, remote=remote)
    if code is CloseCode.RESUME_REFUSED:
        return ResumeRefused(msg, code=code, remote=remote)
    closed = _CLOSED_BY_CODE.get(code)
    if closed is not None:
        return closed(msg, code=code, remote=remote, reason=reason)
    return SessionClosed(msg, code=code, remote=remote, reason=reason)
