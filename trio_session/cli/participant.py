"""What ``connect`` and ``demo`` share: the participant's progress and its reports.

A SessionReset is reported as one warning naming what was in doubt: the
messages the venue never acknowledged, with their sequence numbers (from
``SessionReset.in_doubt``: it may or may not have them), and the orders that had
no execution report (the application's view: the venue had some of them, but
its answer was lost).
"""

from __future__ import annotations

from typing import Any

import trio_session as ts

from .. import demo
from .errors import EXIT_FAILED, CliError, describe, os_reason
from .monitor import Monitor, Tracked

__all__ = ["board_line", "connect_failure", "id_ranges", "reset_reporter"]


def board_line(board: demo.Scoreboard) -> str:
    rtt = board.recent_rtt_us()
    doubt = f" in doubt {board.in_doubt}" if board.resets else ""
    return (
        f"orders {board.sent} acked {board.acked} quotes {board.quotes} "
        f"pending {board.lost}{doubt} dup {board.duplicated} "
        f"reordered {board.reordered + board.quote_regressions} "
        f"rtt p50 {'-' if rtt is None else f'{rtt:.0f}us'}"
    )


def id_ranges(ids: list[int], limit: int = 8) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3,7"`` (at most ``limit`` ranges, then ``…``)."""
    spans: list[tuple[int, int]] = []
    for i in sorted(ids):
        if spans and i == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], i)
        else:
            spans.append((i, i))
    text = ",".join(f"{a}-{b}" if a != b else str(a) for a, b in spans[:limit])
    return text + (",…" if len(spans) > limit else "") if text else "none"


def reset_reporter(monitor: Monitor, tracked: Tracked) -> demo.ResetHook:
    """An ``on_reset`` hook for :func:`trio_session.demo.run_participant`."""

    def on_reset(exc: ts.SessionReset, doubtful: list[int]) -> None:
        before = tracked.stats_at_loss
        seqs = [m.seq for m in exc.in_doubt]
        fields: dict[str, Any] = {
            "in_doubt": len(seqs),
            "in_doubt_seqs": id_ranges(seqs),
            "last_delivered_seq": exc.last_delivered_seq,
            "orders_unanswered": len(doubtful),
            "client_ids": id_ranges(doubtful),
            "unacked_at_loss": before.unacked if before is not None else None,
        }
        monitor.reset(
            tracked,
            f"the venue could not resume the session; continuing on new session "
            f"{tracked.session_id}; in doubt: {len(seqs)} messages sent but never "
            f"acknowledged (seq {id_ranges(seqs)}), {len(doubtful)} orders without a report "
            "(queued ones go out on the new session; the summary counts the rest): reconcile",
            **fields,
        )

    return on_reset


def connect_failure(
    exc: ts.SessionError, url: str, identity: ts.Identity, *, connected: bool
) -> CliError:
    """The one line for a participant's session error, with the fix where there is one."""
    code = exc.code
    key = f"key id {identity.key_id!r}"
    if code is ts.CloseCode.UNKNOWN_KEY:
        text = (
            f"the venue at {url} does not know {key}; on the venue run: trio-session registry "
            f"add REGISTRY {identity.key_id} {identity.public_key_hex} (then restart serve)"
        )
    elif code is ts.CloseCode.KEY_REVOKED:
        text = (
            f"the venue at {url} revoked {key}; create a new identity (trio-session keygen) "
            "and have the venue add its public key"
        )
    elif code is ts.CloseCode.VERSION_MISMATCH:
        text = (
            f"the venue at {url} accepts no protocol version or frame protection mode "
            f"this participant offers (see --modes): {describe(exc)}"
        )
    elif isinstance(exc, ts.AuthenticationError):
        text = (
            f"authentication with {url} failed ({describe(exc)}); check that --venue-key is "
            f"this venue's public key and that the venue's registry holds this public key "
            f"for {key}"
        )
    elif isinstance(exc, ts.HandshakeTimeout) and not connected:
        text = f"the venue at {url} did not answer in time: {describe(exc)} (--handshake-timeout)"
    elif isinstance(exc, ts.RateLimited):
        text = f"the venue at {url} is refusing logins for now; retry in {exc.retry_after:.1f}s"
    elif not connected:
        why = os_reason(exc) if isinstance(exc, ts.ConnectionLost) else None
        text = f"cannot connect to {url}: {why or describe(exc)}"
    else:
        text = f"the session ended: {describe(exc)}"
    return CliError(text, exit_code=EXIT_FAILED)
