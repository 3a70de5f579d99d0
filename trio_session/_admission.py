"""Admission: the venue's cheap checks, made before any expensive crypto.

A handshake costs the venue an Ed25519 signature and an X25519 exchange, so an
unauthenticated client must not get them for free: per-address and per-key
token buckets run first (the address before the ClientHello is even parsed),
then the registry lookup, and only then ``accept()``.  The same buckets rate
messages per session in :class:`~trio_session.RateLimit`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import final

from ._config import SessionConfig
from ._errors import RateLimited

__all__ = ["Admission", "TokenBuckets"]


@final
class TokenBuckets:
    """Per-key token buckets: ``rate`` per second, bursts of ``burst`` (default:
    one second's worth).  Idle full buckets are pruned past ``max_keys`` keys."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float],
        *,
        burst: float | None = None,
        max_keys: int = 100_000,
    ) -> None:
        self.rate = rate
        self.burst = max(1.0, rate if burst is None else burst)
        self._clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}
        self._max_keys = max_keys

    def take(self, key: Hashable) -> float:
        """0.0 when allowed (a token was taken), else seconds until one is available."""
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            self._prune(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        if len(self._buckets) > self._max_keys:
            full_after = self.burst / self.rate
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}


@final
class Admission:
    """Handshake rate limits per remote address and per key id (``SessionConfig``
    ``handshake_rate_per_address`` / ``handshake_rate_per_key``)."""

    def __init__(self, config: SessionConfig, clock: Callable[[], float]) -> None:
        self.addresses = TokenBuckets(config.handshake_rate_per_address, clock)
        self.keys = TokenBuckets(config.handshake_rate_per_key, clock)

    def admit_address(self, remote_address: str) -> None:
        """Raise :class:`~trio_session.RateLimited` when this host (port ignored)
        started too many handshakes."""
        wait = self.addresses.take(remote_address.rsplit(":", 1)[0])
        if wait:
            raise RateLimited(
                "too many handshakes from this address", retry_after=wait, remote=False
            )

    def admit_key(self, key_id: str) -> None:
        """Raise :class:`~trio_session.RateLimited` when this key started too many."""
        wait = self.keys.take(key_id)
        if wait:
            raise RateLimited("too many handshakes for this key", retry_after=wait, remote=False)
