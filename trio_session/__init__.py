"""trio_session: persistent, authenticated, self-healing WebSocket sessions for Trio.

Layout (as in trio and h11): the implementation lives in private modules
(``_errors``, ``_config``, ``_identity``, ``_crypto``, ``_wire``, ``_protocol``, ...);
this module re-exports the public names and lists them in ``__all__``.  Anything
not listed here is private and may change without notice.
"""

from __future__ import annotations

import contextlib

from ._app import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
from ._app import Context as Context
from ._app import Metrics as Metrics
from ._app import Plugin as Plugin
from ._app import RateLimit as RateLimit
from ._app import Router as Router
from ._app import Validate as Validate
from ._app import load_plugins as load_plugins
from ._client import connect as connect
from ._config import SessionConfig as SessionConfig
from ._errors import AuthenticationError as AuthenticationError
from ._errors import Category as Category
from ._errors import CloseCode as CloseCode
from ._errors import ConnectionLost as ConnectionLost
from ._errors import FrameError as FrameError
from ._errors import HandshakeTimeout as HandshakeTimeout
from ._errors import HeartbeatTimeout as HeartbeatTimeout
from ._errors import IntegrityError as IntegrityError
from ._errors import InvalidMessage as InvalidMessage
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import MessageRejected as MessageRejected
from ._errors import ProtocolError as ProtocolError
from ._errors import RateLimited as RateLimited
from ._errors import RejectCode as RejectCode
from ._errors import RekeyTimeout as RekeyTimeout
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._errors import ResumeRefused as ResumeRefused
from ._errors import SequenceError as SequenceError
from ._errors import SessionClosed as SessionClosed
from ._errors import SessionError as SessionError
from ._errors import SessionExpired as SessionExpired
from ._errors import SessionReset as SessionReset
from ._errors import SlowConsumer as SlowConsumer
from ._identity import Identity as Identity
from ._identity import KeyRegistry as KeyRegistry
from ._policy import Backoff as Backoff
from ._policy import RestartPolicy as RestartPolicy
from ._server import VenueServer as VenueServer
from ._server import serve as serve
from ._session import Session as Session
from ._session import SessionStats as SessionStats
from ._session import State as State

__version__ = "0.1.0"

__all__ = [
    "ENTRY_POINT_GROUP",
    "AuthenticationError",
    "Backoff",
    "Category",
    "CloseCode",
    "ConnectionLost",
    "Context",
    "FrameError",
    "HandshakeTimeout",
    "HeartbeatTimeout",
    "Identity",
    "IntegrityError",
    "InvalidMessage",
    "KeyRegistry",
    "LocalProtocolError",
    "MessageRejected",
    "Metrics",
    "Plugin",
    "ProtocolError",
    "RateLimit",
    "RateLimited",
    "RejectCode",
    "RekeyTimeout",
    "RemoteProtocolError",
    "RestartPolicy",
    "ResumeRefused",
    "Router",
    "SequenceError",
    "Session",
    "SessionClosed",
    "SessionConfig",
    "SessionError",
    "SessionExpired",
    "SessionReset",
    "SessionStats",
    "SlowConsumer",
    "State",
    "Validate",
    "VenueServer",
    "connect",
    "load_plugins",
    "serve",
]


def _fixup_module_metadata() -> None:
    # So reprs and docs say trio_session.X, not trio_session._errors.X (as trio does).
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("trio_session._"):
            with contextlib.suppress(AttributeError, TypeError):  # builtins refuse
                obj.__module__ = __name__


_fixup_module_metadata()
del _fixup_module_metadata
