"""Hostile input at the receiver: fuzzing, replay windows, body size and rate limits.

Everything goes through the real Flask app (``create_app``) on a real Redis, in-process with
its test client for speed; the app publishes to Celery's ``ingest`` list in that Redis as it
does in production, so "queued" is read straight from there. Properties, for every vendor
route and scheme: never a 5xx; nothing queued (no ``ingest`` message, no delivery key)
unless the signature verified; memory bounded however large or endless the body.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from flask import Flask
from flower.utils.broker import Broker as FlowerBroker
from flower.utils.broker import Redis as FlowerRedis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse, create_environ, run_wsgi_app

from schemas.envelope import Envelope
from web.app import create_app
from web.publisher import Publisher
from web.receiver import (
    MAX_JSON_DEPTH,
    nested_deeper_than,
)
from worker import broker
from worker.sandbox.embedded_redis import EmbeddedRedis, start_redis
from worker.sandbox.simulators import tls
from worker.sandbox.simulators.ivvy import IvvySimulator
from worker.sandbox.simulators.leadwayhooks import iso, signing_keys
from worker.sandbox.stack import whsec
from worker.settings import Settings, from_env, get_settings
from worker.store import metrics
from worker.store.deliveries import Claim
from worker.store.keys import delivery_key
from worker.vendors.registry import FACTS

VENDORS = ("siro", "leadway", "ivvy", "salescaling", "icloudready")
#: The receiver's own database in the session Redis, apart from other unit tests'.
DB = 5
FUZZ_MAX_BODY = 16 * 1024
DOCUMENTED = {200, 202, 400, 401, 404, 413, 429, 503}
SECRETS = {v: whsec(f"{v}-fuzz-secret") for v in VENDORS}
FOREIGN_SECRET = whsec("nobody-we-know")
FUZZ = settings(
    max_examples=int(os.environ.get("OPPSYNC_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- the app under test ---------------------------------------------------------------------
def _public_pem(key: Any) -> str:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(serialization.Encoding.PEM, spki).decode()


def edge_env(redis_url: str, sns: IvvySimulator, **overrides: str) -> dict[str, str]:
    ed_key, rsa_key = signing_keys()
    env = {
        "REDIS_URL": redis_url,
        "OPPSYNC_VENDORS": ",".join(VENDORS),
        "OPPSYNC_MAX_BODY_BYTES": str(FUZZ_MAX_BODY),
        "OPPSYNC_INGRESS_RATE_LIMIT": "100000/second",
        "OPPSYNC_INGRESS_VENDOR_RATE_LIMIT": "100000/second",
        "SIRO_API_TOKEN": "siro-fuzz-token",
        "LEADWAY_API_TOKEN": "leadway-fuzz-token",
        "LEADWAY_LOCATION_ID": "loc-1",
        "LEADWAY_PIPELINE_ID": "pipe-1",
        "LEADWAY_WEBHOOK_PUBLIC_KEY": _public_pem(ed_key),
        "LEADWAY_WEBHOOK_RSA_PUBLIC_KEY": _public_pem(rsa_key),
        "IVVY_API_KEY": "ivvy-fuzz-key",
        "IVVY_API_SECRET": "ivvy-fuzz-secret",
        "IVVY_VENUE_ID": "107",
        "IVVY_TYPE_ID": "18",
        "IVVY_SOURCE_ID": "25",
        "IVVY_SNS_TOPIC_ARN": sns.topic_arn,
        "IVVY_SNS_CERT_HOSTS": "127.0.0.1",
        "IVVY_SNS_CA_BUNDLE": tls.ca_bundle(),
        "SALESCALING_API_KEY": "salescaling-fuzz-key",
        "ICLOUDREADY_EMAIL": "ops@example.com",
        "ICLOUDREADY_PASSWORD": "icr-fuzz-password",
        **{f"{v.upper()}_WEBHOOK_SECRET": SECRETS[v] for v in VENDORS},
    }
    env.update(overrides)
    return env


@contextmanager
def celery_publishing_to(env: dict[str, str]) -> Iterator[None]:
    """The process's Celery app publishing to ``env``'s Redis, as the web process does.

    ``worker.celery_app`` reads the environment once, at import; when another test imported
    it first, its broker is repointed and its connection pools dropped (what Celery itself
    does after a fork) so the next publish connects to the new broker.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        from worker.celery_app import app as celery

        saved = celery.conf.broker_url
        _repoint(celery, env["REDIS_URL"])
        try:
            yield
        finally:
            _repoint(celery, saved)
            get_settings.cache_clear()


def _repoint(celery: Any, url: str) -> None:
    if celery._pool is not None:
        celery._pool.force_close_all()
    celery.conf.broker_url = url
    celery._pool = None
    celery.amqp._producer_pool = None


@dataclass
class Edge:
    """One receiver app and the Redis it queues into."""

    app: Flask
    settings: Settings
    redis: redis.Redis
    sns: IvvySimulator

    def post(
        self, vendor: str, body: bytes, headers: dict[str, str], client: str = "127.0.0.1"
    ) -> TestResponse:
        return self.app.test_client().post(
            f"/webhooks/{vendor}",
            data=body,
            headers=headers,
            environ_base={"REMOTE_ADDR": client},
        )

    def queued(self) -> int:
        return int(self.redis.llen("ingest"))  # type: ignore[arg-type]

    def deliveries(self) -> set[str]:
        return set(self.redis.scan_iter("oppsync:delivery:*"))

    def queued_envelopes(self) -> list[dict[str, Any]]:
        """Every ``ingest`` message's envelope, oldest first (kombu JSON, base64 body)."""
        raw = self.redis.lrange("ingest", 0, -1)
        bodies = [json.loads(base64.b64decode(json.loads(m)["body"])) for m in raw]  # type: ignore[union-attr]
        return [b[1]["envelope"] for b in reversed(bodies)]


@pytest.fixture(scope="module")
def sns() -> Iterator[IvvySimulator]:
    """Serves the SNS signing certificate on loopback (the only allowed cert host here)."""
    simulator = IvvySimulator().start()
    yield simulator
    simulator.stop()


@pytest.fixture(scope="module")
def env(redis_server: EmbeddedRedis, sns: IvvySimulator) -> Iterator[dict[str, str]]:
    values = edge_env(redis_server.url.rsplit("/", 1)[0] + f"/{DB}", sns)
    with celery_publishing_to(values):
        yield values


_built: list[Edge] = []


def build_edge(env: dict[str, str], sns: IvvySimulator, **overrides: str) -> Edge:
    settings_ = from_env({**env, **overrides})
    client = redis.Redis.from_url(settings_.redis_url, decode_responses=True)
    built = Edge(create_app(settings_), settings_, client, sns)
    _built.append(built)
    return built


@pytest.fixture(scope="module", autouse=True)
def _close_apps() -> Iterator[None]:
    yield
    while _built:
        built = _built.pop()
        built.app.extensions["oppsync.sns"].close()
        built.redis.close()


@pytest.fixture(scope="module")
def edge(env: dict[str, str], sns: IvvySimulator) -> Edge:
    built = build_edge(env, sns)
    built.redis.flushdb()
    return built


@pytest.fixture
def clean(edge: Edge) -> Edge:
    edge.redis.flushdb()
    return edge


# -- signing what a real sender would send -----------------------------------------------------
def standard_headers(
    vendor: str, body: bytes, *, secret: str | None = None, msg_id: str | None = None
) -> dict[str, str]:
    """Standard Webhooks headers for any bytes: HMAC-SHA256 of ``id.timestamp.body``."""
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    stamp = str(int(time.time()))
    key = base64.b64decode((secret or SECRETS[vendor]).removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        "Content-Type": "application/json",
    }


def highlevel_headers(body: bytes, *, legacy: bool = False) -> dict[str, str]:
    ed_key, rsa_key = signing_keys()
    if legacy:
        raw = rsa_key.sign(body, padding.PKCS1v15(), hashes.SHA256())
        return {"X-WH-Signature": base64.b64encode(raw).decode()}
    return {"X-GHL-Signature": base64.b64encode(ed_key.sign(body)).decode()}


def highlevel_body(sent: datetime, webhook_id: str | None = None) -> bytes:
    payload = {
        "type": "OpportunityUpdate",
        "id": "opp-1",
        "locationId": "loc-1",
        "timestamp": iso(sent),
        "webhookId": webhook_id or str(uuid.uuid4()),
    }
    return json.dumps(payload).encode()


SNS_HEADERS = {"x-amz-sns-message-type": "Notification", "Content-Type": "text/plain"}


def sns_message(sns: IvvySimulator, sent: datetime | None = None) -> dict[str, Any]:
    inner = sns.inner_message("OpportunityDeleted", "7", None, None, (0, ""))
    message = sns.sns_message(inner)
    if sent is not None:
        message["Timestamp"] = sent.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        message = sns.topic.sign(message)
    return message


# -- strategies ----------------------------------------------------------------------------
header_text = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"),
    max_size=120,
)
#: Values that have broken parsers before: numbers float() takes but int() does not, etc.
TRICKY = ["nan", "NaN", "inf", "-inf", "1e400", "-1", "0x10", " 12 ", "", "v1,", "v1,==", "\u00a0"]
header_values = header_text | st.sampled_from(TRICKY)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=25,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=6)
encodings = st.sampled_from(["utf-8", "utf-16", "utf-32", "latin-1", "cp1252"])
hostile_urls = st.sampled_from(
    [
        "https://sns.us-east-1.amazonaws.com@evil.example/cert.pem",
        "https://evil.example/SimpleNotificationService.pem",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/cert.pem",
        "https://localhost/cert.pem",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_FLUSHALL",
        "https://sns.us-east-1.amazonaws.com.evil.example/x.pem",
        "",
    ]
)


@st.composite
def sns_shaped(draw: st.DrawFn) -> bytes:
    """Bodies that look like SNS messages, with every field drawn wrong in some way."""
    message = {
        "Type": draw(st.sampled_from(["Notification", "SubscriptionConfirmation", "Junk"])),
        "MessageId": draw(st.text(max_size=20) | st.integers()),
        "TopicArn": draw(st.sampled_from(["arn:aws:sns:ap-southeast-2:1:ivvy", "x"])),
        "Message": draw(st.text(max_size=50) | json_values),
        "Timestamp": draw(
            st.sampled_from([iso(datetime.now(UTC)), "yesterday", "9999-12-31T23:59:59Z"])
            | st.integers()
        ),
        "Signature": draw(st.text(max_size=40)),
        "SigningCertURL": draw(hostile_urls),
        "SubscribeURL": draw(hostile_urls),
        "Token": draw(st.text(max_size=10)),
        "SignatureVersion": draw(st.sampled_from(["1", "2", 1, "3", None])),
    }
    drop = draw(st.sets(st.sampled_from(sorted(message)), max_size=3))
    return json.dumps({k: v for k, v in message.items() if k not in drop}).encode()


bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=512),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.tuples(json_objects, encodings).map(
        lambda t: json.dumps(t[0], ensure_ascii=False).encode(t[1], errors="replace")
    ),
    st.integers(min_value=1, max_value=FUZZ_MAX_BODY // 2).map(lambda n: b"[" * n + b"]" * n),
    st.integers(min_value=1, max_value=5000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.sampled_from([FUZZ_MAX_BODY - 1, FUZZ_MAX_BODY, FUZZ_MAX_BODY + 1, 3 * FUZZ_MAX_BODY]).map(
        lambda n: b'{"x":"' + b"a" * max(0, n - 8) + b'"}'
    ),
    sns_shaped(),
)

HEADER_NAMES = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "X-GHL-Signature",
    "X-WH-Signature",
    "x-amz-sns-message-type",
    "Content-Type",
    "Content-Encoding",
]


def unsigned_headers(data: st.DataObject, body: bytes, vendor: str) -> dict[str, str]:
    """Headers no sender with a key produced for ``body``: random, over another body,
    with a key we do not hold, or a correct signature with one part changed."""
    kinds = ["random", "other_body", "foreign_secret", "mangled", "ghl", "sns"]
    kind = data.draw(st.sampled_from(kinds), label="kind")
    secret = SECRETS.get(vendor, SECRETS["siro"])
    if kind == "random":
        return data.draw(
            st.dictionaries(st.sampled_from(HEADER_NAMES), header_values, max_size=6),
            label="headers",
        )
    if kind in ("other_body", "ghl"):
        other = data.draw(
            st.binary(max_size=64) | json_objects.map(lambda o: json.dumps(o).encode()),
            label="other body",
        )
        assume(other != body)
        if kind == "ghl":
            return highlevel_headers(other, legacy=data.draw(st.booleans(), label="legacy"))
        return standard_headers(vendor, other, secret=secret)
    if kind == "foreign_secret":
        return standard_headers(vendor, body, secret=FOREIGN_SECRET)
    if kind == "sns":
        return {**SNS_HEADERS, "x-amz-sns-message-type": data.draw(header_text, label="type")}
    signed = standard_headers(vendor, body, secret=secret)
    part = data.draw(
        st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature"]), label="part"
    )
    if part == "webhook-timestamp":
        shift = data.draw(
            st.integers(min_value=301, max_value=10**9) | st.integers(-(10**9), -301),
            label="shift",
        )
        signed[part] = data.draw(
            st.just(str(int(signed[part]) + shift)) | st.sampled_from(TRICKY), label="stamp"
        )
    elif part == "webhook-id":
        signed[part] += data.draw(header_text.filter(bool), label="suffix")
    else:
        forged = data.draw(st.binary(min_size=32, max_size=32), label="forged")
        signed[part] = "v1," + base64.b64encode(forged).decode()
    return signed


def assert_problem(answer: TestResponse) -> None:
    assert answer.status_code in DOCUMENTED, (answer.status_code, answer.get_data()[:300])
    data = answer.get_json()
    assert isinstance(data, dict) and data.get("error") and data.get("message"), data


# -- fuzzing ---------------------------------------------------------------------------------
@FUZZ
@given(data=st.data(), vendor=st.sampled_from([*VENDORS, "nosuch", "SIRO", "..", "ivvy%00"]))
def test_receiver_queues_nothing_it_cannot_verify(
    edge: Edge, data: st.DataObject, vendor: str
) -> None:
    # given any body with headers no key holder made for it
    body = data.draw(bodies, label="body")
    headers = unsigned_headers(data, body, vendor)
    queued, deliveries = edge.queued(), edge.deliveries()
    # when it is delivered to a vendor route
    answer = edge.post(vendor, body, headers)
    # then it is refused with a documented 4xx in JSON, and nothing was queued or remembered
    assert answer.status_code < 500
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.get_data()[:300])
    assert_problem(answer)
    assert edge.queued() == queued
    assert edge.deliveries() == deliveries


def test_receiver_publishes_through_the_shared_client_transport(env: dict[str, str]) -> None:
    from worker.celery_app import app as celery

    with celery.connection_for_write() as conn:
        assert isinstance(conn.transport, broker.Transport)
        # the URL keeps its scheme: Flower reads it to show the queues
        uri = conn.as_uri(include_password=True)
    assert uri.startswith("redis://")
    assert isinstance(FlowerBroker(uri), FlowerRedis)


def integers_in(value: Any) -> Iterator[int]:
    if isinstance(value, dict):
        for item in value.values():
            yield from integers_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from integers_in(item)
    elif isinstance(value, int) and not isinstance(value, bool):
        yield value


@FUZZ
@given(vendor=st.sampled_from(VENDORS), body=bodies)
def test_receiver_queues_exactly_the_signed_object(edge: Edge, vendor: str, body: bytes) -> None:
    # given any body correctly signed with the vendor's secret
    msg_id = f"msg_{uuid.uuid4().hex}"
    headers = standard_headers(vendor, body, msg_id=msg_id)
    queued = edge.queued()
    # when it is delivered
    answer = edge.post(vendor, body, headers)
    # then a UTF-8 JSON object within the size and depth limits, its integers within 64 bits,
    # is queued once, as it was sent; anything else is a 4xx and nothing is queued
    try:
        text = body.decode("utf-8")  # a byte order mark stays in, and json refuses it
        payload = json.loads(text) if len(body) <= FUZZ_MAX_BODY else None
    except (ValueError, RecursionError):
        payload = None
    if (
        isinstance(payload, dict)
        and not nested_deeper_than(payload, MAX_JSON_DEPTH)
        and all(-(2**63) <= n < 2**63 for n in integers_in(payload))
    ):
        assert answer.status_code == 202, answer.get_data()[:300]
        assert edge.queued() == queued + 1
        envelope = edge.queued_envelopes()[-1]
        assert (envelope["vendor"], envelope["delivery_id"]) == (vendor, msg_id)
        assert envelope["payload"] == payload
        assert edge.post(vendor, body, headers).status_code == 200  # the same delivery again
        assert edge.queued() == queued + 1
    else:
        assert answer.status_code in (400, 401, 413), answer.get_data()[:300]
        assert_problem(answer)
        assert edge.queued() == queued
        assert not edge.redis.exists(delivery_key(vendor, msg_id))


@FUZZ
@given(
    sns_body=sns_shaped(),
    headers=st.dictionaries(st.sampled_from(HEADER_NAMES), header_values),
)
def test_receiver_sns_route_fetches_nothing_it_was_not_allowed_to(
    edge: Edge, sns_body: bytes, headers: dict[str, str]
) -> None:
    # given SNS-shaped garbage naming hostile certificate and subscribe URLs
    fetched = len(edge.sns.log)
    answer = edge.post("ivvy", sns_body, {**headers, **SNS_HEADERS})
    # then it is refused, and the only host we may fetch from saw no request
    assert 400 <= answer.status_code < 500
    assert_problem(answer)
    assert len(edge.sns.log) == fetched


@pytest.mark.parametrize("vendor", VENDORS)
def test_receiver_refuses_a_tampered_native_delivery(edge: Edge, vendor: str) -> None:
    # given a native delivery (HighLevel for leadway, SNS for ivvy; Standard for the others)
    # changed after signing
    if vendor == "leadway":
        body = highlevel_body(datetime.now(UTC))
        headers = highlevel_headers(body)
        body = body.replace(b"opp-1", b"opp-2")
    elif vendor == "ivvy":
        message = sns_message(edge.sns)
        message["Message"] = message["Message"].replace('"7"', '"8"') + " "
        body, headers = json.dumps(message).encode(), SNS_HEADERS
    else:
        headers = standard_headers(vendor, b'{"id": "1"}')
        body = b'{"id": "2"}'
    queued = edge.queued()
    # then 401 and nothing queued
    answer = edge.post(vendor, body, headers)
    assert answer.status_code == 401
    assert edge.queued() == queued


# -- replay protection ---------------------------------------------------------------------
def test_receiver_remembers_a_delivery_id_for_72_hours(clean: Edge) -> None:
    # given a delivery that was queued
    body = b'{"id": "3f2504e0-4f89-11d3-9a0c-0305e82c3301"}'
    headers = standard_headers("siro", body, msg_id="msg_remembered")
    assert clean.post("siro", body, headers).status_code == 202
    # then its id is kept at least 72 hours (longer than any vendor's retry schedule)
    ttl = clean.redis.ttl(delivery_key("siro", "msg_remembered"))
    assert 72 * 3600 - 60 <= int(ttl) <= 72 * 3600  # type: ignore[arg-type]


@pytest.mark.parametrize(("age", "status"), [(0, 202), (299, 202), (302, 401), (-302, 401)])
def test_receiver_standard_webhooks_window(clean: Edge, age: int, status: int) -> None:
    # given a Standard Webhooks delivery signed ``age`` seconds ago (each attempt is re-signed)
    from standardwebhooks.webhooks import Webhook

    body, sent = b'{"id": "3f2504e0-4f89-11d3-9a0c-0305e82c3301"}', int(time.time()) - age
    msg_id = f"msg_{uuid.uuid4().hex}"
    signature = Webhook(SECRETS["salescaling"]).sign(
        msg_id, datetime.fromtimestamp(sent, UTC), body.decode()
    )
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(sent), "webhook-signature": signature}
    # then it is accepted only inside OPPSYNC_SIGNATURE_TOLERANCE_SECONDS
    assert clean.post("salescaling", body, headers).status_code == status
    assert clean.queued() == (1 if status == 202 else 0)


@pytest.mark.parametrize(("minutes", "status"), [(0, 202), (20, 202), (70, 202), (76, 401)])
def test_receiver_highlevel_window_spans_its_redeliveries(
    clean: Edge, minutes: int, status: int
) -> None:
    # given a HighLevel event first sent ``minutes`` ago and delivered again now, unchanged
    # (HighLevel re-sends the same signed payload every 10 minutes after a 429)
    body = highlevel_body(datetime.now(UTC) - timedelta(minutes=minutes))
    # then it is accepted while HighLevel may still be redelivering, refused after
    assert clean.post("leadway", body, highlevel_headers(body)).status_code == status
    assert FACTS["leadway"].redelivery_seconds + 300 < 76 * 60


def test_receiver_highlevel_replay_inside_the_window_is_not_queued_again(clean: Edge) -> None:
    # given a HighLevel event that was queued
    body = highlevel_body(datetime.now(UTC) - timedelta(minutes=30), webhook_id="wh-replayed")
    headers = highlevel_headers(body, legacy=True)
    assert clean.post("leadway", body, headers).status_code == 202
    # when the same signed bytes come again (a redelivery or a replay)
    again = clean.post("leadway", body, headers)
    # then 200 "duplicate", and the queue holds it once
    assert (again.status_code, again.get_json()["status"]) == (200, "duplicate")
    assert clean.queued() == 1


@pytest.mark.parametrize(("minutes", "status"), [(0, 202), (30, 202), (66, 401), (-6, 401)])
def test_receiver_sns_window_spans_the_sns_retry_policy(
    clean: Edge, minutes: int, status: int
) -> None:
    # given an SNS notification published ``minutes`` ago (SNS retries keep its Timestamp,
    # for at most 3600 s)
    message = sns_message(clean.sns, datetime.now(UTC) - timedelta(minutes=minutes))
    answer = clean.post("ivvy", json.dumps(message).encode(), SNS_HEADERS)
    # then it is accepted while SNS may still be retrying, refused after
    assert answer.status_code == status, answer.get_data()
    assert FACTS["ivvy"].redelivery_seconds + 300 < 66 * 60
    if status == 401:
        assert answer.get_json()["error"] == "stale"


# -- body size -----------------------------------------------------------------------------
class EndlessBody(io.RawIOBase):
    """A request body produced as it is read, counting what the server took."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.taken = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left, 64 * 1024)
        buffer[:n] = b"[" * n
        self.left -= n
        self.taken += n
        return n


def chunked_post(app: Flask, vendor: str, stream: EndlessBody) -> tuple[int, dict[str, Any]]:
    """POST without Content-Length, as a chunked upload reaches the app from gunicorn."""
    environ = create_environ(f"/webhooks/{vendor}", method="POST")
    environ.pop("CONTENT_LENGTH", None)
    environ.update(
        {
            "HTTP_TRANSFER_ENCODING": "chunked",
            "wsgi.input": stream,
            "wsgi.input_terminated": True,
        }
    )
    app_iter, status, _headers = run_wsgi_app(app.wsgi_app, environ)
    content = b"".join(app_iter)
    return int(status.split()[0]), json.loads(content)


def test_receiver_stops_reading_a_chunked_body_at_the_limit(edge: Edge) -> None:
    # given a chunked body of 64 MiB, with no Content-Length
    stream = EndlessBody(64 * 1024 * 1024)
    tracemalloc.start()
    try:
        # when it is posted
        status, data = chunked_post(edge.app, "siro", stream)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # then 413 in JSON after reading little more than the limit, never the whole body
    assert (status, data["error"]) == (413, "too_large")
    assert stream.taken <= FUZZ_MAX_BODY + 64 * 1024
    assert peak < 4 * 1024 * 1024


#: Bodies the worker could not carry (UnicodeEncodeError, non-finite numbers) or would read
#: differently from the sender, each with the reason the edge gives.
UNCARRIABLE = {
    "utf-8 byte order mark": (b'\xef\xbb\xbf{"id": "1"}', "not_utf8"),
    "utf-16": ('{"id": "1"}'.encode("utf-16"), "not_utf8"),
    "utf-16 without a mark": ('{"id": "1"}'.encode("utf-16-le"), "not_utf8"),
    "utf-32": ('{"id": "1"}'.encode("utf-32"), "not_utf8"),
    "NaN": (b'{"id": "1", "amount": NaN}', "bad_number"),
    "Infinity": (b'{"id": "1", "amount": -Infinity}', "bad_number"),
    "a float beyond a double": (b'{"id": "1", "amount": 1e400}', "bad_number"),
    "an integer beyond 64 bits": (b'{"id": 18446744073709551616}', "bad_number"),
    "a lone surrogate in a value": (b'{"id": "1", "name": "a\\ud800b"}', "bad_string"),
    "a lone surrogate in a key": (b'{"id": "1", "x\\udfff": 1}', "bad_string"),
}


@pytest.mark.parametrize("kind", sorted(UNCARRIABLE))
def test_receiver_refuses_at_the_edge_what_the_worker_cannot_carry(clean: Edge, kind: str) -> None:
    # given a correctly signed body the worker would dead-letter or misread
    body, reason = UNCARRIABLE[kind]
    # when it is delivered
    answer = clean.post("salescaling", body, standard_headers("salescaling", body))
    # then 400 with a sentence saying why, and nothing queued
    assert (answer.status_code, answer.get_json()["error"]) == (400, reason), answer.get_data()
    assert answer.get_json()["message"].endswith(".")
    assert clean.queued() == 0


def test_receiver_takes_a_surrogate_pair_and_an_escaped_backslash(clean: Edge) -> None:
    # given text that only looks like a lone surrogate: a pair (😀), and "\\ud800" as text
    body = b'{"id": "1", "name": "\\ud83d\\ude00 \\\\ud800", "amount": 9223372036854775807}'
    # when it is delivered, then it is queued as sent
    answer = clean.post("salescaling", body, standard_headers("salescaling", body))
    assert answer.status_code == 202, answer.get_data()
    assert clean.queued_envelopes()[-1]["payload"]["name"] == "\U0001f600 \\ud800"


def test_receiver_refuses_a_declared_oversize_before_reading(edge: Edge) -> None:
    # given a Content-Length over the limit
    stream = EndlessBody(FUZZ_MAX_BODY + 1)
    environ = create_environ("/webhooks/siro", method="POST")
    environ.update({"CONTENT_LENGTH": str(FUZZ_MAX_BODY + 1), "wsgi.input": stream})
    app_iter, status, _ = run_wsgi_app(edge.app.wsgi_app, environ)
    b"".join(app_iter)
    # then 413 without reading a byte
    assert status.startswith("413")
    assert stream.taken == 0


def test_receiver_memory_stays_bounded_over_many_requests(env: dict[str, str], sns: Any) -> None:
    # given the default 1 MiB limit and a warmed-up app
    big = build_edge(env, sns, OPPSYNC_MAX_BODY_BYTES="1048576")
    limit = big.settings.max_body_bytes
    near_limit = b'{"x":"' + b"a" * (limit - 10) + b'"}'
    deep = b"[" * (limit // 2) + b"]" * (limit // 2)
    cases = [
        (b"", {}),
        (near_limit, standard_headers("siro", b"other")),
        (deep, SNS_HEADERS),
        (near_limit, highlevel_headers(b"other")),
    ]
    for body, headers in cases:
        big.post("siro", body, headers)
    tracemalloc.start()
    try:
        # when 200 hostile requests of up to 1 MiB, and 20 endless chunked bodies, arrive
        for i in range(200):
            body, headers = cases[i % len(cases)]
            assert (
                big.post("ivvy" if headers is SNS_HEADERS else "siro", body, headers).status_code
                < 500
            )
            if i == 99:
                after_100, _ = tracemalloc.get_traced_memory()
        for _ in range(20):
            assert chunked_post(big.app, "leadway", EndlessBody(32 * limit))[0] == 413
        after_all, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # then the peak is a small multiple of one body (the test's own copy included), and
    # nothing accumulates from request to request
    assert peak < 8 * limit, peak
    assert after_all - after_100 < limit // 4, (after_100, after_all)


# -- rate limits ---------------------------------------------------------------------------
def signed(vendor: str) -> tuple[bytes, dict[str, str]]:
    # An id of the vendor's own form (iVvy's are integers), a new one each time.
    vendor_id = uuid.uuid4().int % 10**9 if vendor == "ivvy" else uuid.uuid4().hex
    body = json.dumps({"id": vendor_id}).encode()
    return body, standard_headers(vendor, body)


def test_receiver_limits_each_client_per_vendor(env: dict[str, str], sns: Any) -> None:
    # given at most 3 webhooks a minute per client and vendor
    limited = build_edge(env, sns, OPPSYNC_INGRESS_RATE_LIMIT="3/minute")
    limited.redis.flushdb()
    answers = [limited.post("siro", *signed("siro"), client="10.0.0.1") for _ in range(4)]
    # then the fourth is a JSON 429 with Retry-After, and was not queued
    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    refused = answers[-1]
    assert refused.get_json()["error"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert limited.queued() == 3
    # and another client, or the same client on another vendor, is not affected
    assert limited.post("siro", *signed("siro"), client="10.0.0.2").status_code == 202
    assert limited.post("ivvy", *signed("ivvy"), client="10.0.0.1").status_code == 202


def scripts_run(client: redis.Redis) -> int:
    """Scripts Redis has run (INFO commandstats), whoever sent them."""
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
    )


def test_receiver_refuses_a_client_over_its_limit_without_asking_redis_again(
    env: dict[str, str], sns: Any
) -> None:
    # given a client that went over its 2 webhooks a minute
    limited = build_edge(env, sns, OPPSYNC_INGRESS_RATE_LIMIT="2/minute")
    limited.redis.flushdb()
    answers = [limited.post("siro", *signed("siro"), client="10.0.0.7") for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 429]
    before = scripts_run(limited.redis)
    # when it sends more, signed or not
    flood = [limited.post("siro", b"{}", {}, client="10.0.0.7") for _ in range(5)]
    # then each is refused (429, Retry-After within the window) before its body is looked
    # at, and without a round trip to Redis
    assert [a.status_code for a in flood] == [429] * 5
    assert all(1 <= int(a.headers["Retry-After"]) <= 60 for a in flood)
    assert scripts_run(limited.redis) == before
    assert _received(limited, "siro", "rate_limited") == 6
    # and another client of the same route is not refused
    assert limited.post("siro", *signed("siro"), client="10.0.0.8").status_code == 202


def test_receiver_limits_a_vendor_route_across_clients(env: dict[str, str], sns: Any) -> None:
    # given at most 4 webhooks a minute on one vendor route, whoever sends
    limited = build_edge(env, sns, OPPSYNC_INGRESS_VENDOR_RATE_LIMIT="4/minute")
    limited.redis.flushdb()
    answers = [
        limited.post("leadway", *signed("leadway"), client=f"10.1.0.{i}").status_code
        for i in range(5)
    ]
    # then the fifth is refused with 429 (which HighLevel answers by delivering again later)
    assert answers == [202, 202, 202, 202, 429]
    assert limited.post("siro", *signed("siro"), client="10.1.0.9").status_code == 202


def test_receiver_believes_forwarded_for_only_from_trusted_proxies(
    env: dict[str, str], sns: Any
) -> None:
    # given one trusted proxy and 1 webhook a minute per client
    proxied = build_edge(
        env, sns, OPPSYNC_INGRESS_RATE_LIMIT="1/minute", OPPSYNC_TRUSTED_PROXIES="1"
    )
    proxied.redis.flushdb()

    def via_router(client: str) -> int:
        body, headers = signed("siro")
        return proxied.post("siro", body, {**headers, "X-Forwarded-For": client}).status_code

    # then two clients behind the same router are counted apart
    assert [via_router("203.0.113.1"), via_router("203.0.113.2")] == [202, 202]
    assert via_router("203.0.113.1") == 429


def test_receiver_limits_are_not_applied_to_health_or_the_description(
    env: dict[str, str], sns: Any
) -> None:
    limited = build_edge(env, sns, OPPSYNC_INGRESS_RATE_LIMIT="1/minute")
    client = limited.app.test_client()
    assert [client.get("/healthz").status_code for _ in range(3)] == [200] * 3
    assert [client.get("/openapi.yaml").status_code for _ in range(3)] == [200] * 3


def test_receiver_fails_open_when_redis_is_down(env: dict[str, str], sns: Any) -> None:
    # given a receiver whose Redis (limiter, dedup and queue alike) does not answer
    from worker.sandbox.embedded_redis import free_port

    down = build_edge(env, sns, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    # when correctly signed events arrive
    siro = down.post("siro", *signed("siro"))
    leadway = down.post("leadway", *signed("leadway"))
    # then the limiter lets them through and the receiver says it cannot queue: 503, and
    # 429 for HighLevel (its only redelivery signal), both with Retry-After — never a 500
    assert (siro.status_code, siro.get_json()["error"]) == (503, "unavailable")
    assert (leadway.status_code, leadway.get_json()["error"]) == (429, "unavailable")
    assert siro.headers["Retry-After"] and leadway.headers["Retry-After"]


def test_receiver_405_names_the_allowed_methods(edge: Edge) -> None:
    answer = edge.app.test_client().put("/webhooks/siro")
    assert answer.status_code == 405
    assert "POST" in answer.headers["Allow"]
    assert answer.get_json()["error"] == "method_not_allowed"


def test_receiver_made_up_vendor_names_mint_no_redis_keys(env: dict[str, str], sns: Any) -> None:
    # given a limiter that refuses the third request per client and vendor
    limited = build_edge(env, sns, OPPSYNC_INGRESS_RATE_LIMIT="2/minute")
    limited.redis.flushdb()
    names = [f"made-up-{uuid.uuid4().hex[:8]}" for _ in range(12)]
    # when a scanner tries a dozen vendor names
    answers = [limited.post(name, b"{}", {}).status_code for name in names]
    # then they share one "unknown" budget (404 twice, then 429) ...
    assert answers == [404, 404] + [429] * 10
    # ... and no Redis key or counter carries any of the names
    counters: list[str] = limited.redis.hkeys("oppsync:metrics:counters")  # type: ignore[assignment]
    stored = " ".join([*limited.redis.scan_iter("*"), *counters])
    assert not any(name in stored for name in names)


def test_receiver_queues_a_celery_task_whose_metadata_carries_no_payload(clean: Edge) -> None:
    # when a delivery whose record names a person is queued
    body = json.dumps({"id": "deal-1", "contact": "dana@harbour.example"}).encode()
    headers = standard_headers("siro", body)
    assert clean.post("siro", body, headers).status_code == 202
    # then the message is the ingest task, whose shown arguments (Flower, task events) name
    # the delivery but hold none of the record, which travels in the body only
    queued: list[str] = clean.redis.lrange("ingest", 0, -1)  # type: ignore[assignment]
    (raw,) = queued
    task = json.loads(raw)["headers"]
    assert task["task"] == "oppsync.ingest_change"
    assert headers["webhook-id"] in task["kwargsrepr"]
    assert "dana@harbour.example" not in f"{task['argsrepr']}{task['kwargsrepr']}"
    assert clean.queued_envelopes()[0]["payload"]["contact"] == "dana@harbour.example"


def test_receiver_answers_503_while_redis_is_down_and_queues_again_once_it_is_back(
    env: dict[str, str], sns: Any, tmp_path: Any
) -> None:
    # given a receiver on a Redis of its own, whose thread has published once already
    own = start_redis(directory=tmp_path)
    own_env = {**env, "REDIS_URL": own.url}
    try:
        with celery_publishing_to(own_env):
            edge = build_edge(own_env, sns)
            assert edge.post("siro", *signed("siro")).status_code == 202
            # when Redis stops, then the same thread answers 503, never a 2xx
            own.stop()
            down = edge.post("siro", *signed("siro"))
            assert (down.status_code, down.get_json()["error"]) == (503, "unavailable")
            # and when Redis is back on the same port, it queues again
            own = start_redis(port=own.port, directory=tmp_path)
            body, headers = signed("siro")
            assert edge.post("siro", body, headers).status_code == 202
            assert edge.queued_envelopes()[-1]["delivery_id"] == headers["webhook-id"]
            # every client the app opened to this Redis, closed before it goes
            edge.app.extensions["oppsync.runtime"].redis.close()
            edge.app.extensions["oppsync.limiter"].storage.storage.connection_pool.disconnect()
    finally:
        own.stop()


def connections(client: redis.Redis) -> int:
    """Clients connected to ``client``'s Redis."""
    info: dict[str, Any] = client.info("clients")  # type: ignore[assignment]
    return int(info["connected_clients"])


def test_receiver_opens_no_connection_per_client_connection(
    env: dict[str, str], sns: Any, tmp_path: Any
) -> None:
    # given a receiver on a Redis of its own, and the gevent worker's way of serving: every
    # client connection handled by a greenlet of its own that ends with the connection
    # (threads stand in for greenlets: under gevent threading.local is per greenlet)
    own = start_redis(directory=tmp_path)
    watcher = redis.Redis.from_url(own.url)
    try:
        edge = build_edge({**env, "REDIS_URL": own.url}, sns)
        assert edge.post("siro", *signed("siro")).status_code == 202
        before = connections(watcher)
        # when 40 client connections each deliver one event
        for _ in range(40):
            connection = threading.Thread(target=edge.post, args=("siro", *signed("siro")))
            connection.start()
            connection.join(timeout=10)
        # then every event was queued over the connection the first one opened
        assert watcher.llen("ingest") == 41
        assert connections(watcher) == before
    finally:
        edge.app.extensions["oppsync.runtime"].redis.close()
        watcher.close()
        own.stop()


def test_receiver_redis_lost_mid_delivery_leaves_no_claim_behind(
    env: dict[str, str], sns: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a receiver on a Redis of its own (append-only, as production runs it)
    own = start_redis(directory=tmp_path, appendonly=True)
    own_env = {**env, "REDIS_URL": own.url}
    try:
        edge = build_edge(own_env, sns)
        publisher: Publisher = edge.app.extensions["oppsync.publisher"]
        message = publisher.message

        def redis_dies_first(event: Envelope) -> str:
            own.stop()
            return message(event)

        # when Redis goes away while a verified delivery is being queued
        body, headers = signed("siro")
        monkeypatch.setattr(publisher, "message", redis_dies_first)
        first = edge.post("siro", body, headers)
        monkeypatch.setattr(publisher, "message", message)
        own = start_redis(port=own.port, directory=tmp_path, appendonly=True)
        # then the delivery was refused (retry later), and nothing of it was kept: the
        # sender's redelivery is queued at once, and only once
        assert (first.status_code, first.get_json()["error"]) == (503, "unavailable")
        assert first.headers["Retry-After"]
        assert not edge.redis.exists(delivery_key("siro", headers["webhook-id"]))
        assert edge.post("siro", body, headers).status_code == 202
        assert edge.post("siro", body, headers).status_code == 200
        assert [e["delivery_id"] for e in edge.queued_envelopes()] == [headers["webhook-id"]]
        edge.app.extensions["oppsync.runtime"].redis.close()
    finally:
        own.stop()


def test_receiver_answers_retry_later_while_a_poll_is_queueing_the_same_delivery(
    clean: Edge,
) -> None:
    # given a delivery id claimed and not yet confirmed by ``queue_once`` (polling queues
    # through Celery: claim, publish, confirm)
    body, headers = signed("siro")
    store = clean.app.extensions["oppsync.runtime"].store
    assert store.claim_delivery("siro", headers["webhook-id"]) is Claim.NEW
    # when the same delivery arrives as a webhook, then it is neither queued nor taken
    # for a duplicate: retry later, counted as such
    again = clean.post("siro", body, headers)
    assert (again.status_code, again.get_json()["error"]) == (503, "delivery_pending")
    assert again.headers["Retry-After"]
    assert _received(clean, "siro", "delivery_pending") == 1
    assert clean.queued() == 0
    # and once the claim is confirmed, it is a duplicate
    store.confirm_delivery("siro", headers["webhook-id"], 3600)
    assert clean.post("siro", body, headers).status_code == 200
    assert clean.queued() == 0


def _received(edge: Edge, vendor: str, outcome: str) -> int:
    """``oppsync_events_received_total`` for ``vendor`` and ``outcome`` (counts are batched:
    flushed first)."""
    metrics.flush()
    return sum(
        count
        for name, labels, count in metrics.read_counters(edge.redis)
        if name == "oppsync_events_received_total"
        and labels == {"vendor": vendor, "outcome": outcome}
    )
