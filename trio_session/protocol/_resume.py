"""Resume binders: which session a ClientHello may resume, and the proof that it may.

A binder is ``MAC(KDF(resume secret, "tsess binder", session_id), M1_prefix)``
(docs/protocol.md, "Binders"): it proves that the participant holds the
session's current resume secret, costs only keyed hashes, and covers the fresh
nonces and ephemeral keys of its ClientHello, so it is useless anywhere else.
The venue checks it before any public-key operation, so that admission can
trust a proven resume more than a claim of a key id.
"""

from __future__ import annotations

import hmac

from .._errors import AuthenticationError, CloseCode
from . import _crypto as c
from ._record import SessionRecord
from ._wire import ClientHello

__all__ = ["binder", "check_binders", "resumable"]


def binder(secret: bytes, session_id: bytes, m1_prefix: bytes) -> bytes:
    """The binder of ``m1_prefix`` (M1 without its trailer) under ``secret``."""
    return c.mac(c.kdf(secret, c.L_BINDER, session_id), m1_prefix)


def resumable(hello: ClientHello, session: SessionRecord | None) -> SessionRecord | None:
    """``session``, unless it must not be handed to this ClientHello (never hand one
    participant's session to another, nor a compromised one to anybody)."""
    resume = hello.resume
    if session is None or session.compromised:
        return None
    if resume is not None and (session.key_id, session.session_id) != (
        hello.key_id,
        resume.session_id,
    ):
        return None
    return session


def check_binders(
    binders: list[tuple[int, bytes]], session: SessionRecord, m1_prefix: bytes
) -> tuple[int, bytes]:
    """The generation and secret of the first binder that verifies (constant-time).

    Raises AuthenticationError: ``BINDER_REUSED`` when a binder verifies under a
    spent secret, ``AUTH_FAILED`` when none verifies.
    """
    sid = session.session_id
    for gen, given in binders:
        secret = session.resume_secrets.get(gen)
        if secret is not None and hmac.compare_digest(binder(secret, sid, m1_prefix), given):
            return gen, secret
    for secret in session.spent_secrets:
        for _gen, given in binders:
            if hmac.compare_digest(binder(secret, sid, m1_prefix), given):
                # A replayed ClientHello can never complete M3, so the session itself
                # is left alone (killing it would hand anyone holding a captured M1 a
                # way to end it); the attempt is refused and logged.
                raise AuthenticationError(
                    "resume binder was already used (replayed ClientHello)",
                    code=CloseCode.BINDER_REUSED,
                    remote=True,
                )
    raise AuthenticationError(
        "resume binder does not verify", code=CloseCode.AUTH_FAILED, remote=True
    )
