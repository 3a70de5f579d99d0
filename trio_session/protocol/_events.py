"""What :meth:`Connection.receive_data` reports: one class per thing the runtime must act on."""

from __future__ import annotations

import attrs

from .._errors import CloseCode, SessionError, error_for_code

__all__ = [
    "CloseReceived",
    "Event",
    "HandshakeComplete",
    "HeartbeatAcked",
    "HelloReceived",
    "MessagesReceived",
]


class Event:
    """Base class of everything :meth:`Connection.receive_data` returns."""

    __slots__ = ()


@attrs.frozen
class HelloReceived(Event):
    """Venue only: a ClientHello arrived.  Look ``key_id`` up (and the detached
    session, if ``resume_session_id`` is set), then call :meth:`VenueConnection.accept`
    or :meth:`Connection.close` with a rejection code.  No expensive crypto has
    run yet, so rate limits belong here."""

    key_id: str
    resume_session_id: bytes | None


@attrs.frozen
class HandshakeComplete(Event):
    """The connection is authenticated and OPEN.

    ``resumed`` is True when the logical session continued; ``resume_requested``
    and not ``resumed`` means the participant got a brand new session and
    ``abandoned`` of its sent messages may never have been delivered.
    """

    session_id: bytes
    resumed: bool
    resume_requested: bool
    abandoned: int
    retransmitted: int
    #: Participant only: the data seq up to which the venue is replaying;
    #: the session is caught up when ``next_rx_seq`` reaches it.
    replay_until: int = 0


@attrs.frozen
class MessagesReceived(Event):
    """Application messages, in order; ``first_seq`` is the data seq of ``payloads[0]``."""

    first_seq: int
    payloads: list[bytes]
    #: Session-layer notices (FLAG_SYSTEM), e.g. per-message rejects.
    system: bool = False
    #: Payload bytes of ``payloads`` (what the runtime's byte budgets count).
    nbytes: int = attrs.field(default=0, eq=False)


@attrs.frozen
class HeartbeatAcked(Event):
    """An answer to one of our heartbeats: ``rtt`` in seconds."""

    rtt: float


@attrs.frozen
class CloseReceived(Event):
    """The peer closed the connection (or rejected the handshake)."""

    code: CloseCode
    reason: str
    retry_after: float | None

    def to_error(self) -> SessionError:
        return error_for_code(self.code, self.reason, remote=True, retry_after=self.retry_after)
