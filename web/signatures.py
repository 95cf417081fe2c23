"""Verifying who sent a webhook: one result type, one adapter per signing scheme.

* Standard Webhooks (every vendor route): ``webhook-id``, ``webhook-timestamp``,
  ``webhook-signature: v1,<base64 HMAC-SHA256>`` over ``id.timestamp.body`` with the vendor's
  ``<VENDOR>_WEBHOOK_SECRET`` (``whsec_…``; several, comma-separated, during a rotation).
  The signature is computed with the ``standardwebhooks`` library; the replay window is ours
  so it can follow ``OPPSYNC_SIGNATURE_TOLERANCE_SECONDS``.
* HighLevel (``leadway``): ``X-GHL-Signature`` Ed25519 over the raw body bytes, or the
  legacy ``X-WH-Signature`` RSA-SHA256; then the body's ``timestamp`` must be fresh.
  https://marketplace.gohighlevel.com/docs/webhook/WebhookIntegrationGuide
* AWS SNS (``ivvy``): see ``web/sns.py``.

Every failure raises ``Rejected`` with the HTTP status the receiver answers.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hmac
import json
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from standardwebhooks.webhooks import Webhook

from worker.errors import Rejected

# HighLevel's published webhook keys (public, the same for every Marketplace app); override
# with LEADWAY_WEBHOOK_PUBLIC_KEY / LEADWAY_WEBHOOK_RSA_PUBLIC_KEY when HighLevel rotates them.
# Source: HighLevel Webhook Integration Guide and highlevel-api-docs
# docs/oauth/WebhookAuthentication.md (VENDORS.md §2.7).
HIGHLEVEL_ED25519_PEM = """-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAi2HR1srL4o18O8BRa7gVJY7G7bupbN3H9AwJrHCDiOg=
-----END PUBLIC KEY-----
"""
HIGHLEVEL_RSA_PEM = """-----BEGIN PUBLIC KEY-----
MIICIjANBgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEAokvo/r9tVgcfZ5DysOSC
Frm602qYV0MaAiNnX9O8KxMbiyRKWeL9JpCpVpt4XHIcBOK4u3cLSqJGOLaPuXw6
dO0t6Q/ZVdAV5Phz+ZtzPL16iCGeK9po6D6JHBpbi989mmzMryUnQJezlYJ3DVfB
csedpinheNnyYeFXolrJvcsjDtfAeRx5ByHQmTnSdFUzuAnC9/GepgLT9SM4nCpv
uxmZMxrJt5Rw+VUaQ9B8JSvbMPpez4peKaJPZHBbU3OdeCVx5klVXXZQGNHOs8gF
3kvoV5rTnXV0IknLBXlcKKAQLZcY/Q9rG6Ifi9c+5vqlvHPCUJFT5XUGG5RKgOKU
J062fRtN+rLYZUV+BjafxQauvC8wSWeYja63VSUruvmNj8xkx2zE/Juc+yjLjTXp
IocmaiFeAO6fUtNjDeFVkhf5LNb59vECyrHD2SQIrhgXpO4Q3dVNA5rw576PwTzN
h/AMfHKIjE4xQA1SZuYJmNnmVZLIZBlQAF9Ntd03rfadZ+yDiOXCCs9FkHibELhC
HULgCsnuDJHcrGNd5/Ddm5hxGQ0ASitgHeMZ0kcIOwKDOzOU53lDza6/Y09T7sYJ
PQe7z0cvj7aE4B+Ax1ZoZGPzpJlZtGXCsu9aTEGEnKzmsFqwcSsnw3JB31IGKAyk
T1hhTiaCeIY/OwwwNUY2yvcCAwEAAQ==
-----END PUBLIC KEY-----
"""


class HeaderSource(Protocol):
    """Request headers, looked up case-insensitively (werkzeug ``Headers``, a dict in tests)."""

    def get(self, key: str, /) -> str | None: ...

    def __contains__(self, key: str, /) -> bool: ...


@dataclass(frozen=True)
class Verified:
    """A delivery whose sender is proven: its dedup id and its JSON body."""

    scheme: str
    delivery_id: str
    payload: dict[str, Any]


#: Integers beyond 64 bits: no vendor field holds one (the canonical amount stops at 1e13,
#: ids are strings), Redis and most vendors' JSON parsers cannot, so such a number is a probe.
INT64 = 2**63
#: A ``\uD800``-``\uDFFF`` escape: the only way a lone surrogate gets into parsed JSON (UTF-8
#: bytes cannot carry one). Redis, httpx and every vendor refuse to encode it.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _bad_number(message: str) -> Rejected:
    return Rejected(message, status=400, reason="bad_number")


def _no_constant(name: str) -> Any:
    raise _bad_number(f"{name} is not a JSON number.")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf
        raise _bad_number(f"The number {text[:40]} is out of range.")
    return value


def _int64(text: str) -> int:
    value = int(text)
    if not -INT64 <= value < INT64:
        raise _bad_number(f"The number {text[:40]} is out of range (64-bit integers only).")
    return value


def _has_lone_surrogate(value: Any) -> bool:
    """Whether any string (key or value) of a parsed JSON value holds a lone surrogate."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


def utf8_text(body: bytes) -> str:
    """The body as text: UTF-8 only, without a byte order mark (JSON senders must send
    UTF-8, RFC 8259 §8.1); UTF-16/32 would otherwise be guessed by ``json.loads``."""
    if body.startswith(codecs.BOM_UTF8) or b"\x00" in body[:4]:
        raise Rejected(
            "The body must be UTF-8 JSON without a byte order mark (not UTF-16 or UTF-32).",
            status=400,
            reason="not_utf8",
        )
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("The body is not UTF-8.", status=400, reason="not_utf8") from None


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, refusing at the edge what the worker could not carry on:
    anything but UTF-8 (a byte order mark, UTF-16/32), ``NaN``/``Infinity``, numbers beyond
    a double or a 64-bit integer, lone surrogates."""
    text = utf8_text(body)
    try:
        payload = json.loads(
            text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_int64
        )
    except ValueError:
        raise Rejected("The body is not valid JSON.", status=400, reason="not_json") from None
    if not isinstance(payload, dict):
        raise Rejected("The body must be a JSON object.", status=400, reason="not_object")
    if SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(payload):
        raise Rejected(
            "The body holds a lone UTF-16 surrogate (\\ud800-\\udfff): not text.",
            status=400,
            reason="bad_string",
        )
    return payload


def _check_window(sent_at: float, tolerance: int) -> None:
    if abs(time.time() - sent_at) > tolerance:
        raise Rejected(
            f"The signature timestamp is outside the {tolerance} s window.",
            status=401,
            reason="stale",
        )


def verify_standard(
    body: bytes, headers: HeaderSource, secrets: tuple[str, ...], tolerance: int
) -> Verified:
    """Standard Webhooks: any configured secret may have signed (rotation)."""
    msg_id = headers.get("webhook-id") or ""
    stamp = headers.get("webhook-timestamp") or ""
    signatures = headers.get("webhook-signature") or ""
    if not (msg_id and stamp and signatures):
        raise Rejected(
            "Missing webhook-id, webhook-timestamp or webhook-signature.",
            status=401,
            reason="unsigned",
        )
    if not secrets:
        raise Rejected(
            "This vendor has no webhook secret configured.", status=401, reason="no_secret"
        )
    try:
        sent_at = float(stamp)
    except ValueError:
        raise Rejected(
            "webhook-timestamp is not a number.", status=401, reason="bad_timestamp"
        ) from None
    _check_window(sent_at, tolerance)
    offered = [s.split(",", 1)[1] for s in signatures.split() if s.startswith("v1,")]
    text = utf8_text(body)
    moment = datetime.fromtimestamp(int(sent_at), UTC)
    for secret in secrets:
        try:
            expected = _webhook(secret).sign(msg_id, moment, text).split(",", 1)[1]
        except (ValueError, binascii.Error):
            continue
        # Constant-time comparison against every offered signature.
        if any(hmac.compare_digest(expected.encode(), sig.encode()) for sig in offered):
            return Verified("standard", msg_id, parse_json_object(body))
    raise Rejected("The webhook signature does not match.", status=401, reason="bad_signature")


@lru_cache(maxsize=64)
def _webhook(secret: str) -> Webhook:
    # Built once per secret: the constructor base64-decodes the secret on every call.
    return Webhook(secret)


@lru_cache(maxsize=8)
def _public_key(pem: str) -> Any:
    return serialization.load_pem_public_key(pem.encode())


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Rejected("The signature is not base64.", status=401, reason="bad_signature") from None


def verify_highlevel(
    body: bytes, headers: HeaderSource, *, ed25519_pem: str, rsa_pem: str, tolerance: int
) -> Verified:
    """HighLevel: Ed25519 first, the legacy RSA header only when the new one is absent."""
    ghl = headers.get("x-ghl-signature")
    legacy = headers.get("x-wh-signature")
    try:
        if ghl:
            key = _public_key(ed25519_pem)
            assert isinstance(key, ed25519.Ed25519PublicKey)
            key.verify(_b64(ghl), body)
        elif legacy:
            key = _public_key(rsa_pem)
            assert isinstance(key, rsa.RSAPublicKey)
            key.verify(_b64(legacy), body, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise Rejected("Missing X-GHL-Signature.", status=401, reason="unsigned")
    except InvalidSignature:
        raise Rejected(
            "The HighLevel signature does not match.", status=401, reason="bad_signature"
        ) from None
    payload = parse_json_object(body)
    stamp = payload.get("timestamp")
    delivery = payload.get("webhookId")
    if not isinstance(stamp, str) or not isinstance(delivery, str) or not delivery:
        raise Rejected(
            "A HighLevel event needs a timestamp and a webhookId.",
            status=400,
            reason="missing_fields",
        )
    try:
        sent_at = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        raise Rejected(
            "The HighLevel timestamp is not ISO 8601.", status=400, reason="bad_timestamp"
        ) from None
    if sent_at.tzinfo is None:
        sent_at = sent_at.replace(tzinfo=UTC)
    _check_window(sent_at.timestamp(), tolerance)
    return Verified("leadway", delivery, payload)
