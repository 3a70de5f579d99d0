"""Helpers for testing venues and participants built on trio_session.

Import these from your own pytest-trio tests:

* :func:`memory_venue` runs a real venue (:func:`trio_session.serve`'s logic)
  over in-memory transports, so whole sessions — handshake, heartbeats, rekeys,
  resume, the dead man's switch — run under ``trio.testing.MockClock`` with
  ``autojump_threshold=0``: an hour of session time in milliseconds.
* :func:`identities` gives a venue identity, a participant identity and a
  registry that trusts the participant.
* :class:`FaultyProxy` sits between a real participant and venue on loopback
  and injects resets, black holes, delays, throttling, truncation and
  corruption, scripted or random under a seed (docs/howto/fault-injection.md).

The mock-clock recipe::

    @pytest.fixture
    def autojump_clock():  # pytest-trio picks this fixture up
        return trio.testing.MockClock(autojump_threshold=0)

    async def test_heartbeat(autojump_clock):
        venue_id, alice, registry = identities()
        async with memory_venue(handler, venue_id, registry) as venue:
            async with venue.connect(alice) as session:  # ts.connect over memory
                ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, overload

import attrs
import trio

from ._client import connect
from ._config import SessionConfig
from ._faults import Fault as Fault
from ._faults import FaultyProxy as FaultyProxy
from ._faults import ProxyStats as ProxyStats
from ._identity import Identity, KeyRegistry
from ._policy import RestartPolicy
from ._server import Hook, SessionHandler, VenueRunner, VenueStats
from ._session import Session
from ._transport import MemoryTransport, Transport, memory_transport_pair
from ._typing import M, TypeForm
from .store import SessionStore

__all__ = ["Fault", "FaultyProxy", "MemoryVenue", "ProxyStats", "identities", "memory_venue"]


def identities() -> tuple[Identity, Identity, KeyRegistry]:
    """A fresh venue identity, participant identity, and a registry trusting the latter."""
    venue = Identity.generate()
    participant = Identity.generate()
    registry = KeyRegistry()
    registry.add(participant.key_id, participant.public_key)
    return venue, participant, registry


@attrs.define(eq=False)
class MemoryVenue:
    """A running in-memory venue (see :func:`memory_venue`)."""

    _venue: VenueRunner = attrs.field(alias="venue")
    _nursery: trio.Nursery = attrs.field(alias="nursery")
    #: Client ends of every connection made so far.
    transports: list[MemoryTransport] = attrs.Factory(list)
    #: Connection attempts refused by :meth:`refuse_connections`.
    refused: int = 0
    _refusing: bool = False

    @property
    def sessions(self) -> list[Session[Any]]:
        """Venue-side sessions alive now (LIVE or detached awaiting resume)."""
        return self._venue.live_sessions()

    async def connector(self, nursery: trio.Nursery) -> Transport:
        """Pass as ``transport_factory=`` to :func:`trio_session.connect`."""
        from ._errors import ConnectionLost

        await trio.lowlevel.checkpoint()
        if self._refusing:
            self.refused += 1
            raise ConnectionLost("connection refused (memory venue is refusing)")
        client, server = memory_transport_pair(capacity=256)
        self.transports.append(client)
        self._nursery.start_soon(self._venue.on_transport, server)
        return client

    @overload
    def connect(
        self,
        identity: Identity,
        *,
        config: SessionConfig | None = None,
        messages: None = None,
        restart: RestartPolicy | None = None,
        store: SessionStore | None = None,
    ) -> AbstractAsyncContextManager[Session[bytes]]: ...

    @overload
    def connect(
        self,
        identity: Identity,
        *,
        config: SessionConfig | None = None,
        messages: TypeForm[M],
        restart: RestartPolicy | None = None,
        store: SessionStore | None = None,
    ) -> AbstractAsyncContextManager[Session[M]]: ...

    def connect(
        self,
        identity: Identity,
        *,
        config: SessionConfig | None = None,
        messages: Any = None,
        restart: RestartPolicy | None = None,
        store: SessionStore | None = None,
    ) -> AbstractAsyncContextManager[Session[Any]]:
        """``ts.connect`` to this venue over memory: ``async with venue.connect(alice) as s``.

        The options are :func:`trio_session.connect`'s: ``config`` (timers and
        limits), ``messages`` (the message type; the session is then a
        ``Session[that type]``), ``restart`` (the :class:`RestartPolicy`) and
        ``store`` (where the participant keeps its session).
        """
        return connect(
            "memory://",
            identity,
            self._venue.identity.public_key,
            config=config,
            messages=messages,
            restart=restart,
            transport_factory=self.connector,
            store=store,
        )

    def stats(self) -> VenueStats:
        """The venue's numbers, as :meth:`trio_session.VenueServer.stats`."""
        return self._venue.stats()

    def break_all(self) -> None:
        """Abruptly drop every open connection (as a TCP reset would)."""
        for t in self.transports:
            if not t.closed:
                t.break_()

    def refuse_connections(self, refuse: bool = True) -> None:
        """Make new connection attempts fail (the venue is unreachable)."""
        self._refusing = refuse


@overload
def memory_venue(
    handler: SessionHandler[bytes],
    identity: Identity,
    registry: KeyRegistry,
    *,
    config: SessionConfig | None = None,
    messages: None = None,
    on_session_lost: Hook[bytes] | None = None,
    on_logout: Hook[bytes] | None = None,
    store: SessionStore | None = None,
) -> AbstractAsyncContextManager[MemoryVenue]: ...


@overload
def memory_venue(
    handler: SessionHandler[M],
    identity: Identity,
    registry: KeyRegistry,
    *,
    config: SessionConfig | None = None,
    messages: TypeForm[M],
    on_session_lost: Hook[M] | None = None,
    on_logout: Hook[M] | None = None,
    store: SessionStore | None = None,
) -> AbstractAsyncContextManager[MemoryVenue]: ...


def memory_venue(
    handler: SessionHandler[Any],
    identity: Identity,
    registry: KeyRegistry,
    *,
    config: SessionConfig | None = None,
    messages: Any = None,
    on_session_lost: Hook[Any] | None = None,
    on_logout: Hook[Any] | None = None,
    store: SessionStore | None = None,
) -> AbstractAsyncContextManager[MemoryVenue]:
    """Run a venue over in-memory transports for the duration of the block.

    The arguments are :func:`trio_session.serve`'s, without the address and TLS.
    With ``store``, the venue keeps its sessions there like :func:`trio_session.serve`
    (a second ``memory_venue`` on the same store restores them); detach times
    and stamps are Trio clock times, so restarts under one ``MockClock`` line up.
    """
    cfg = config or SessionConfig()
    venue = VenueRunner(
        handler,
        identity,
        registry,
        cfg,
        messages,
        on_session_lost,
        on_logout,
        store=store,
        wall_clock=trio.current_time,
    )
    return _running(venue)


@asynccontextmanager
async def _running(venue: VenueRunner) -> AsyncIterator[MemoryVenue]:
    async with venue.running() as nursery:
        yield MemoryVenue(venue=venue, nursery=nursery)
