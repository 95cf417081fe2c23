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

A call that finds no room takes its place in a line instead of polling for it: the same
script keeps it the next free slot (the earliest time the window has room after every slot
already kept) and answers when that is, so a backlog of N writes costs N reservations, not N
times as many wake-ups racing for each slot. A push keeps its place across its retry (it is
scheduled for exactly that moment: ``worker/quotaline.py``) and, once there, spends it with
one check that the requests actually sent leave room (``SPEND``): the line only says when to
come back, the check at send time keeps the window. A place kept by a push that crashed or no
longer needs it is simply wasted (it leaves the window like any other). Other callers may
wait in the thread for a place up to ``max_wait`` seconds; past that they raise
``RateLimited`` so the job is retried later. Waiting in a thread is rationed, because a
thread waiting for one vendor's quota is a thread not serving the others: a push straight
from ingest never waits (``no_waiting``: it goes to its vendor's queue and the event's other
pushes finish), and at most ``WAITERS`` threads per process wait for one vendor at a time.
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
from worker.quotaline import HOLD_SECONDS, IN_LINE_MS, Reservation, current_line
from worker.store.keys import quota_key

# KEYS: one sorted set per limit (no expiry: each call trims it to one window, so it never
# holds more than the limit allows plus the places kept in line; a PEXPIRE per call would
# cost a command per request).
# ARGV: margin_ms, lease_ms, wanted, places, within_ms, together, then
# (window_ms, amount) per limit, then a unique member prefix. Returns {granted, wait_ms,
# kept}: granted slots were taken in every limit; when none could be, wait_ms says when
# ``places`` slots are free after every one already kept, and ``kept`` says they were kept
# for the caller (only when that is at most within_ms away). More than one slot is granted
# only while every window stays at least half free after the grant: near a limit, one at a
# time. ``together`` (a write's first request): all its ``places`` now or none, so a write
# is never cut in two. Every member is scored at the latest time its request may be sent
# (now; a lease's or a kept place's expiry), and counted from the moment it is added: a
# request sent at t fits when fewer than ``amount`` members score at or after t - window,
# whatever lies beyond t.
ACQUIRE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local margin = tonumber(ARGV[1])
local wanted = tonumber(ARGV[3])
local places = tonumber(ARGV[4])
local together = tonumber(ARGV[6]) == 1
local full = false
local at = now_ms
for i = 1, #KEYS do
  places = math.min(places, tonumber(ARGV[2 * i + 6]))
end
local need = 1
if together then
  need = math.max(1, places)
end
for i, key in ipairs(KEYS) do
  local window = tonumber(ARGV[2 * i + 5]) + margin
  local amount = tonumber(ARGV[2 * i + 6])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms - window)
  local held = redis.call('ZCARD', key)
  local free = amount - held
  if free < need then
    full = true
  elseif free - wanted < amount / 2 then
    wanted = 1
  end
  -- places fit at t once the member at this rank (oldest first) has left t's window
  local rank = held - amount + math.max(1, places)
  if rank >= 1 then
    local member = redis.call('ZRANGE', key, rank - 1, rank - 1, 'WITHSCORES')
    at = math.max(at, tonumber(member[2]) + window + 1)
  end
end
local score = now_ms
local count = wanted
if full then
  if places < 1 or at - now_ms > tonumber(ARGV[5]) then
    return {0, at - now_ms, 0}
  end
  score = at
  count = places
elseif together then
  count = need
  wanted = need
elseif wanted > 1 then
  score = now_ms + tonumber(ARGV[2])
end
local entries = {}
for j = 1, count do
  entries[2 * j - 1] = score
  entries[2 * j] = ARGV[#ARGV] .. ':' .. j
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, unpack(entries))
end
if full then
  return {0, at - now_ms, count}
end
return {wanted, 0, 0}
"""

# A kept place is spent when its request is sent, and only if the requests actually sent
# leave room then: its member moves to the time it is sent. The places kept in line only
# say when to come back; this check is what keeps the window. KEYS as above. ARGV:
# margin_ms, lease_ms, member, then (window_ms, amount) per limit. Returns 0 when the member
# now stands for a request sent now, else the ms until the window may have room.
SPEND = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local margin = tonumber(ARGV[1])
local until_ms = now_ms + tonumber(ARGV[2])
local member = ARGV[3]
local wait = 0
for i, key in ipairs(KEYS) do
  local window = tonumber(ARGV[2 * i + 2]) + margin
  local amount = tonumber(ARGV[2 * i + 3])
  local sent = redis.call('ZRANGEBYSCORE', key, now_ms - window, until_ms, 'LIMIT', 0, amount + 1)
  local others = {}
  for _, m in ipairs(sent) do
    if m ~= member then
      others[#others + 1] = m
    end
  end
  if #others >= amount then
    local oldest = redis.call('ZSCORE', key, others[1])
    wait = math.max(wait, tonumber(oldest) + window - now_ms + 1)
  end
end
if wait > 0 then
  return wait
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now_ms, member)
end
return 0
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
        self.spend_script = client.register_script(SPEND) if items else None
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
        wait, _ = self._take(places=0, within=0.0)
        return wait

    def _take(
        self, *, places: int, within: float, together: bool = False
    ) -> tuple[float, Reservation | None]:
        """A slot now (0.0, and with ``together`` the rest of ``places`` taken with it);
        else the seconds until ``places`` slots are free, and those places kept in line
        when that is at most ``within`` seconds away."""
        if self.script is None:
            return 0.0, None
        now = time.monotonic()
        together = together and places > 1
        with self._lease_lock:
            self._calls.append(now)
            while self._calls[0] < now - LEASE_SECONDS:
                self._calls.popleft()
            while self._leased and self._leased[0] <= now:
                self._leased.popleft()  # unused in time: its window outlives its use
            if self._leased and not together:
                self._leased.popleft()
                return 0.0, None
            wanted = min(LEASE_MOST, len(self._calls))
        args: list[int | str] = [self.margin_ms, int(LEASE_SECONDS * 1000), wanted, places]
        args += [int(within * 1000), int(together)]
        for window_ms, amount in self.limits:
            args += [window_ms, amount]
        name = uuid.uuid4().hex
        args.append(name)
        granted, wait_ms, kept = self.script(keys=self.keys, args=args)
        if granted and together:  # the first place is this request's; the rest are kept
            return 0.0, Reservation(self.vendor, time.time(), name, int(granted), used=1)
        if granted:
            with self._lease_lock:
                self._leased.extend([now + LEASE_SECONDS] * (int(granted) - 1))
            return 0.0, None
        wait = float(wait_ms) / 1000.0
        return wait, Reservation(self.vendor, time.time() + wait, name, int(kept)) if kept else None

    def acquire(self) -> None:
        """Take one request's worth of every limit: now, on a place kept earlier, or on a
        place in line (waited for here when allowed, else carried by ``OwnQuota``)."""
        line = current_line()
        if line is not None and line.held is not None and self._spend(line.held):
            line.started = True
            _may_wait.set(True)
            return
        waits = _may_wait.get() and self._waiters.acquire(blocking=False)
        try:
            # A push keeps places for its whole write however far the line reaches; a
            # caller that can wait keeps one place within ``max_wait``; others keep none.
            places, within = (0, 0.0) if not waits else (1, self.max_wait)
            if line is not None:
                places, within = line.needs, IN_LINE_MS / 1000
            # A write's first request takes the places of its next ones with it.
            together = line is not None and not line.started
            wait, kept = self._take(places=places, within=within, together=together)
            if wait <= 0:
                # Once a write has sent its first request, its next ones (Leadway's
                # opportunity after its contact) may wait: giving up now would waste it.
                _may_wait.set(True)
                if line is not None:
                    line.started = True
                    line.held = kept or line.held
                return
            if kept is not None and waits and wait <= self.max_wait:
                time.sleep(max(0.0, kept.at - time.time()))
                if not self._spend(kept):
                    raise self._used_up(wait)
                if line is not None:
                    line.started = True
                    line.held = kept  # the rest of the write's places
                return
            raise self._used_up(wait, kept)
        finally:
            if waits:
                self._waiters.release()

    def _spend(self, held: Reservation) -> bool:
        """Send on the next place kept in ``held``, once the requests actually sent leave
        room (a moment's wait when some of the line ahead went late); False when no place
        is usable: the caller asks again (and the place is wasted)."""
        member = held.next_member(self.vendor)
        if member is None or self.spend_script is None:
            return member is not None
        args: list[int | str] = [self.margin_ms, int(LEASE_SECONDS * 1000), member]
        for window_ms, amount in self.limits:
            args += [window_ms, amount]
        deadline = time.monotonic() + HOLD_SECONDS
        while wait_ms := int(self.spend_script(keys=self.keys, args=args)):  # type: ignore[arg-type]
            if time.monotonic() + wait_ms / 1000 > deadline:
                held.used = held.count
                return False
            time.sleep(wait_ms / 1000)
        return True

    def _used_up(self, wait: float, kept: Reservation | None = None) -> RateLimited:
        return OwnQuota(
            f"{self.vendor}: quota {self.spec} used up",
            vendor=self.vendor,
            retry_after=wait if kept is not None else max(1.0, wait),
            reserved=kept.as_job() if kept is not None else None,
        )

    def headroom(self) -> list[tuple[str, int, int]]:
        """(limit, used, allowed) per limit, for the status page."""
        rows = []
        for key, (window_ms, amount) in zip(self.keys, self.limits, strict=True):
            now_ms = int(time.time() * 1000)
            # sent in the window or leased; places kept further ahead in line are not
            used = self.script.registered_client.zcount(  # type: ignore[union-attr]
                key, now_ms - window_ms - self.margin_ms, now_ms + int(LEASE_SECONDS * 1000)
            )
            rows.append((f"{amount}/{window_ms // 1000}s", int(used), amount))  # type: ignore[arg-type]
        return rows
