"""Admission: the venue's cheap checks, made before any expensive crypto.

A handshake costs the venue an Ed25519 signature and an X25519 exchange, so an
unauthenticated client must not get them for free; but whatever an
unauthenticated client can spend must not be something a participant needs.
Hence one budget per thing that can be proven, checked cheapest first:

1. per remote address, before the ClientHello is even parsed: bounds what one
   host can make the venue do;
2. the registry lookup: an unregistered key id is refused before any state
   exists for it;
3. a resume whose binder verifies (a MAC under a secret only the participant
   holds, no public-key operation) is *verified*: it spends the key's verified
   budget and nothing else.  A handshake without one is *unverified*: it spends
   a budget per (key, address), so attempts that merely claim a key id from
   other addresses never touch what the key's owner uses;
4. an unverified handshake also needs a token left in the key's verified budget
   and in its new-session budget (``session_rate_per_key``: a new session costs
   the venue far more than a resume: tasks, a handler, and at the key's cap the
   end of another session), which it spends only once its signature verified
   (M3).  Only the key's holder can empty those budgets, and an identity that
   exhausted them is refused before the venue signs.

The same buckets rate messages per session in :class:`~trio_session.RateLimit`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import final

from ._config import SessionConfig
from ._errors import RateLimited

__all__ = ["Admission", "TokenBuckets", "host_of"]


def host_of(remote_address: str) -> str:
    """The host part of ``"ip:port"`` / ``"[ip]:port"``."""
    return remote_address.rsplit(":", 1)[0]


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

    def _tokens(self, key: Hashable, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def take(self, key: Hashable) -> float:
        """0.0 when allowed (a token was taken), else seconds until one is available."""
        now = self._clock()
        tokens = self._tokens(key, now)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            self._prune(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def available(self, key: Hashable) -> float:
        """Like :meth:`take`, without taking the token."""
        tokens = self._tokens(key, self._clock())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def charge(self, key: Hashable) -> None:
        """Take a token after the fact (an admitted attempt that proved itself);
        an empty bucket stays empty."""
        now = self._clock()
        self._buckets[key] = (max(0.0, self._tokens(key, now) - 1.0), now)
        self._prune(now)

    def _prune(self, now: float) -> None:
        if len(self._buckets) > self._max_keys:
            full_after = self.burst / self.rate
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}


@final
class Admission:
    """The venue's handshake budgets (see the module docstring): per remote address
    (``handshake_rate_per_address``), and per key (``handshake_rate_per_key``),
    counted per (key, address) until a handshake verified and per key after."""

    def __init__(self, config: SessionConfig, clock: Callable[[], float]) -> None:
        self.addresses = TokenBuckets(config.handshake_rate_per_address, clock)
        self.unverified = TokenBuckets(config.handshake_rate_per_key, clock)
        self.verified = TokenBuckets(config.handshake_rate_per_key, clock)
        self.new_sessions = TokenBuckets(
            config.session_rate_per_key, clock, burst=config.max_sessions_per_key
        )

    def admit_address(self, remote_address: str) -> None:
        """Raise :class:`~trio_session.RateLimited` when this host (port ignored)
        started too many handshakes."""
        wait = self.addresses.take(host_of(remote_address))
        if wait:
            raise RateLimited(
                "too many handshakes from this address", retry_after=wait, remote=False
            )

    def admit_verified(self, key_id: str) -> None:
        """A resume binder of ``key_id`` verified: spend the key's verified budget."""
        wait = self.verified.take(key_id)
        if wait:
            raise RateLimited("too many handshakes for this key", retry_after=wait, remote=False)

    def admit_unverified(self, key_id: str, remote_address: str) -> None:
        """A handshake for ``key_id`` that nothing has verified yet, about to cost a
        signature: spend the (key, address) budget; the key's verified and
        new-session budgets must still have a token for it (taken by
        :meth:`verified_handshake`)."""
        wait = self.unverified.take((key_id, host_of(remote_address)))
        if not wait:
            wait = self.verified.available(key_id)
        if wait:
            raise RateLimited("too many handshakes for this key", retry_after=wait, remote=False)
        wait = self.new_sessions.available(key_id)
        if wait:
            raise RateLimited("too many new sessions for this key", retry_after=wait, remote=False)

    def verified_handshake(self, key_id: str) -> None:
        """The participant's signature verified: the new session spends the key's
        verified and new-session budgets."""
        self.verified.charge(key_id)
        self.new_sessions.charge(key_id)
