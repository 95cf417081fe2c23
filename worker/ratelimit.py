"""One quota per vendor (and per Leadway location), shared by every process through Redis.

Quotas are written in the ``limits`` library's notation (``100/10 seconds;200000/day``) and
parsed by it. The window itself is a small Lua script over a sorted set of send times, taken
from the Redis server's clock so every host agrees, and checked for all of a vendor's limits
in one atomic step. It is ours rather than ``limits``' moving window because it needs a
sub-second margin: we count a request when we send it, the vendor when it arrives, and
arrival delays vary (new connections, the network). Each window is kept ``margin`` seconds
longer than the vendor's, so two requests sent either side of a window's edge never arrive
inside one window and get refused.

A call waits for room up to ``max_wait`` seconds; past that it raises ``RateLimited`` so the
job is retried later instead of holding a worker.
"""

from __future__ import annotations

import time
import uuid

import redis
from limits import parse_many

from worker.errors import RateLimited

# KEYS: one sorted set per limit (no expiry: each call trims it to one window, so it never
# holds more than the limit allows; a PEXPIRE per call would cost a command per request).
# ARGV: margin_ms, then (window_ms, amount) per limit, then
# a unique member. Returns 0 when a slot was taken in every limit, else ms to wait.
ACQUIRE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local margin = tonumber(ARGV[1])
local wait = 0
for i, key in ipairs(KEYS) do
  local window = tonumber(ARGV[2 * i]) + margin
  local amount = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms - window)
  if redis.call('ZCARD', key) >= amount then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    wait = math.max(wait, tonumber(oldest[2]) + window - now_ms + 1)
  end
end
if wait > 0 then
  return wait
end
local member = ARGV[#ARGV]
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now_ms, member)
end
return 0
"""


class VendorQuota:
    def __init__(
        self,
        client: redis.Redis,
        vendor: str,
        spec: str,
        *,
        scope: str = "",
        margin: float = 0.25,
        max_wait: float = 30.0,
    ) -> None:
        self.vendor = vendor
        self.max_wait = max_wait
        self.margin_ms = int(margin * 1000)
        items = parse_many(spec) if spec else []
        self.keys = [f"oppsync:quota:{vendor}:{scope or 'default'}:{i.amount}/{i.get_expiry()}"
                     for i in items]  # fmt: skip
        self.limits = [(i.get_expiry() * 1000, i.amount) for i in items]
        self.spec = spec
        self.script = client.register_script(ACQUIRE) if items else None

    def try_acquire(self) -> float:
        """Take a slot now if there is one: 0.0, else the seconds until there may be."""
        if self.script is None:
            return 0.0
        args: list[int | str] = [self.margin_ms]
        for window_ms, amount in self.limits:
            args += [window_ms, amount]
        args.append(uuid.uuid4().hex)
        return float(self.script(keys=self.keys, args=args)) / 1000.0

    def acquire(self) -> None:
        """Take one request's worth of every limit, waiting for room when needed."""
        deadline = time.monotonic() + self.max_wait
        while (wait := self.try_acquire()) > 0:
            if time.monotonic() + wait > deadline:
                raise RateLimited(
                    f"{self.vendor}: quota {self.spec} used up",
                    vendor=self.vendor,
                    retry_after=max(1.0, wait),
                    reason="own_quota",
                )
            time.sleep(wait)

    def headroom(self) -> list[tuple[str, int, int]]:
        """(limit, used, allowed) per limit, for the status page."""
        rows = []
        for key, (window_ms, amount) in zip(self.keys, self.limits, strict=True):
            now_ms = int(time.time() * 1000)
            used = self.script.registered_client.zcount(  # type: ignore[union-attr]
                key, now_ms - window_ms - self.margin_ms, "+inf"
            )
            rows.append((f"{amount}/{window_ms // 1000}s", int(used), amount))  # type: ignore[arg-type]
        return rows
