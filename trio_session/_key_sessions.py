"""The venue's sessions by key id, and the per-identity cap on them.

One registered identity could otherwise open sessions as fast as the handshake
rate allows and drop each at once: every one stays detached for ``resume_ttl``
with its handler running, and thousands of them starve everyone else.
``max_sessions_per_key`` bounds the live and detached sessions of one key.

At the cap a new session (its signature verified) ends the key's session that
has been detached the longest: a participant that lost its state and starts
afresh replaces what it left behind, and that session's dead man's switch fires
as it would have at the end of its TTL, only sooner.  When none of the key's
sessions is detached, the new one is refused with ``SESSION_LIMIT`` (rate
limited: the participant retries later), so a participant's live sessions are
never ended by another connection.  Ending sessions is only ever triggered by a
handshake whose signature verified, never by a ClientHello alone.
"""

from __future__ import annotations

from typing import final

from ._control import SessionControl
from ._errors import TooManySessions

__all__ = ["KeySessions"]

#: What a refused participant is told to wait before retrying (seconds).
RETRY_AFTER = 5.0


@final
class KeySessions:
    """Sessions grouped by key id, oldest first, with when each was detached."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._by_key: dict[str, dict[bytes, SessionControl]] = {}
        #: Session id -> when its connection was lost (while it is detached).
        self._detached: dict[bytes, float] = {}

    def add(self, key_id: str, sid: bytes, control: SessionControl) -> None:
        self._by_key.setdefault(key_id, {})[sid] = control

    def remove(self, key_id: str, sid: bytes) -> None:
        sessions = self._by_key.get(key_id)
        if sessions is not None:
            sessions.pop(sid, None)
            if not sessions:
                del self._by_key[key_id]
        self._detached.pop(sid, None)

    def detached(self, sid: bytes, at: float) -> None:
        self._detached[sid] = at

    def attached(self, sid: bytes) -> None:
        self._detached.pop(sid, None)

    def count(self, key_id: str) -> int:
        """The key's sessions that have not ended."""
        return sum(not c.finished for c in self._by_key.get(key_id, {}).values())

    def check_room(self, key_id: str) -> None:
        """Before signing for a new session: raise :class:`TooManySessions` when the
        key is at the cap and no session of it could make room."""
        if self.count(key_id) >= self.cap and not self._oldest_detached(key_id, 1):
            raise self._refusal(key_id)

    def make_room(self, key_id: str) -> list[SessionControl]:
        """A new session of ``key_id`` verified: the detached sessions to end so it
        fits, oldest first.  Raises :class:`TooManySessions` when it cannot fit."""
        excess = self.count(key_id) + 1 - self.cap
        if excess <= 0:
            return []
        victims = self._oldest_detached(key_id, excess)
        if len(victims) < excess:
            raise self._refusal(key_id)
        return victims

    def _oldest_detached(self, key_id: str, n: int) -> list[SessionControl]:
        sessions = self._by_key.get(key_id, {})
        since = self._detached
        detached = sorted(
            (since[sid], sid) for sid, c in sessions.items() if sid in since and not c.finished
        )
        return [sessions[sid] for _, sid in detached[:n]]

    def _refusal(self, key_id: str) -> TooManySessions:
        return TooManySessions(
            f"key {key_id} already has {self.cap} sessions (max_sessions_per_key), "
            "none of them detached",
            retry_after=RETRY_AFTER,
            remote=False,
        )
