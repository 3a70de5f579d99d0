"""Structured lifecycle logging: every record names its event and its session.

Why structure and not only text: an operator greps for ``event=stale`` or ships
the records to a log store, and a program (the CLI, a metrics exporter) reacts
to them without parsing messages.  Every lifecycle record carries, through
``extra=``:

* ``event``: a stable name (``login``, ``logout``, ``stale``, ``resuming``,
  ``live``, ``resume``, ``reset``, ``reconnecting``, ``gave_up``,
  ``dead_mans_switch``, ``slow_consumer``, ``rekey``, ``session_ended``,
  ``handshake_refused``, ``rate_limited``);
* ``session_id``: the hex session id, or ``"-"`` before there is one;
* ``fields``: a dict of the event's values (``role``, ``key_id``, durations,
  counts), for handlers that want them as key/value pairs.

The message itself is a complete sentence for plain handlers, prefixed with
``[session …]`` when there is a session.  Loggers: ``trio_session.session``
(one session's life, both roles), ``trio_session.client`` (the participant's
supervisor) and ``trio_session.server`` (the venue).  Nothing secret is ever
logged: ids, key ids, addresses, codes and counts only.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any, Final, final

__all__ = ["RateLimitedLog", "SessionLog", "log_event"]


def log_event(
    logger: logging.Logger,
    level: int,
    event: str,
    msg: str,
    *args: object,
    session_id: str | None = None,
    **fields: Any,
) -> None:
    """Log one lifecycle event on ``logger`` (see the module docstring)."""
    if not logger.isEnabledFor(level):
        return
    sid = session_id or "-"
    if session_id:
        msg = f"[session {sid}] {msg}"
    extra = {"event": event, "session_id": sid, "fields": fields}
    logger.log(level, msg, *args, extra=extra)


class SessionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger bound to one session: its id (and role, key id) on every record,
    as ``record.session_id`` for structured handlers and as a ``[session …]``
    prefix for plain ones."""

    def __init__(self, logger: logging.Logger, session_id: str = "-", **fields: Any) -> None:
        super().__init__(logger, {"session_id": session_id, **fields})

    @property
    def session_id(self) -> str:
        return str((self.extra or {}).get("session_id", "-"))

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        sid = self.session_id
        extra = kwargs.setdefault("extra", {})
        extra["session_id"] = sid
        return f"[session {sid}] {msg}", kwargs

    def event(self, level: int, event: str, msg: str, *args: object, **fields: Any) -> None:
        """A lifecycle event of this session, with its fields (and role, key id)."""
        if not self.logger.isEnabledFor(level):
            return
        bound = {k: v for k, v in (self.extra or {}).items() if k != "session_id"}
        extra = {"event": event, "fields": {**bound, **fields}}
        self.log(level, msg, *args, extra=extra)


#: Seconds between two records of one rate-limited kind.
LIMIT_PERIOD: Final = 10.0


@final
class RateLimitedLog:
    """At most one record per ``period`` seconds per key; the next one says how
    many were suppressed.  For events an unauthenticated flood can trigger
    (refused handshakes), so that a flood cannot flood the log too."""

    def __init__(self, period: float = LIMIT_PERIOD, *, max_keys: int = 1024) -> None:
        self.period = period
        self.max_keys = max_keys
        #: key -> (time of the last record, records suppressed since).
        self._last: dict[object, tuple[float, int]] = {}

    def admit(self, key: object, now: float) -> int | None:
        """None to suppress; else how many records of ``key`` were suppressed before."""
        last = self._last.get(key)
        if last is not None and now - last[0] < self.period:
            self._last[key] = (last[0], last[1] + 1)
            return None
        if last is None and len(self._last) >= self.max_keys:
            # Forget keys that are quiet now; a flood of distinct keys shares one slot.
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.period}
            if len(self._last) >= self.max_keys:
                key = "*"
                last = self._last.get(key)
                if last is not None and now - last[0] < self.period:
                    self._last[key] = (last[0], last[1] + 1)
                    return None
        self._last[key] = (now, 0)
        return 0 if last is None else last[1]
