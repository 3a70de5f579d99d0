"""The sans-IO protocol core, for interoperability work and custom runtimes.

Most users want :func:`trio_session.serve` and :func:`trio_session.connect`;
this namespace exposes the state machines they are built on, h11-style: feed
received frames to :meth:`Connection.receive_data`, act on the returned events,
and write what :meth:`Connection.data_to_send` and :meth:`Connection.send_data`
return.  The wire format is specified in docs/protocol.md.

Importing this package imports neither Trio nor trio-websocket.
"""

from __future__ import annotations

from ._connection import ClientConnection as ClientConnection
from ._connection import Connection as Connection
from ._connection import VenueConnection as VenueConnection
from ._events import CloseReceived as CloseReceived
from ._events import Event as Event
from ._events import HandshakeComplete as HandshakeComplete
from ._events import HeartbeatAcked as HeartbeatAcked
from ._events import HelloReceived as HelloReceived
from ._events import MessagesReceived as MessagesReceived
from ._record import SessionRecord as SessionRecord
from ._record import SessionState as SessionState
from ._types import ConnectionState as ConnectionState
from ._types import ConnectionStats as ConnectionStats
from ._types import Role as Role

__all__ = [
    "ClientConnection",
    "CloseReceived",
    "Connection",
    "ConnectionState",
    "ConnectionStats",
    "Event",
    "HandshakeComplete",
    "HeartbeatAcked",
    "HelloReceived",
    "MessagesReceived",
    "Role",
    "SessionRecord",
    "SessionState",
    "VenueConnection",
]


def _fixup_module_metadata() -> None:
    # So reprs and docs say trio_session.protocol.X, not trio_session.protocol._record.X.
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith(__name__ + "._"):
            obj.__module__ = __name__


_fixup_module_metadata()
del _fixup_module_metadata
