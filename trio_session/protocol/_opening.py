"""Opening a connection's channel from a completed handshake.

One job: turn a :class:`~._handshake.HandshakeResult` into the machines that run
once keys exist (the key schedule, the :class:`~._channel.Channel` and
:class:`~._channel.Flow` over it, the control meter), wire them to the role's
rekey and liveness machines; then (:func:`resume_position`) validate the peer's
resume position before the session record changes.  In between the connection
keeps the channel, so that a refused resume position is answered with an
authenticated CLOSE.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from .._config import SessionConfig
from ._channel import Channel, Flow
from ._handshake import HandshakeResult
from ._keys import ChainKeys, KeySchedule
from ._liveness import Liveness
from ._meter import ControlMeter
from ._rekey import RekeyMachine
from ._types import ConnectionStats

__all__ = ["Opened", "open_channel", "resume_position"]


@attrs.frozen
class Opened:
    """What :func:`open_channel` built."""

    channel: Channel
    flow: Flow
    meter: ControlMeter
    chains: ChainKeys


def open_channel(
    result: HandshakeResult,
    *,
    tx_direction: int,
    config: SessionConfig,
    stats: ConnectionStats,
    clock: Callable[[], float],
    rekey: RekeyMachine,
    liveness: Liveness,
    ratchet_jitter: float,
    ratchet_early: bool,
) -> Opened:
    """Keys from the handshake: the channel, its flow and its meter."""
    schedule, chains = KeySchedule.from_handshake(
        result.kx_c2v, result.kx_v2c, result.th, result.resume_k
    )
    channel = Channel.from_handshake(
        result.record,
        schedule,
        chains,
        tx_direction,
        config,
        stats,
        clock,
        mode=result.mode,
        ratchet_jitter=ratchet_jitter,
        on_peer_dh_switch=rekey.peer_switched,
    )
    channel.step_due = ratchet_early
    flow = Flow(channel, config, stats, clock)
    rekey.attach(channel, channel.tx.epoch_started)
    if result.heartbeat_ms is not None:
        liveness.adopt_venue_timing(*result.heartbeat_ms)
    # Heartbeats and probes come at most twice per interval: always allowed.
    meter = ControlMeter(config.control_frame_rate + 4 / liveness.interval, clock())
    return Opened(channel, flow, meter, chains)


def resume_position(flow: Flow, result: HandshakeResult) -> int:
    """Check the peer's resume position (raises before the record changes), then move
    the record to it; returns how many data messages the peer is owed again."""
    retransmit = flow.resume_from(result.peer_next_rx, result.peer_window)
    if result.rx_resume is not None:  # the peer retransmits from what we offered
        result.record.resume_at(result.rx_resume)
        flow.ack_sent = result.record.ack_position
    return retransmit
