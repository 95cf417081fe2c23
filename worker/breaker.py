"""A circuit breaker per vendor, shared through Redis.

A vendor that keeps failing is not called on the fast path until it has had time to recover.

After ``THRESHOLD`` transient failures in a row (within ``FAILURE_WINDOW`` seconds) the
breaker opens for ``OPEN_SECONDS``: new pushes to that vendor go straight to its own retry
queue instead of tying up the ingest workers on timeouts, so the other vendors' writes are
not slowed. Retries on the vendor's queue still call it, and the first success closes it.
"""

from __future__ import annotations

import threading
import time

import redis

from worker.store.keys import breaker_failures_key, breaker_open_key

THRESHOLD = 5
FAILURE_WINDOW = 60
OPEN_SECONDS = 30


#: How long a process trusts what it last read of a breaker (saves a Redis call per push).
CHECK_EVERY = 1.0
_lock = threading.Lock()
_read: dict[str, tuple[float, float]] = {}  # vendor -> (read at, open until)
_failing: set[str] = set()  # vendors this process saw fail since their last success


def open_for(client: redis.Redis, vendor: str) -> float:
    """Seconds the breaker stays open (0.0 when closed), as of at most a second ago."""
    now = time.monotonic()
    with _lock:
        read_at, until = _read.get(vendor, (float("-inf"), 0.0))
    if now - read_at > CHECK_EVERY:
        ttl = client.pttl(breaker_open_key(vendor))
        until = now + (float(ttl) / 1000.0 if isinstance(ttl, int) and ttl > 0 else 0.0)
        with _lock:
            _read[vendor] = (now, until)
    return max(0.0, until - now)


def record_failure(client: redis.Redis, vendor: str) -> bool:
    """Count a transient failure; True when this one opened the breaker."""
    with _lock:
        _failing.add(vendor)
    pipe = client.pipeline(transaction=False)
    pipe.incr(breaker_failures_key(vendor))
    pipe.expire(breaker_failures_key(vendor), FAILURE_WINDOW)
    count, _ = pipe.execute()
    if int(count) >= THRESHOLD:
        return bool(client.set(breaker_open_key(vendor), "1", ex=OPEN_SECONDS, nx=True))
    return False


def record_success(client: redis.Redis, vendor: str) -> None:
    """A success closes the breaker (only a process that saw failures needs to say so)."""
    with _lock:
        if vendor not in _failing:
            return
        _failing.discard(vendor)
        _read.pop(vendor, None)
    client.delete(breaker_failures_key(vendor), breaker_open_key(vendor))
