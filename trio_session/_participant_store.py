"""A participant's session in a durable store: found again at start, removed at logout.

The participant's store key is its key id and the venue's public key, so one
store file can hold sessions with several venues, and a session that replaced
another (a refused resume) takes its place.  One session per key and venue
per store: a second ``connect()`` for the same pair in this process is refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ._control import SessionControl
from ._errors import StoreError
from ._persist import StoreRuntime, store_runtime
from .protocol import Role
from .store import SessionStore, participant_key

__all__ = ["participant_store"]


@asynccontextmanager
async def participant_store(
    control: SessionControl, store: SessionStore | None, key_id: str, venue_pk: bytes
) -> AsyncIterator[StoreRuntime | None]:
    """Keep ``control``'s session in ``store`` for the block (None: not durable).

    A stored session for this key and venue is restored (the first connection
    resumes it).  The caller removes it (``control.persist.delete()``) once the
    session has ended; what is pending is written when the block ends.
    """
    if store is None or not store.durable:
        yield None
        return
    async with store_runtime(store) as runtime:
        key = participant_key(key_id, venue_pk)
        runtime.claim(key, f"another session of key {key_id!r} with this venue")
        try:
            control.use_store(runtime, key=key, peer=venue_pk.hex())
            contents = await store.load(Role.PARTICIPANT)
            for stored in contents.sessions:
                if stored.key == key:
                    try:
                        control.restore(stored)
                    except ValueError as exc:
                        raise StoreError(
                            f"store {store.location} is damaged: session {key}: {exc}; move it "
                            "aside to start afresh (the sessions in it are lost)",
                            path=store.location,
                        ) from None
            yield runtime
        finally:
            runtime.release(key)
