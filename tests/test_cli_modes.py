"""``--modes`` on ``serve`` and ``connect``: real processes over loopback."""

from __future__ import annotations

import re
from pathlib import Path

from .cli_helpers import assert_clean, connect_cli, keys, serving, trading_summary


def test_a_participant_offering_only_mac_is_refused_by_an_aead_only_venue(
    tmp_path: Path,
) -> None:
    k = keys(tmp_path)
    with serving(k, "--modes", "aead") as (venue, port):
        participant = connect_cli(k, port, "--modes", "mac", "--seconds", "1")
        assert participant.finish(timeout=30) == 1, participant.dump()
        assert_clean(participant.dump())
        (error,) = [line for line in participant.err if line.startswith("trio-session: error:")]
        assert "frame protection mode" in error and "--modes" in error, error
        assert "offered [1]/['mac'], venue accepts [1]/['aead']" in error, error
        venue.wait_for(r"event=handshake_refused .*code=VERSION_MISMATCH", stream="stderr")


def test_a_participant_preferring_aead_trades_with_a_venue_that_accepts_both(
    tmp_path: Path,
) -> None:
    k = keys(tmp_path)
    with serving(k, "--modes", "mac,aead") as (_, port):
        participant = connect_cli(k, port, "--modes", "aead,mac", "--seconds", "1")
        summary = trading_summary(participant, participant.finish(timeout=30))
    assert re.match(r"OK: \d+ orders", summary), summary


def test_an_unknown_mode_is_refused_before_anything_starts(tmp_path: Path) -> None:
    k = keys(tmp_path)
    participant = connect_cli(k, 1, "--modes", "aead,rot13")
    assert participant.finish(timeout=20) == 2, participant.dump()
    (error,) = participant.err
    assert "argument --modes: 'rot13' is not a mode" in error, error
