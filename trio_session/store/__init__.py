"""Session stores: where logical sessions live between connections and across restarts.

Pass one to :func:`trio_session.serve` or :func:`trio_session.connect` as
``store=``.  :class:`MemoryStore` (the default) keeps sessions for the life of
the process; :class:`SqliteStore` keeps them in a file, so a venue or
participant restarted on it (even after ``kill -9``) resumes every session and
loses no message that ``send()`` returned for (docs/howto/durable.md).

To write a store of your own, implement :class:`SessionStore` over the types
below and run the contract test suite against it (``tests/store/``).
"""

from __future__ import annotations

from .._errors import StoreError as StoreError
from ._base import SessionStore as SessionStore
from ._base import StoreStatistics as StoreStatistics
from ._memory import MemoryStore as MemoryStore
from ._sqlite import SqliteStore as SqliteStore
from ._types import JournalEntry as JournalEntry
from ._types import ReplayEntry as ReplayEntry
from ._types import SessionStatus as SessionStatus
from ._types import SessionWrite as SessionWrite
from ._types import StoreContents as StoreContents
from ._types import StoredSession as StoredSession
from ._types import StoredState as StoredState
from ._types import participant_key as participant_key

__all__ = [
    "JournalEntry",
    "MemoryStore",
    "ReplayEntry",
    "SessionStatus",
    "SessionStore",
    "SessionWrite",
    "SqliteStore",
    "StoreContents",
    "StoreError",
    "StoreStatistics",
    "StoredSession",
    "StoredState",
    "participant_key",
]


#: Also re-exported by the top-level package (their reprs say ``trio_session.X``).
_TOP_LEVEL = frozenset({"MemoryStore", "SessionStore", "SqliteStore", "StoreError"})


def _fixup_module_metadata() -> None:
    # So reprs and docs say trio_session.store.X, not trio_session.store._types.X.
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith(__name__ + "._"):
            obj.__module__ = "trio_session" if name in _TOP_LEVEL else __name__


_fixup_module_metadata()
del _fixup_module_metadata
