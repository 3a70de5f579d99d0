"""trio_session: persistent, authenticated, self-healing WebSocket sessions for Trio.

Layout (as in trio and h11): the implementation lives in private modules
(``_errors``, ``_config``, ``_identity``, ``_session``, ...) and in the sans-IO
package :mod:`trio_session.protocol`; this module re-exports the public names and
lists them in ``__all__``.  Anything not listed here is private and may change
without notice.

The re-exports are lazy (PEP 562): a name's module is imported when the name is
first used, so ``import trio_session.protocol`` does not pull in Trio and
trio-websocket.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ENTRY_POINT_GROUP",
    "AuthenticationError",
    "Backoff",
    "Category",
    "CloseCode",
    "ConnectionLost",
    "Context",
    "ControlFlood",
    "FrameError",
    "HandshakeTimeout",
    "HeartbeatTimeout",
    "Identity",
    "InDoubt",
    "IntegrityError",
    "InvalidMessage",
    "KeyRegistry",
    "LocalProtocolError",
    "MemoryBudgetExceeded",
    "MemoryStore",
    "MessageRejected",
    "Metrics",
    "Plugin",
    "ProtocolError",
    "RateLimit",
    "RateLimited",
    "RejectCode",
    "Rejected",
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
    "SessionStore",
    "SlowConsumer",
    "SqliteStore",
    "State",
    "StoreError",
    "TooManySessions",
    "Validate",
    "VenueServer",
    "VenueStats",
    "connect",
    "load_plugins",
    "serve",
]

#: Public name -> the private module that defines it.
_LAZY: dict[str, str] = {
    "ENTRY_POINT_GROUP": "._app",
    "Context": "._app",
    "Metrics": "._app",
    "Plugin": "._app",
    "RateLimit": "._app",
    "Router": "._app",
    "Validate": "._app",
    "load_plugins": "._app",
    "Backoff": "._policy",
    "RestartPolicy": "._policy",
    "connect": "._client",
    "SessionConfig": "._config",
    "AuthenticationError": "._errors",
    "Category": "._errors",
    "CloseCode": "._errors",
    "ConnectionLost": "._errors",
    "ControlFlood": "._errors",
    "FrameError": "._errors",
    "HandshakeTimeout": "._errors",
    "HeartbeatTimeout": "._errors",
    "IntegrityError": "._errors",
    "LocalProtocolError": "._errors",
    "MemoryBudgetExceeded": "._errors",
    "MessageRejected": "._errors",
    "ProtocolError": "._errors",
    "RateLimited": "._errors",
    "RejectCode": "._errors",
    "RekeyTimeout": "._errors",
    "RemoteProtocolError": "._errors",
    "ResumeRefused": "._errors",
    "SequenceError": "._errors",
    "SessionClosed": "._errors",
    "SessionError": "._errors",
    "SessionExpired": "._errors",
    "SessionReset": "._errors",
    "SlowConsumer": "._errors",
    "StoreError": "._errors",
    "TooManySessions": "._errors",
    "InvalidMessage": "._errors",
    "InDoubt": "._errors",
    "Rejected": "._errors",
    "Identity": "._identity",
    "KeyRegistry": "._identity",
    "VenueServer": "._server",
    "VenueStats": "._server",
    "serve": "._server",
    "Session": "._session",
    "SessionStats": "._session",
    "State": "._session",
    "MemoryStore": ".store",
    "SessionStore": ".store",
    "SqliteStore": ".store",
}

if TYPE_CHECKING:
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
    from ._errors import ControlFlood as ControlFlood
    from ._errors import FrameError as FrameError
    from ._errors import HandshakeTimeout as HandshakeTimeout
    from ._errors import HeartbeatTimeout as HeartbeatTimeout
    from ._errors import InDoubt as InDoubt
    from ._errors import IntegrityError as IntegrityError
    from ._errors import InvalidMessage as InvalidMessage
    from ._errors import LocalProtocolError as LocalProtocolError
    from ._errors import MemoryBudgetExceeded as MemoryBudgetExceeded
    from ._errors import MessageRejected as MessageRejected
    from ._errors import ProtocolError as ProtocolError
    from ._errors import RateLimited as RateLimited
    from ._errors import RejectCode as RejectCode
    from ._errors import Rejected as Rejected
    from ._errors import RekeyTimeout as RekeyTimeout
    from ._errors import RemoteProtocolError as RemoteProtocolError
    from ._errors import ResumeRefused as ResumeRefused
    from ._errors import SequenceError as SequenceError
    from ._errors import SessionClosed as SessionClosed
    from ._errors import SessionError as SessionError
    from ._errors import SessionExpired as SessionExpired
    from ._errors import SessionReset as SessionReset
    from ._errors import SlowConsumer as SlowConsumer
    from ._errors import StoreError as StoreError
    from ._errors import TooManySessions as TooManySessions
    from ._identity import Identity as Identity
    from ._identity import KeyRegistry as KeyRegistry
    from ._policy import Backoff as Backoff
    from ._policy import RestartPolicy as RestartPolicy
    from ._server import VenueServer as VenueServer
    from ._server import VenueStats as VenueStats
    from ._server import serve as serve
    from ._session import Session as Session
    from ._session import SessionStats as SessionStats
    from ._session import State as State
    from .store import MemoryStore as MemoryStore
    from .store import SessionStore as SessionStore
    from .store import SqliteStore as SqliteStore
else:

    def __getattr__(name: str) -> Any:
        module_name = _LAZY.get(name)
        if module_name is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_name, __name__), name)
        _fix_loaded_names()
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _fix_loaded_names() -> None:
    """Bind every public name whose module is loaded, with ``__module__`` set to
    ``trio_session`` so reprs and docs say trio_session.X (as trio does).

    Covers names loaded as a side effect too (e.g. the errors a session module
    imports), so a traceback names ``trio_session.HeartbeatTimeout`` however the
    class was first reached.
    """
    namespace = globals()
    for name, module_name in _LAZY.items():
        module = sys.modules.get(__name__ + module_name)
        if name in namespace or module is None or not hasattr(module, name):
            continue
        obj = getattr(module, name)
        if getattr(obj, "__module__", "").startswith(__name__ + "._"):
            with contextlib.suppress(AttributeError, TypeError):  # builtins refuse
                obj.__module__ = __name__
        namespace[name] = obj
