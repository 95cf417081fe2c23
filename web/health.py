"""``/healthz`` (the process is up) and ``/readyz`` (Redis answers and a worker was seen)."""

from __future__ import annotations

import time

from flask import Blueprint, Response, current_app, jsonify
from redis.exceptions import RedisError

bp = Blueprint("health", __name__)
WORKER_FRESH_SECONDS = 30


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    store = current_app.extensions["oppsync.runtime"].store
    try:
        store.redis.ping()
        beat = store.last_heartbeat()
    except (RedisError, OSError) as exc:
        return jsonify({"status": "unavailable", "reason": f"Redis does not answer ({exc})"}), 503
    if beat is None or time.time() - beat > WORKER_FRESH_SECONDS:
        seen = "never" if beat is None else f"{int(time.time() - beat)} s ago"
        return jsonify(
            {
                "status": "unavailable",
                "reason": f"no worker seen in the last {WORKER_FRESH_SECONDS} s (last: {seen})",
            }
        ), 503
    return jsonify(
        {"status": "ready", "worker_seen_seconds_ago": round(time.time() - beat, 1)}
    ), 200
