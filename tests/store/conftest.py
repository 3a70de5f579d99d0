"""The stores every contract test runs against.

To run the contract suite against another store (e.g. a Redis store), add a
factory to :data:`STORES`: it gets a fresh temporary directory and returns a
:class:`StoreUnderTest`, whose ``reopen()`` gives a new store object over the
same data (what a restarted process would open).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import attrs
import pytest

import trio_session as ts


@attrs.define
class StoreUnderTest:
    store: ts.SessionStore
    reopen: Callable[[], ts.SessionStore]


def _memory(tmp: Path) -> StoreUnderTest:
    store = ts.MemoryStore(durable=True)
    return StoreUnderTest(store, lambda: store)


def _sqlite(synchronous: str) -> Callable[[Path], StoreUnderTest]:
    def make(tmp: Path) -> StoreUnderTest:
        path = tmp / "store.db"
        return StoreUnderTest(
            ts.SqliteStore(path, synchronous=synchronous),  # type: ignore[arg-type]
            lambda: ts.SqliteStore(path, synchronous=synchronous),  # type: ignore[arg-type]
        )

    return make


#: name -> factory of a store under test (see the module docstring).
STORES: dict[str, Callable[[Path], StoreUnderTest]] = {
    "memory": _memory,
    "sqlite": _sqlite("normal"),
    "sqlite-full": _sqlite("full"),
}


@pytest.fixture(params=sorted(STORES))
def sut(request: pytest.FixtureRequest, tmp_path: Path) -> StoreUnderTest:
    factory: Callable[[Path], StoreUnderTest] = STORES[request.param]
    return factory(tmp_path)
