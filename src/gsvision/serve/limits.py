"""Per-client request limits: a token-bucket rate limiter and the API-key check."""

from __future__ import annotations

import hmac
import threading
import time

__all__ = ["RateLimiter", "key_matches"]


def key_matches(given: str | None, expected: str) -> bool:
    """Whether ``given`` is the API key, compared in constant time (no timing side channel)."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class RateLimiter:
    """Token buckets per client: ``rate`` requests per second on average, bursts of ``burst``.

    ``acquire(client)`` returns 0.0 when the request may go ahead, else the seconds until it
    would (the ``Retry-After`` a 429 carries). Idle buckets are forgotten once full again, so
    the table stays as small as the set of recently active clients.
    """

    def __init__(self, rate: float, burst: float | None = None, max_clients: int = 100_000):
        if not rate > 0:
            raise ValueError(f"rate limit must be > 0 requests/s, got {rate}")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(1.0, 2.0 * self.rate)
        if self.burst < 1:
            raise ValueError(f"burst must be >= 1 request, got {burst}")
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # client → (tokens, time)
        self._lock = threading.Lock()

    def acquire(self, client: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, then = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens >= 1.0:
                self._buckets[client] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[client] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
            if len(self._buckets) > self.max_clients:
                self._forget_full(now)
            return wait

    def _forget_full(self, now: float) -> None:
        full = [
            c
            for c, (t, then) in self._buckets.items()
            if t + (now - then) * self.rate >= self.burst
        ]
        for c in full:
            del self._buckets[c]
