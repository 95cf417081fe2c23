"""Signature verification per scheme: valid, tampered, stale and missing."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from web.signatures import (
    HIGHLEVEL_ED25519_PEM,
    HIGHLEVEL_RSA_PEM,
    verify_highlevel,
    verify_standard,
)
from worker.errors import Rejected
from worker.sandbox.simulators.base import sign_standard_webhook

SECRET = "whsec_" + base64.b64encode(b"unit-test-secret-0123456789").decode()
OTHER = "whsec_" + base64.b64encode(b"another-secret-0123456789ab").decode()
BODY = json.dumps({"id": "opp-1", "name": "Deal"}).encode()


def test_standard_accepts_a_valid_signature() -> None:
    headers = sign_standard_webhook(SECRET, BODY, "msg_1")
    verified = verify_standard(BODY, headers, (SECRET,), 300)
    assert verified.delivery_id == "msg_1"
    assert verified.payload == {"id": "opp-1", "name": "Deal"}


def test_standard_accepts_either_secret_during_rotation() -> None:
    headers = sign_standard_webhook(OTHER, BODY)
    assert verify_standard(BODY, headers, (SECRET, OTHER), 300).payload["id"] == "opp-1"


@pytest.mark.parametrize("change", ["body", "secret", "missing", "stale", "future"])
def test_standard_rejects_bad_deliveries(change: str) -> None:
    # given a correctly signed delivery, when one part of it is wrong
    headers = sign_standard_webhook(SECRET, BODY)
    body, secrets = BODY, (SECRET,)
    if change == "body":
        body = BODY.replace(b"Deal", b"Steal")
    elif change == "secret":
        secrets = (OTHER,)
    elif change == "missing":
        del headers["webhook-signature"]
    elif change in ("stale", "future"):
        moment = time.time() + (-301 if change == "stale" else 301)
        from standardwebhooks.webhooks import Webhook

        headers["webhook-timestamp"] = str(int(moment))
        headers["webhook-signature"] = Webhook(SECRET).sign(
            headers["webhook-id"], datetime.fromtimestamp(int(moment), UTC), BODY.decode()
        )
    # then it is refused with 401
    with pytest.raises(Rejected) as refused:
        verify_standard(body, headers, secrets, 300)
    assert refused.value.status == 401


def test_standard_rejects_a_body_that_is_not_json_with_400() -> None:
    body = b"not json"
    with pytest.raises(Rejected) as refused:
        verify_standard(body, sign_standard_webhook(SECRET, body), (SECRET,), 300)
    assert refused.value.status == 400


def _ghl_body(**overrides: object) -> bytes:
    payload = {
        "type": "OpportunityUpdate",
        "id": "abc",
        "locationId": "loc",
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "webhookId": "wh-1",
        **overrides,
    }
    return json.dumps(payload).encode()


@pytest.fixture(scope="module")
def keys() -> tuple[ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey, str, str]:
    ed = ed25519.Ed25519PrivateKey.generate()
    rs = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.PEM
    return (
        ed,
        rs,
        ed.public_key().public_bytes(enc, pem).decode(),
        rs.public_key().public_bytes(enc, pem).decode(),
    )


def test_highlevel_accepts_ed25519_over_raw_body(keys) -> None:  # type: ignore[no-untyped-def]
    ed, _rs, ed_pem, rsa_pem = keys
    body = _ghl_body()
    headers = {"x-ghl-signature": base64.b64encode(ed.sign(body)).decode()}
    verified = verify_highlevel(body, headers, ed25519_pem=ed_pem, rsa_pem=rsa_pem, tolerance=300)
    assert verified.delivery_id == "wh-1"


def test_highlevel_accepts_legacy_rsa(keys) -> None:  # type: ignore[no-untyped-def]
    _ed, rs, ed_pem, rsa_pem = keys
    body = _ghl_body()
    sig = rs.sign(body, padding.PKCS1v15(), hashes.SHA256())
    headers = {"x-wh-signature": base64.b64encode(sig).decode()}
    assert (
        verify_highlevel(body, headers, ed25519_pem=ed_pem, rsa_pem=rsa_pem, tolerance=300).payload[
            "id"
        ]
        == "abc"
    )


@pytest.mark.parametrize("case", ["tampered", "missing", "stale", "wrong_key", "garbage"])
def test_highlevel_rejects_bad_deliveries(keys, case: str) -> None:  # type: ignore[no-untyped-def]
    ed, _rs, ed_pem, rsa_pem = keys
    body = _ghl_body()
    headers = {"x-ghl-signature": base64.b64encode(ed.sign(body)).decode()}
    if case == "tampered":
        body = body.replace(b"abc", b"abd")
    elif case == "missing":
        headers = {}
    elif case == "stale":
        body = _ghl_body(timestamp="2020-01-01T00:00:00Z")
        headers = {"x-ghl-signature": base64.b64encode(ed.sign(body)).decode()}
    elif case == "wrong_key":
        ed_pem = HIGHLEVEL_ED25519_PEM
    elif case == "garbage":
        headers = {"x-ghl-signature": "%%%not-base64%%%"}
    with pytest.raises(Rejected) as refused:
        verify_highlevel(body, headers, ed25519_pem=ed_pem, rsa_pem=rsa_pem, tolerance=300)
    assert refused.value.status == 401


def test_highlevel_published_keys_parse() -> None:
    assert isinstance(
        serialization.load_pem_public_key(HIGHLEVEL_ED25519_PEM.encode()), ed25519.Ed25519PublicKey
    )
    rsa_key = serialization.load_pem_public_key(HIGHLEVEL_RSA_PEM.encode())
    assert isinstance(rsa_key, rsa.RSAPublicKey) and rsa_key.key_size == 4096
