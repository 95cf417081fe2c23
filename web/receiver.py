"""``POST /webhooks/<vendor>``: verify the sender, queue the event durably, answer.

The receiver does no vendor I/O (SNS subscription confirmation aside, which AWS requires).
Answers: 202 queued; 200 a delivery already seen (same ``webhook-id``/``webhookId``/SNS
``MessageId``); 400 not JSON or missing what the scheme needs; 401 missing, wrong or stale
signature; 404 unknown or disabled vendor; 413 too large; 429 (HighLevel, which retries only
on 429) or 503 with ``Retry-After`` (the others) when the event cannot be queued. A 2xx is
never given for an event that was not queued.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import structlog
from flask import Blueprint, Response, current_app, jsonify, request
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from schemas.envelope import Envelope
from schemas.mapping import VENDORS
from web.signatures import (
    HIGHLEVEL_ED25519_PEM,
    HIGHLEVEL_RSA_PEM,
    Verified,
    parse_json_object,
    verify_highlevel,
    verify_standard,
)
from web.sns import SnsVerifier
from worker import metrics
from worker.errors import Rejected
from worker.runtime import Runtime
from worker.settings import Settings

log = structlog.get_logger("oppsync.web")
bp = Blueprint("receiver", __name__)
UNAVAILABLE_RETRY_AFTER = "5"


def problem(
    status: int, message: str, reason: str, headers: dict[str, str] | None = None
) -> Response:
    response = jsonify({"error": reason, "message": message})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _runtime() -> Runtime:
    return current_app.extensions["oppsync.runtime"]  # type: ignore[no-any-return]


def _settings() -> Settings:
    return _runtime().settings


def _sns() -> SnsVerifier:
    return current_app.extensions["oppsync.sns"]  # type: ignore[no-any-return]


def verify(vendor: str, body: bytes) -> Verified | Response:
    """Pick the scheme from the headers and verify; a ``Response`` for SNS housekeeping."""
    settings = _settings()
    vs = settings.vendor[vendor]
    tolerance = settings.signature_tolerance_seconds
    headers = request.headers
    if "webhook-signature" in headers or "webhook-id" in headers:
        return verify_standard(body, headers, vs.webhook_secrets, tolerance)
    if vendor == "leadway" and ("x-ghl-signature" in headers or "x-wh-signature" in headers):
        return verify_highlevel(
            body,
            headers,
            tolerance=tolerance,
            ed25519_pem=vs.get("LEADWAY_WEBHOOK_PUBLIC_KEY") or HIGHLEVEL_ED25519_PEM,
            rsa_pem=vs.get("LEADWAY_WEBHOOK_RSA_PUBLIC_KEY") or HIGHLEVEL_RSA_PEM,
        )
    if vendor == "ivvy" and "x-amz-sns-message-type" in headers:
        return _verify_sns(body)
    raise Rejected(
        "The request carries no signature this route accepts.", status=401, reason="unsigned"
    )


def _verify_sns(body: bytes) -> Verified | Response:
    message = parse_json_object(body)
    kind = message.get("Type")
    verifier = _sns()
    if kind == "SubscriptionConfirmation":
        verifier.confirm_subscription(message)
        log.info("sns.subscribed", topic=message.get("TopicArn"))
        return jsonify({"status": "subscribed"})
    verifier.verify(message)
    if kind != "Notification":
        return jsonify({"status": "ignored", "type": kind})
    inner = message.get("Message")
    inner_payload = parse_json_object(inner.encode() if isinstance(inner, str) else b"")
    return Verified("sns", str(message.get("MessageId", "")), inner_payload)


def enqueue(vendor: str, verified: Verified) -> bool:
    """Queue the event; False when the delivery was already queued. Raises on Redis loss."""
    rt = _runtime()
    if not rt.store.claim_delivery(vendor, verified.delivery_id, rt.settings.dedup_ttl_seconds):
        return False
    envelope = Envelope(
        vendor=vendor,
        scheme=verified.scheme,  # type: ignore[arg-type]
        delivery_id=verified.delivery_id,
        received_at=time.time(),
        correlation_id=uuid.uuid4().hex,
        payload=verified.payload,
    )
    from worker.tasks import ingest_change

    try:
        ingest_change.apply_async(kwargs={"envelope": envelope.to_dict()}, queue="ingest")
    except BaseException:  # noqa: BLE001 - re-raised below
        # Not queued: forget the delivery id so the vendor's retry is accepted.
        try:
            rt.store.release_delivery(vendor, verified.delivery_id)
        finally:
            raise
    structlog.contextvars.bind_contextvars(correlation_id=envelope.correlation_id)
    return True


@bp.post("/webhooks/<vendor>")
def receive(vendor: str) -> Response | tuple[Any, int]:
    if vendor not in VENDORS:
        return problem(
            404, f"Unknown vendor {vendor!r}; known: {', '.join(VENDORS)}.", "unknown_vendor"
        )
    settings = _settings()
    if not settings.enabled(vendor):
        return problem(
            404, f"Vendor {vendor!r} is not enabled (OPPSYNC_VENDORS).", "vendor_disabled"
        )
    redis_client = _runtime().redis
    if (request.content_length or 0) > settings.max_body_bytes:
        metrics_safe(redis_client, vendor, "too_large")
        return problem(
            413, f"The body is larger than {settings.max_body_bytes} bytes.", "too_large"
        )
    body = request.get_data(cache=False)  # bounded by MAX_CONTENT_LENGTH
    try:
        verified = verify(vendor, body)
        if isinstance(verified, Response):
            return verified
        queued = enqueue(vendor, verified)
    except Rejected as exc:
        metrics_safe(redis_client, vendor, exc.reason)
        log.info("webhook.rejected", vendor=vendor, reason=exc.reason)
        return problem(exc.status, str(exc), exc.reason)
    except (RedisError, OperationalError, OSError) as exc:
        log.error("webhook.unavailable", vendor=vendor, error=type(exc).__name__)
        if vendor == "leadway":  # HighLevel redelivers only on 429 (VENDORS.md §2.7)
            return problem(
                429,
                "Cannot queue the event right now; retry later.",
                "unavailable",
                {"Retry-After": UNAVAILABLE_RETRY_AFTER},
            )
        return problem(
            503,
            "Cannot queue the event right now; retry later.",
            "unavailable",
            {"Retry-After": UNAVAILABLE_RETRY_AFTER},
        )
    outcome = "queued" if queued else "duplicate"
    metrics_safe(redis_client, vendor, outcome)
    log.info("webhook.accepted", vendor=vendor, delivery=verified.delivery_id, outcome=outcome)
    if not queued:
        return jsonify({"status": "duplicate", "id": verified.delivery_id}), 200
    return jsonify({"status": "queued", "id": verified.delivery_id}), 202


def metrics_safe(client: Any, vendor: str, outcome: str) -> None:
    """Count an edge outcome; metrics never decide an answer."""
    try:
        metrics.count(client, "oppsync_events_received_total", vendor=vendor, outcome=outcome)
    except (RedisError, OSError):
        pass
