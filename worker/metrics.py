"""Counters and the latency histogram, kept in Redis so web and every worker share them.

The web app's ``/metrics`` turns them into Prometheus families (``web/metrics.py``); names
are the ones DESIGN.md pins: ``oppsync_events_received_total{vendor,outcome}``,
``oppsync_upserts_total{vendor,outcome}``, ``oppsync_retries_total{vendor}``,
``oppsync_sync_latency_seconds``. Dead-letter counts and queue depths are read live.
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
