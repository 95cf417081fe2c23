"""Counters and the latency histogram, kept in Redis so web and every worker share them.

The web app's ``/metrics`` turns them into Prometheus families (``web/metrics.py``); names
are the ones DESIGN.md pins: ``oppsync_events_received_total{vendor,outcome}``,
``oppsync_upserts_total{vendor,outcome}``, ``oppsync_retries_total{vendor}``,
``oppsync_sync_latency_seconds``. Dead-letter counts and queue depths are read live
(``queue_depths``).
"""

from __future__ import annotations

import atexit
import json
import threading
from collections import defaultdict

import redis

from worker.store.keys import METRIC_COUNTERS, METRIC_LATENCY

LATENCY_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


FLUSH_SECONDS = 1.0
# Keeps the larger of two numbers in a hash field (timestamps from several processes).
_SET_IF_NEWER = """
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > current then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2], unpack(ARGV, 3))
end
"""


class Batch:
    """Increments kept in memory and written to Redis at most once a second per process.

    Counting every event straight into Redis cost more commands than the event itself;
    batched, a busy process sends one pipeline a second. A process that dies loses at most
    the last second of counts (metrics, never state).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._incr: defaultdict[tuple[str, str], float] = defaultdict(float)
        self._newest: dict[tuple[str, str], tuple[float, tuple[str, ...]]] = {}
        self._expire: dict[str, int] = {}
        self._thread: threading.Thread | None = None

    def incr(self, client: redis.Redis, key: str, field: str, amount: float = 1,
             *, expire: int | None = None) -> None:  # fmt: skip
        with self._lock:
            self._client = client
            self._incr[(key, field)] += amount
            if expire is not None:
                self._expire[key] = expire
            self._start()

    def newest(self, client: redis.Redis, key: str, field: str, value: float,
               *extra: str) -> None:  # fmt: skip
        """Set ``field`` to ``value`` (and ``extra`` field/value pairs) unless it is newer."""
        with self._lock:
            self._client = client
            if value > self._newest.get((key, field), (float("-inf"), ()))[0]:
                self._newest[(key, field)] = (value, extra)
            self._start()

    def flush(self) -> None:
        with self._lock:
            client, incr, newest, expire = self._client, self._incr, self._newest, self._expire
            self._incr, self._newest, self._expire = defaultdict(float), {}, {}
        if client is None or not (incr or newest):
            return
        pipe = client.pipeline(transaction=False)
        for (key, field), amount in incr.items():
            if float(amount).is_integer():
                pipe.hincrby(key, field, int(amount))
            else:
                pipe.hincrbyfloat(key, field, amount)
        for (key, field), (value, extra) in newest.items():
            pipe.eval(_SET_IF_NEWER, 1, key, field, repr(value), *extra)
        for key, seconds in expire.items():
            pipe.expire(key, seconds)
        try:
            pipe.execute()
        except (redis.RedisError, OSError):
            pass  # metrics are best effort: never fail or block the work they count

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="oppsync-metrics",
                                            daemon=True)  # fmt: skip
            self._thread.start()

    def _run(self) -> None:
        while True:
            threading.Event().wait(FLUSH_SECONDS)
            self.flush()


batch = Batch()
atexit.register(batch.flush)


def flush() -> None:
    """Write what this process has counted now (tests, shutdown)."""
    batch.flush()


def counter_field(name: str, **labels: str) -> str:
    """The field of ``METRIC_COUNTERS`` that holds counter ``name`` with ``labels``."""
    return f"{name}|{json.dumps(labels, sort_keys=True)}"


def count(client: redis.Redis, name: str, amount: int = 1, **labels: str) -> None:
    batch.incr(client, METRIC_COUNTERS, counter_field(name, **labels), amount)


def observe_latency(client: redis.Redis, seconds: float) -> None:
    for bucket in LATENCY_BUCKETS:
        if seconds <= bucket:
            batch.incr(client, METRIC_LATENCY, str(bucket))
    batch.incr(client, METRIC_LATENCY, "sum", seconds)
    batch.incr(client, METRIC_LATENCY, "count")


def read_counters(client: redis.Redis) -> list[tuple[str, dict[str, str], int]]:
    rows = []
    for field, value in client.hgetall(METRIC_COUNTERS).items():  # type: ignore[union-attr]
        name, labels = field.split("|", 1)
        rows.append((name, json.loads(labels), int(value)))
    return rows


def read_latency(client: redis.Redis) -> tuple[dict[float, int], float, int]:
    raw: dict[str, str] = client.hgetall(METRIC_LATENCY)  # type: ignore[assignment]
    buckets = {b: int(raw.get(str(b), 0)) for b in LATENCY_BUCKETS}
    return buckets, float(raw.get("sum", 0)), int(raw.get("count", 0))


#: kombu's Redis transport keeps a queue's messages of priority p > 0 under "<queue>\x06\x16p".
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)
#: kombu's hash of messages a worker holds but has not acked (running, or waiting for their
#: countdown): values are JSON ``[message, exchange, routing_key]``.
UNACKED = "unacked"
# Counted inside Redis so a large backlog of scheduled retries is not copied out per scrape;
# the routing key (the queue's name, as oppsync routes) is the last string of each value.
_UNACKED_BY_QUEUE = """
local counts = {}
for _, raw in ipairs(redis.call('HVALS', KEYS[1])) do
  local queue = string.match(raw, '"([^"]*)"%s*%]%s*$')
  if queue then counts[queue] = (counts[queue] or 0) + 1 end
end
local out = {}
for queue, n in pairs(counts) do
  table.insert(out, queue)
  table.insert(out, n)
end
return out
"""


def queue_depths(client: redis.Redis, queues: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Per queue: (jobs waiting, jobs held unacked by a worker: running or scheduled)."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(queue)
        for step in PRIORITY_STEPS:
            pipe.llen(f"{queue}{PRIORITY_SEP}{step}")
    lengths = iter(pipe.execute())
    raw = client.eval(_UNACKED_BY_QUEUE, 1, UNACKED)
    held = {
        q.decode() if isinstance(q, bytes) else str(q): int(n)
        for q, n in zip(raw[::2], raw[1::2], strict=True)  # type: ignore[index]
    }
    depths = {}
    for queue in queues:
        waiting = sum(next(lengths) for _ in range(1 + len(PRIORITY_STEPS)))
        depths[queue] = (waiting, held.get(queue, 0))
    return depths
