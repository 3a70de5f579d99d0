"""The sans-IO protocol core, for interoperability work and custom runtimes.

Most users want :func:`trio_session.serve` and :func:`trio_session.connect`;
this namespace exposes the state machines they are built on, h11-style: feed
received frames to :meth:`Connection.receive_data`, act on the returned events,
and write what :meth:`Connection.data_to_send` and :meth:`Connection.send_data`
return.  The wire format is specified in docs/protocol.md.
"""

from __future__ import annotations

from ._protocol import ClientConnection as ClientConnection
from ._protocol import CloseReceived as CloseReceived
from ._protocol import Connection as Connection
from ._protocol import ConnectionState as ConnectionState
from ._protocol import ConnectionStats as ConnectionStats
from ._protocol import Event as Event
from ._protocol import HandshakeComplete as HandshakeComplete
from ._protocol import HeartbeatAcked as HeartbeatAcked
from ._protocol import HelloReceived as HelloReceived
from ._protocol import MessagesReceived as MessagesReceived
from ._protocol import Role as Role
from ._protocol import SessionState as SessionState
from ._protocol import VenueConnection as VenueConnection

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
    "SessionState",
    "VenueConnection",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("trio_session._"):
        _obj.__module__ = __name__
del _name, _obj
