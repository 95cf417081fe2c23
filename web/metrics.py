"""``GET /metrics``: Prometheus families built at scrape time from what oppsync keeps in Redis.

Counters and the latency histogram live in Redis (``worker/store/metrics.py``), so one scrape of
any web process reports what every web and worker process counted. Dead letters and queue
depths are read live. Names are the ones DESIGN.md pins. When ``OPPSYNC_ADMIN_USER`` and
``OPPSYNC_ADMIN_PASSWORD`` are set, the endpoint asks for them (HTTP basic auth); the same
check guards the status page, which always asks.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterator

from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from worker.queues import QUEUES
from worker.runtime import Runtime
from worker.settings import Settings
from worker.store import metrics
from worker.store.deadletters import DeadLetters

bp = Blueprint("metrics", __name__)

#: The pinned counters: name (with ``_total``) -> (labels, help).
COUNTERS: dict[str, tuple[tuple[str, ...], str]] = {
    "oppsync_events_received_total": (
        ("vendor", "outcome"),
        "Webhook deliveries answered at the edge, by vendor and outcome.",
    ),
    "oppsync_upserts_total": (
        ("vendor", "outcome"),
        "Writes to vendors, by target vendor and outcome.",
    ),
    "oppsync_retries_total": (("vendor",), "Jobs scheduled for another attempt, by vendor."),
    "oppsync_duplicates_resolved_total": (
        ("vendor",),
        "Second records of a deal found in a vendor and deleted or marked, by vendor.",
    ),
    "oppsync_unmapped_values_total": (
        ("vendor", "field"),
        "Enumerated values read that the mapping does not know (the field is left unchanged).",
    ),
}
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*_total$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class RedisCollector(Collector):
    """Reads oppsync's shared counters, dead letters and queues at every scrape."""

    def __init__(self, runtime: Runtime, queues: tuple[str, ...]) -> None:
        self.runtime = runtime
        self.queues = queues

    def collect(self) -> Iterator[Metric]:
        vendors = self.runtime.settings.vendors
        yield from self._counters(vendors)
        yield self._dead_letters(vendors)
        yield self._queue_depth()
        yield self._latency()

    def _counters(self, vendors: tuple[str, ...]) -> Iterator[CounterMetricFamily]:
        series: dict[str, dict[tuple[tuple[str, str], ...], int]] = {n: {} for n in COUNTERS}
        for vendor in vendors:  # every vendor has a retry series, even before its first retry
            series["oppsync_retries_total"][(("vendor", vendor),)] = 0
        for name, labels, value in metrics.read_counters(self.runtime.redis):
            if METRIC_NAME.match(name) and all(LABEL_NAME.match(k) for k in labels):
                series.setdefault(name, {})[tuple(sorted(labels.items()))] = value
        for name, values in series.items():
            # Counters other parts add are exported as they are, after the pinned ones.
            names, text = COUNTERS.get(name) or (
                tuple(sorted({k for key in values for k, _ in key})),
                f"{name} (an oppsync counter).",
            )
            family = CounterMetricFamily(name.removesuffix("_total"), text, labels=names)
            for key, value in sorted(values.items()):
                given = dict(key)
                family.add_metric([given.get(label, "") for label in names], value)
            yield family

    def _dead_letters(self, vendors: tuple[str, ...]) -> GaugeMetricFamily:
        counts = DeadLetters(self.runtime.redis).counts()
        family = GaugeMetricFamily(
            "oppsync_dead_letters", "Jobs waiting in dead letters, by vendor.", labels=["vendor"]
        )
        for vendor in sorted({*vendors, *counts}):
            family.add_metric([vendor], counts.get(vendor, 0))
        return family

    def _queue_depth(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "oppsync_queue_depth",
            "Jobs in each Celery queue: waiting, plus held by a worker (running or waiting "
            "for a retry countdown).",
            labels=["queue"],
        )
        for queue, (waiting, held) in metrics.queue_depths(self.runtime.redis, self.queues).items():
            family.add_metric([queue], waiting + held)
        return family

    def _latency(self) -> HistogramMetricFamily:
        buckets, total, count = metrics.read_latency(self.runtime.redis)
        return HistogramMetricFamily(
            "oppsync_sync_latency_seconds",
            "Seconds from a webhook accepted to the last vendor written.",
            # Stored counts are already cumulative: each observation counts in every
            # bucket it fits under.
            buckets=[
                *((_bound(b), n) for b, n in sorted(buckets.items())),
                ("+Inf", count),
            ],
            sum_value=total,
        )


def _bound(bucket: float) -> str:
    return repr(float(bucket))


def admin_configured(settings: Settings) -> bool:
    return bool(settings.admin_user and settings.admin_password)


def admin_authorized(settings: Settings) -> bool:
    """Whether the request carries the admin's basic-auth credentials (constant time)."""
    auth = request.authorization
    if not admin_configured(settings) or auth is None or auth.type != "basic":
        return False
    user = (auth.username or "").encode()
    password = (auth.password or "").encode()
    # Both compared every time, so timing says nothing about which one was wrong.
    user_ok = hmac.compare_digest(user, str(settings.admin_user).encode())
    password_ok = hmac.compare_digest(password, str(settings.admin_password).encode())
    return user_ok & password_ok


def ask_for_credentials(
    text: str = "Sign in with OPPSYNC_ADMIN_USER and its password.\n",
) -> Response:
    return Response(
        text,
        status=401,
        mimetype="text/plain",
        headers={"WWW-Authenticate": 'Basic realm="oppsync", charset="UTF-8"'},
    )


def _registry() -> CollectorRegistry:
    registry = current_app.extensions.get("oppsync.metrics")
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(RedisCollector(current_app.extensions["oppsync.runtime"], QUEUES))
        current_app.extensions["oppsync.metrics"] = registry
    return registry  # type: ignore[no-any-return]


@bp.get("/metrics")
def scrape() -> Response:
    settings: Settings = current_app.extensions["oppsync.runtime"].settings
    if admin_configured(settings) and not admin_authorized(settings):
        return ask_for_credentials()
    try:
        body = generate_latest(_registry())
    except (RedisError, OSError) as exc:
        return Response(
            f"Cannot read metrics: Redis does not answer ({type(exc).__name__}).\n",
            status=503,
            mimetype="text/plain",
        )
    return Response(body, mimetype=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})
