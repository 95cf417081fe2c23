"""Counters and the latency histogram, kept in Redis so web and every worker share them.

The web app's ``/metrics`` turns them into Prometheus families (``web/metrics.py``); names
are the ones DESIGN.md pins: ``oppsync_events_received_total{vendor,outcome}``,
``oppsync_upserts_total{vendor,outcome}``, ``oppsync_retries_total{vendor}``,
``oppsync_sync_latency_seconds``. Dead-letter counts and queue depths are read live
(``queue_depths``).
"""

from __future__ import annotations

import json

import redis

COUNTERS = "oppsync:metrics:counters"  # hash "<name>|<labels json>" -> count
LATENCY = "oppsync:metrics:latency"  # hash "<bucket>" / "sum" / "count"
LATENCY_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


def count(client: redis.Redis, name: str, amount: int = 1, **labels: str) -> None:
    field = f"{name}|{json.dumps(labels, sort_keys=True)}"
    client.hincrby(COUNTERS, field, amount)


def observe_latency(client: redis.Redis, seconds: float) -> None:
    pipe = client.pipeline()
    for bucket in LATENCY_BUCKETS:
        if seconds <= bucket:
            pipe.hincrby(LATENCY, str(bucket), 1)
    pipe.hincrbyfloat(LATENCY, "sum", seconds)
    pipe.hincrby(LATENCY, "count", 1)
    pipe.execute()


def read_counters(client: redis.Redis) -> list[tuple[str, dict[str, str], int]]:
    rows = []
    for field, value in client.hgetall(COUNTERS).items():  # type: ignore[union-attr]
        name, labels = field.split("|", 1)
        rows.append((name, json.loads(labels), int(value)))
    return rows


def read_latency(client: redis.Redis) -> tuple[dict[float, int], float, int]:
    raw: dict[str, str] = client.hgetall(LATENCY)  # type: ignore[assignment]
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
    pipe = client.pipeline()
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
