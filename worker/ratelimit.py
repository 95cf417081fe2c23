"""One quota per vendor (and per Leadway location), shared by every process through Redis.

Uses the ``limits`` library's moving window (a Lua script in Redis), so all workers on all
hosts draw from the same budget and the vendor never sees more than its documented rate.
A call waits for a free slot up to ``max_wait`` seconds; past that it raises
``RateLimited`` so the job is retried later instead of holding a worker.
"""

from __future__ import annotations

import time

from limits import RateLimitItem, parse_many
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from worker.errors import RateLimited


class VendorQuota:
    def __init__(
        self, redis_url: str, vendor: str, spec: str, *, scope: str = "", max_wait: float = 30.0
    ) -> None:
        self.vendor = vendor
        self.identity = (vendor, scope or "default")
        self.items: list[RateLimitItem] = parse_many(spec) if spec else []
        self.max_wait = max_wait
        self.limiter = (
            MovingWindowRateLimiter(RedisStorage(redis_url, key_prefix="oppsync:quota"))
            if self.items
            else None
        )

    def acquire(self) -> None:
        """Take one request's worth of every limit, waiting for room when needed."""
        if self.limiter is None:
            return
        deadline = time.monotonic() + self.max_wait
        for item in self.items:
            while not self.limiter.hit(item, *self.identity):
                reset_at = self.limiter.get_window_stats(item, *self.identity).reset_time
                wait = max(0.01, min(reset_at - time.time(), 1.0))
                if time.monotonic() + wait > deadline:
                    raise RateLimited(
                        f"{self.vendor}: quota {item} used up",
                        vendor=self.vendor,
                        retry_after=max(1.0, reset_at - time.time()),
                        reason="own_quota",
                    )
                time.sleep(wait)
