"""The per-vendor circuit breaker on a real Redis."""

from __future__ import annotations

import redis

from worker import breaker
from worker.sandbox.embedded_redis import EmbeddedRedis


def test_breaker_opens_after_repeated_failures_and_closes_on_success(
    redis_server: EmbeddedRedis,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    vendor = "unit-breaker"
    opened = [breaker.record_failure(client, vendor) for _ in range(breaker.THRESHOLD)]
    assert opened == [False] * (breaker.THRESHOLD - 1) + [True]
    assert 0 < breaker.open_for(client, vendor) <= breaker.OPEN_SECONDS
    breaker.record_success(client, vendor)
    assert breaker.open_for(client, vendor) == 0.0


def test_breaker_stays_closed_below_the_threshold(redis_server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    for _ in range(breaker.THRESHOLD - 1):
        breaker.record_failure(client, "unit-breaker-2")
    assert breaker.open_for(client, "unit-breaker-2") == 0.0
