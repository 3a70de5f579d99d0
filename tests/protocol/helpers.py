"""Harnesses for the sans-IO state machines (no Trio, no sockets): connections back to
back, a link that can be cut and resumed, and sub-machines without a connection."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TypeVar

from trio_session import Identity, SessionConfig
from trio_session.protocol import (
    ClientConnection,
    Connection,
    ConnectionStats,
    Event,
    HandshakeComplete,
    MessagesReceived,
    Role,
    SessionRecord,
    VenueConnection,
)
from trio_session.protocol._channel import Channel, Flow
from trio_session.protocol._keys import KeySchedule
from trio_session.protocol._types import DIR_C2V, DIR_V2C

VENUE = Identity.from_seed(bytes(range(32)))
PARTICIPANT = Identity.from_seed(bytes(range(32, 64)))
OTHER = Identity.from_seed(bytes(range(64, 96)))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def pump(a: Connection, b: Connection) -> list[Event]:
    """Deliver everything ``a`` owes to ``b``; return ``b``'s events."""
    events: list[Event] = []
    for frame in a.data_to_send():
        events += b.receive_data(frame)
    return events


def handshake(
    config: SessionConfig | None = None,
    *,
    clock: Callable[[], float] | None = None,
    participant: Identity = PARTICIPANT,
    resume: SessionRecord | None = None,
    venue_session: SessionRecord | None = None,
) -> tuple[ClientConnection, VenueConnection, list[Event], list[Event]]:
    cfg = config or SessionConfig()
    clk = clock if clock is not None else FakeClock()
    p = ClientConnection(participant, VENUE.public_key, cfg, resume=resume, clock=clk)
    v = VenueConnection(VENUE, cfg, clock=clk)
    pump(p, v)
    v.accept(participant.public_key, venue_session)
    p_events = pump(v, p)
    v_events = pump(p, v)
    pump(v, p)  # the venue's confirmation of the handshake
    assert isinstance(p_events[0], HandshakeComplete)
    assert isinstance(v_events[0], HandshakeComplete)
    return p, v, p_events, v_events


class Link:
    """Two one-way in-flight queues between a participant and a venue connection.

    Frames are produced into the queues and delivered on demand, so a test can
    cut the link with frames still in flight (they are lost, as on a reset TCP
    connection) and resume on a fresh pair of connections.
    """

    def __init__(self, config: SessionConfig, clock: FakeClock | None = None) -> None:
        self.config = config
        self.clock = clock or FakeClock()
        self.received: dict[str, list[bytes]] = {"p": [], "v": []}
        self.sent: dict[str, list[bytes]] = {"p": [], "v": []}
        self.p_state: SessionRecord | None = None
        self.v_state: SessionRecord | None = None
        self.resets = 0
        self.connect()

    def connect(self) -> None:
        cfg = self.config
        self.p = ClientConnection(
            PARTICIPANT, VENUE.public_key, cfg, resume=self.p_state, clock=self.clock
        )
        self.v = VenueConnection(VENUE, cfg, clock=self.clock)
        self.to_v: deque[bytes] = deque(self.p.data_to_send())
        self.to_p: deque[bytes] = deque()
        self._deliver_v(len(self.to_v))
        self.v.accept(PARTICIPANT.public_key, self.v_state)
        self.to_p.extend(self.v.data_to_send())
        self.flush()
        assert self.p.session is not None and self.v.session is not None
        self.p_state, self.v_state = self.p.session, self.v.session

    def _on_events(self, side: str, conn: Connection, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, MessagesReceived):
                self.received[side].extend(ev.payloads)
                conn.messages_consumed(len(ev.payloads))
            elif isinstance(ev, HandshakeComplete):
                assert ev.resumed or not ev.resume_requested, "resume unexpectedly refused"

    def _deliver_v(self, n: int) -> None:
        for _ in range(min(n, len(self.to_v))):
            self._on_events("v", self.v, self.v.receive_data(self.to_v.popleft()))

    def _deliver_p(self, n: int) -> None:
        for _ in range(min(n, len(self.to_p))):
            self._on_events("p", self.p, self.p.receive_data(self.to_p.popleft()))

    def collect(self) -> None:
        self.to_v.extend(self.p.data_to_send())
        self.to_p.extend(self.v.data_to_send())

    def send(self, side: str, payloads: list[bytes]) -> int:
        """Send as many of ``payloads`` as the window allows; returns how many."""
        conn = self.p if side == "p" else self.v
        self.collect()
        n = min(len(payloads), conn.send_window())
        if n:
            frame = conn.send_data(payloads[:n])
            (self.to_v if side == "p" else self.to_p).append(frame)
            self.sent[side].extend(payloads[:n])
        return n

    def deliver(self, to_v: int, to_p: int) -> None:
        self.collect()
        self._deliver_v(to_v)
        self._deliver_p(to_p)

    def flush(self) -> None:
        for _ in range(10_000):
            self.collect()
            if not self.to_v and not self.to_p:
                return
            self._deliver_v(len(self.to_v))
            self._deliver_p(len(self.to_p))
        raise AssertionError("link did not quiesce")

    def cut_and_resume(self) -> None:
        """Abrupt drop: in-flight frames are lost; reconnect and resume."""
        self.to_v.clear()
        self.to_p.clear()
        self.resets += 1
        self.connect()


# -- sub-machines on their own ---------------------------------------------------------

#: Stand-ins for a handshake's key exchange output and transcript hash: the
#: sub-machine tests need keys both sides agree on, not a real handshake.
KX_C2V = bytes(range(32))
KX_V2C = bytes(range(32, 64))
TH = bytes(range(64, 96))
SESSION_ID = bytes(range(16))


class ChannelPair:
    """A participant's and a venue's Channel and Flow over the same keys, no Connection.

    ``p`` and ``v`` are the channels, ``pf`` and ``vf`` the flows; both records
    start as a new session.
    """

    def __init__(self, config: SessionConfig | None = None, clock: FakeClock | None = None) -> None:
        self.config = config or SessionConfig()
        self.clock = clock or FakeClock()
        #: How often each side saw the peer switch to DH keys, and who else to tell.
        self.switches = {"p": 0, "v": 0}
        self.on_switch: dict[str, Callable[[], None]] = {}
        self.p = self._channel("p", Role.PARTICIPANT, DIR_C2V)
        self.v = self._channel("v", Role.VENUE, DIR_V2C)
        self.pf = Flow(self.p, self.config, self.p.stats, self.clock)
        self.vf = Flow(self.v, self.config, self.v.stats, self.clock)

    def _channel(self, side: str, role: Role, tx_direction: int) -> Channel:
        def switched() -> None:
            self.switches[side] += 1
            if side in self.on_switch:
                self.on_switch[side]()

        schedule, chains = KeySchedule.from_handshake(KX_C2V, KX_V2C, TH, None)
        record = SessionRecord(SESSION_ID, PARTICIPANT.key_id, role)
        return Channel.from_handshake(
            record,
            schedule,
            chains,
            tx_direction,
            self.config,
            ConnectionStats(),
            self.clock,
            on_peer_dh_switch=switched,
        )


T = TypeVar("T")


def current(value: T) -> T:
    """Read a machine's state afresh in an assertion.

    mypy narrows ``machine.state`` after one ``assert machine.state is X`` and
    would call a later ``assert machine.state is Y`` unreachable, not knowing
    that the calls in between change it.
    """
    return value
