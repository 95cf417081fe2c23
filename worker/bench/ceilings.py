"""The two ceilings the benchmark divides by, run on the same machine in the same run.

* ``lpush_app()``: a bare Flask endpoint that only ``LPUSH``es the request body into Redis,
  served by gunicorn with the Procfile's web settings: no web stack can ingest faster.
* ``noop``: a Celery task that does nothing, registered on oppsync's own Celery app (the
  worker loads this module with ``--include``) so the same worker configuration (pool,
  concurrency, prefetch, late acks, broker) consumes it. ``python -m worker.bench.ceilings
  publish N`` queues N of them on ``ingest`` before that worker starts.
"""

from __future__ import annotations

import sys

import redis
from flask import Flask, Response, request

from worker.celery_app import app as celery_app
from worker.settings import get_settings

#: Where the bare endpoint pushes bodies (the benchmark deletes it afterwards).
CEILING_LIST = "bench:ceiling"
NOOP_TASK = "oppsync.bench_noop"
NOOP_QUEUE = "ingest"


def lpush_app() -> Flask:
    """``POST /webhooks/<vendor>``: LPUSH the body, answer 202. Nothing else."""
    client = redis.Redis.from_url(get_settings().redis_url)
    app = Flask("oppsync-bench-ceiling")

    @app.post("/webhooks/<vendor>")
    def receive(vendor: str) -> Response:
        client.lpush(CEILING_LIST, request.get_data())
        return Response(b'{"status":"queued"}', 202, mimetype="application/json")

    return app


@celery_app.task(name=NOOP_TASK)
def noop(number: int) -> None:
    """Nothing: what the worker configuration itself costs per task."""


def publish(count: int) -> None:
    """Queue ``count`` no-op tasks where the ingest tasks go."""
    with celery_app.producer_or_acquire() as producer:
        for number in range(count):
            noop.apply_async(args=(number,), queue=NOOP_QUEUE, producer=producer)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "publish":
        sys.exit("usage: python -m worker.bench.ceilings publish N")
    publish(int(sys.argv[2]))
