"""``POST /webhooks/<vendor>``: verify the sender, queue the event durably, answer.

The receiver does no vendor I/O (SNS subscription confirmation aside, which AWS requires).
Answers: 202 queued; 200 a delivery already seen (same ``webhook-id``/``webhookId``/SNS
``MessageId``); 400 not UTF-8 JSON, a number or string the worker could not carry, a
malformed chunked body, or missing what the scheme needs; 401 missing, wrong or stale
signature; 404 unknown or disabled vendor; 408 body not sent in time; 413 too large; 429
(HighLevel, which retries only on 429) or 503 with ``Retry-After`` (the others) when the
event cannot be queued. A 2xx is never given for an event that was not queued.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import gevent
import gevent.monkey
import structlog
from flask import Blueprint, Response, current_app, jsonify, request
from gunicorn.http.errors import ParseException
from marshmallow import ValidationError
from redis.exceptions import RedisError
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import get_input_stream

from schemas import vendorids
from schemas.envelope import Envelope, is_thin
from schemas.mapping import VENDORS
from web.publisher import QUEUE, Publisher
from web.signatures import (
    HIGHLEVEL_ED25519_PEM,
    HIGHLEVEL_RSA_PEM,
    Verified,
    parse_json_object,
    verify_highlevel,
    verify_standard,
)
from web.sns import SnsVerifier
from worker.errors import DeliveryPending, Rejected
from worker.runtime import Runtime
from worker.settings import Settings
from worker.store import metrics
from worker.store.deliveries import Admission, Delivery, Window
from worker.vendors.registry import FACTS

if TYPE_CHECKING:
    from web.limits import IngressLimits

log = structlog.get_logger("oppsync.web")
bp = Blueprint("receiver", __name__)
UNAVAILABLE_RETRY_AFTER = "5"

# Replay windows. Standard Webhooks senders sign every attempt afresh, so the window is
# OPPSYNC_SIGNATURE_TOLERANCE_SECONDS. HighLevel (after a 429) and SNS redeliver the very
# bytes they signed first, so their window also spans the sender's redelivery schedule, or
# every redelivery would be refused as stale and the event lost. Delivery ids are remembered
# far longer (72 h), so a replay inside the window is answered "duplicate", never queued.
# Each sender's schedule is among its vendor's facts (``redelivery_seconds``).
#: Standard Webhooks timestamps are whole seconds since the epoch.
INTEGER_SECONDS = re.compile(r"\s*[0-9]{1,12}\s*")
#: Longest a sender may take over its whole body (webhooks are a few KB, sent at once).
BODY_SECONDS = 10.0
#: Deepest JSON nesting queued. Vendor records are a few levels deep; deeper input would
#: only cost the worker (and Python's recursion limit) more.
MAX_JSON_DEPTH = 32


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
        stamp = headers.get("webhook-timestamp")
        if stamp and not INTEGER_SECONDS.fullmatch(stamp):
            # Only digits: "nan" or "1e3" would otherwise reach float() and slip the window.
            raise Rejected(
                "webhook-timestamp is not whole seconds.", status=401, reason="bad_timestamp"
            )
        return verify_standard(body, headers, vs.webhook_secrets, tolerance)
    facts = FACTS[vendor]
    if any(header in headers for header in facts.native_headers):
        if facts.native_signature == "highlevel":
            return verify_highlevel(
                body,
                headers,
                tolerance=tolerance + facts.redelivery_seconds,
                ed25519_pem=vs.get("LEADWAY_WEBHOOK_PUBLIC_KEY") or HIGHLEVEL_ED25519_PEM,
                rsa_pem=vs.get("LEADWAY_WEBHOOK_RSA_PUBLIC_KEY") or HIGHLEVEL_RSA_PEM,
            )
        if facts.native_signature == "sns":
            return _verify_sns(body, facts.redelivery_seconds)
    raise Rejected(
        "The request carries no signature this route accepts.", status=401, reason="unsigned"
    )


def _check_sns_age(message: dict[str, Any], redelivery_seconds: int) -> None:
    """Refuse an SNS message sent before SNS could still be redelivering it.

    Checked before the signature (it only refuses, and spares a certificate fetch); a
    missing or malformed ``Timestamp`` is left for the verifier to report.
    """
    stamp = message.get("Timestamp")
    if not isinstance(stamp, str):
        return
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        sent_at = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    except (ValueError, OverflowError, OSError):
        raise Rejected(
            "SNS message is malformed: Timestamp is not ISO 8601.",
            status=400,
            reason="sns_malformed",
        ) from None
    tolerance = _settings().signature_tolerance_seconds
    age = time.time() - sent_at
    if age > tolerance + redelivery_seconds or age < -tolerance:
        raise Rejected(
            "The SNS message Timestamp is outside the replay window.", status=401, reason="stale"
        )


def _verify_sns(body: bytes, redelivery_seconds: int) -> Verified | Response:
    message = parse_json_object(body)
    kind = message.get("Type")
    verifier = _sns()
    _check_sns_age(message, redelivery_seconds)
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


class SlowBody(Exception):
    """The body did not arrive in time. Not an ``OSError``: werkzeug would take that for a
    client that went away and answer a bare 400."""


def read_body(max_bytes: int, seconds: float = BODY_SECONDS) -> bytes:
    """The body, read within ``seconds`` and never more than one byte past ``max_bytes``,
    also without Content-Length (chunked); ``Rejected`` (413, 408, 400) otherwise.

    Werkzeug's own limit (``MAX_CONTENT_LENGTH``) silently truncates a chunked body at the
    limit, so read one byte more than allowed and look.
    """
    stream = get_input_stream(request.environ, max_content_length=max_bytes + 1)
    try:
        with _deadline(seconds):
            body = stream.read()
    except RequestEntityTooLarge:
        body = None
    except SlowBody:
        raise Rejected(
            f"The body did not arrive within {seconds:g} s.", status=408, reason="body_timeout"
        ) from None
    except ParseException:
        # gunicorn's chunked decoder: a bad chunk size, a missing CRLF, a bad trailer.
        raise Rejected("The chunked body is malformed.", status=400, reason="bad_chunked") from None
    if body is None or len(body) > max_bytes:
        raise Rejected(
            f"The body is larger than {max_bytes} bytes.", status=413, reason="too_large"
        )
    return body


def _deadline(seconds: float) -> AbstractContextManager[object]:
    """Under the Procfile's gevent worker, a timer that interrupts this request's greenlet
    wherever reading blocks: a sender trickling or stalling its body is answered 408, and
    gunicorn closes a connection whose body read failed instead of holding it for good (a
    timeout per socket read would not do: gunicorn reads until it has what it asked for).
    Other callers (tests' WSGI clients, which hand over a body already read) get none."""
    if gevent.monkey.is_module_patched("socket"):
        return gevent.Timeout(seconds, SlowBody())
    return nullcontext()


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value nests more than ``limit`` levels (iteratively)."""
    # Only containers are kept to visit: a record is mostly scalars, seen once each here.
    pending: list[tuple[dict[str, Any] | list[Any], int]] = []
    if isinstance(value, dict | list):
        pending.append((value, 1))
    while pending:
        item, depth = pending.pop()
        if depth > limit:
            return True
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                pending.append((child, depth + 1))
    return False


def check_thin_id(vendor: str, payload: dict[str, Any]) -> None:
    """Refuse a thin event whose id is none of the vendor's id forms: the worker would put
    it in a URL (``..`` names the collection) and can only dead-letter it."""
    if not is_thin(payload):
        return
    try:
        vendorids.check(vendor, payload["id"])
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {}
        detail = "; ".join(str(m) for m in messages.get("id", ["not an id"]))
        raise Rejected(
            f"The event's id is refused: {detail}.", status=400, reason="bad_id"
        ) from None


def _publisher() -> Publisher:
    return current_app.extensions["oppsync.publisher"]  # type: ignore[no-any-return]


def _limits() -> IngressLimits:
    return current_app.extensions["oppsync.ingress_limits"]  # type: ignore[no-any-return]


def enqueue(vendor: str, verified: Verified, windows: Sequence[Window]) -> Admission:
    """Queue the event unless its delivery was queued before, counting the request in its
    ingress ``windows``: one Redis round trip. Raises on Redis loss."""
    if nested_deeper_than(verified.payload, MAX_JSON_DEPTH):
        raise Rejected(
            f"The JSON body is nested deeper than {MAX_JSON_DEPTH} levels.",
            status=400,
            reason="too_deep",
        )
    check_thin_id(vendor, verified.payload)
    rt = _runtime()
    envelope = Envelope(
        vendor=vendor,
        scheme=verified.scheme,  # type: ignore[arg-type]
        delivery_id=verified.delivery_id,
        received_at=time.time(),
        correlation_id=uuid.uuid4().hex,
        payload=verified.payload,
    )
    delivery = Delivery(
        verified.delivery_id, rt.settings.dedup_ttl_seconds, QUEUE, _publisher().message(envelope)
    )
    admission = rt.store.admit(vendor, windows, delivery)
    if admission.outcome == "delivery_pending":
        raise DeliveryPending(verified.delivery_id)
    if admission.outcome == "queued":
        structlog.contextvars.bind_contextvars(correlation_id=envelope.correlation_id)
    return admission


@bp.post("/webhooks/<vendor>")
def receive(vendor: str) -> Response | tuple[Any, int]:
    limits = _limits()
    windows = limits.windows()
    label = vendor if vendor in VENDORS else "unknown"
    breached = limits.known_breach(windows)
    if breached:
        # Over a limit this process saw breached: refused before reading or verifying.
        metrics_safe(_runtime().redis, label, "rate_limited")
        return limits.refusal(breached)
    answer = _answer(vendor, windows)
    if isinstance(answer, tuple):
        admission, delivery_id = answer
        if admission.outcome == "rate_limited":
            limits.remember(windows, admission)
            return limits.refusal(admission.breached)
        return _accepted(vendor, delivery_id, admission.outcome)
    # Any other answer counts against the limits too, before it is given.
    try:
        counted = _runtime().store.admit(label, windows)
    except (RedisError, OSError):
        return answer  # fail open: the limits never decide an answer Redis cannot give
    if counted.outcome == "rate_limited":
        limits.remember(windows, counted)
        return limits.refusal(counted.breached)
    return answer


def _answer(vendor: str, windows: Sequence[Window]) -> tuple[Admission, str] | Response:
    """A verified delivery's admission (queued, a duplicate, or over a limit) with its
    delivery id, or the answer to anything else."""
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
    try:
        # A declared length over the limit is refused before reading a byte of it.
        if (request.content_length or 0) > settings.max_body_bytes:
            raise Rejected(
                f"The body is larger than {settings.max_body_bytes} bytes.",
                status=413,
                reason="too_large",
            )
        body = read_body(settings.max_body_bytes)
        verified = verify(vendor, body)
        if isinstance(verified, Response):
            return verified
        return enqueue(vendor, verified, windows), verified.delivery_id
    except Rejected as exc:
        metrics_safe(redis_client, vendor, exc.reason)
        log.info("webhook.rejected", vendor=vendor, reason=exc.reason)
        return problem(exc.status, str(exc), exc.reason)
    except RecursionError:
        # json.loads of "[[[[…" deeper than the interpreter's recursion limit.
        metrics_safe(redis_client, vendor, "too_deep")
        return problem(400, "The JSON body is nested too deeply.", "too_deep")
    except DeliveryPending as exc:
        # Not an outage: a claim ``queue_once`` has not confirmed (counted by the script).
        log.warning("webhook.pending", vendor=vendor, delivery=exc.delivery_id)
        return retry_later(vendor, str(exc).capitalize() + ".", exc.reason)
    except (RedisError, OSError) as exc:
        log.error("webhook.unavailable", vendor=vendor, error=type(exc).__name__)
        return retry_later(vendor, "Cannot queue the event right now; retry later.", "unavailable")


def _accepted(vendor: str, delivery_id: str, outcome: str) -> tuple[Response, int]:
    """202 for a delivery queued now, 200 for one queued before (counted by the script)."""
    log.info("webhook.accepted", vendor=vendor, delivery=delivery_id, outcome=outcome)
    # Not jsonify: Flask's JSON provider cost more than the answer is worth, per delivery.
    status = "queued" if outcome == "queued" else "duplicate"
    answer = json.dumps({"status": status, "id": delivery_id})
    return Response(answer, mimetype="application/json"), 202 if status == "queued" else 200


def retry_later(vendor: str, message: str, reason: str) -> Response:
    """Ask the sender to deliver again, with Retry-After, in the status it redelivers on
    (its facts' ``retry_status``: 503, and 429 for HighLevel, VENDORS.md §2.7)."""
    status = FACTS[vendor].retry_status
    return problem(status, message, reason, {"Retry-After": UNAVAILABLE_RETRY_AFTER})


def metrics_safe(client: Any, vendor: str, outcome: str) -> None:
    """Count an edge outcome; metrics never decide an answer."""
    try:
        metrics.count(client, "oppsync_events_received_total", vendor=vendor, outcome=outcome)
    except (RedisError, OSError):
        pass
