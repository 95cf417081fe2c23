"""One quota per vendor (and per Leadway location), shared by every process through Redis.

Quotas are written in the ``limits`` library's notation (``100/10 seconds;200000/day``) and
parsed by it. The window itself is a small Lua script over a sorted set of send times, taken
from the Redis server's clock so every host agrees, and checked for all of a vendor's limits
in one atomic step. It is ours rather than ``limits``' moving window because it needs a
sub-second margin: we count a request when we send it, the vendor when it arrives, and
arrival delays vary (new connections, the network). Each window is kept ``margin`` seconds
longer than the vendor's, so two requests sent either side of a window's edge never arrive
inside one window and get refused. A busy process takes several slots in one call while
the window is at least half free (a lease, usable for ``LEASE_SECONDS``), so the quota costs
a fraction of a Redis call per request; near the limit slots are taken one at a time.

A call waits for room up to ``max_wait`` seconds; past that it raises ``RateLimited`` so the
job is retried later instead of holding a worker. Waiting is rationed, because a thread
waiting for one vendor's quota is a thread not serving the others: a push straight from
ingest never waits (``no_waiting``: it goes to its vendor's queue and the event's other
pushes finish), and at most ``WAITERS`` threads per process wait for one vendor at a time,
enough to use the whole quota; any other call is retried later, with the retry policy's
growing, jittered delays, so a backlog spreads out instead of waking at once.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from threading import BoundedSemaphore, Lock

import redis
from limits import parse_many

from worker.errors import OwnQuota, RateLimited
from worker.store.keys import quota_key

# KEYS: one sorted set per limit (no expiry: each call trims it to one window, so it never
# holds more than the limit allows; a PEXPIRE per call would cost a command per request).
# ARGV: margin_ms, lease_ms, wanted, then (window_ms, amount) per limit, then a unique
# member prefix. Returns {granted, wait_ms}: granted slots were taken in every limit; when
# none could be, wait_ms says when one may be free. More than one slot is granted only while
# every window stays at least half free after the grant: near a limit, one at a time. A
# lease of several slots is scored at its expiry (now + lease_ms), the latest a slot of it
# may be sent, so each slot leaves the window no earlier than its request does.
ACQUIRE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local margin = tonumber(ARGV[1])
local wanted = tonumber(ARGV[3])
local wait = 0
for i, key in ipairs(KEYS) do
  local window = tonumber(ARGV[2 * i + 2]) + margin
  local amount = tonumber(ARGV[2 * i + 3])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms - window)
  local free = amount - redis.call('ZCARD', key)
  if free <= 0 then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    wait = math.max(wait, tonumber(oldest[2]) + window - now_ms + 1)
  elseif free - wanted < amount / 2 then
    wanted = 1
  end
end
if wait > 0 then
  return {0, wait}
end
local score = now_ms
if wanted > 1 then
  score = now_ms + tonumber(ARGV[2])
end
local entries = {}
for j = 1, wanted do
  entries[2 * j - 1] = score
  entries[2 * j] = ARGV[#ARGV] .. ':' .. j
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, unpack(entries))
end
return {wanted, 0}
"""

#: How long slots taken ahead for this process stay usable. Short: a slot is counted in the
#: window from when it is taken, so one left unused is wasted for a window.
LEASE_SECONDS = 0.2
#: The most slots one call takes ahead.
LEASE_MOST = 16


#: Threads of one process that may wait for one vendor's quota at once.
WAITERS = 4
#: False while a call must not wait for quota (``no_waiting``).
_may_wait: ContextVar[bool] = ContextVar("oppsync_quota_may_wait", default=True)


@contextmanager
def no_waiting() -> Iterator[None]:
    """Within this block, until a request has been sent, a call that finds its vendor's
    quota used up raises ``RateLimited`` at once instead of waiting."""
    token = _may_wait.set(False)
    try:
        yield
    finally:
        _may_wait.reset(token)


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
        self.keys = [quota_key(vendor, scope, i.amount, i.get_expiry()) for i in items]
        self.limits = [(i.get_expiry() * 1000, i.amount) for i in items]
        self.spec = spec
        self.script = client.register_script(ACQUIRE) if items else None
        self._waiters = BoundedSemaphore(WAITERS)
        # Slots taken ahead (when each stops being usable) and this process's recent calls,
        # which say how many to take ahead: about as many as the last lease period used.
        self._leased: deque[float] = deque()
        self._calls: deque[float] = deque()
        self._lease_lock = Lock()

    def try_acquire(self) -> float:
        """Take a slot now if there is one: 0.0, else the seconds until there may be.

        A busy process takes several slots per round trip while the quota has plenty of
        room (one Redis call per request would cost more than the request's own work)."""
        if self.script is None:
            return 0.0
        now = time.monotonic()
        with self._lease_lock:
            self._calls.append(now)
            while self._calls[0] < now - LEASE_SECONDS:
                self._calls.popleft()
            while self._leased and self._leased[0] <= now:
                self._leased.popleft()  # unused in time: its window outlives its use
            if self._leased:
                self._leased.popleft()
                return 0.0
            wanted = min(LEASE_MOST, len(self._calls))
        args: list[int | str] = [self.margin_ms, int(LEASE_SECONDS * 1000), wanted]
        for window_ms, amount in self.limits:
            args += [window_ms, amount]
        args.append(uuid.uuid4().hex)
        granted, wait_ms = self.script(keys=self.keys, args=args)
        if granted:
            with self._lease_lock:
                self._leased.extend([now + LEASE_SECONDS] * (int(granted) - 1))
            return 0.0
        return float(wait_ms) / 1000.0

    def acquire(self) -> None:
        """Take one request's worth of every limit, waiting for room when allowed to."""
        wait = self.try_acquire()
        if wait <= 0:
            # Once a write has sent its first request, its next ones (Leadway's opportunity
            # after its contact) may wait: giving up now would waste the request just made.
            _may_wait.set(True)
            return
        if not _may_wait.get() or not self._waiters.acquire(blocking=False):
            raise self._used_up(wait)
        try:
            deadline = time.monotonic() + self.max_wait
            while wait > 0:
                if time.monotonic() + wait > deadline:
                    raise self._used_up(wait)
                time.sleep(wait)
                wait = self.try_acquire()
        finally:
            self._waiters.release()

    def _used_up(self, wait: float) -> RateLimited:
        return OwnQuota(
            f"{self.vendor}: quota {self.spec} used up",
            vendor=self.vendor,
            retry_after=max(1.0, wait),
        )

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
