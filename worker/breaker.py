"""A circuit breaker per vendor, shared through Redis: a vendor that keeps failing is not
called on the fast path until it has had time to recover.

After ``THRESHOLD`` transient failures in a row (within ``FAILURE_WINDOW`` seconds) the
breaker opens for ``OPEN_SECONDS``: new pushes to that vendor go straight to its own retry
queue instead of tying up the ingest workers on timeouts, so the other vendors' writes are
not slowed. Retries on the vendor's queue still call it, and the first success closes it.
"""

from __future__ import annotations

import redis

THRESHOLD = 5
FAILURE_WINDOW = 60
OPEN_SECONDS = 30


def _failures(vendor: str) -> str:
    return f"oppsync:breaker:{vendor}:failures"


def _open(vendor: str) -> str:
    return f"oppsync:breaker:{vendor}:open"


def open_for(client: redis.Redis, vendor: str) -> float:
    """Seconds the breaker stays open (0.0 when closed)."""
    ttl = client.pttl(_open(vendor))
    return max(0.0, float(ttl) / 1000.0) if isinstance(ttl, int) and ttl > 0 else 0.0


def record_failure(client: redis.Redis, vendor: str) -> bool:
    """Count a transient failure; True when this one opened the breaker."""
    pipe = client.pipeline()
    pipe.incr(_failures(vendor))
    pipe.expire(_failures(vendor), FAILURE_WINDOW)
    count, _ = pipe.execute()
    if int(count) >= THRESHOLD:
        return bool(client.set(_open(vendor), "1", ex=OPEN_SECONDS, nx=True))
    return False


def record_success(client: redis.Redis, vendor: str) -> None:
    client.delete(_failures(vendor), _open(vendor))
