"""Logs: one JSON object per line, secrets and personal data redacted, one correlation id per
request. Logging is configured for real here, into a buffer, and restored afterwards."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from flask import Flask
from gunicorn.config import Config as GunicornConfig

from web import limits
from web.app import create_app
from web.serverlog import JsonLogger
from worker.logs import Redactor, configure
from worker.sandbox.embedded_redis import EmbeddedRedis
from worker.settings import from_env, get_settings

ENV = {
    "OPPSYNC_VENDORS": "siro,leadway,ivvy,salescaling,icloudready",
    "SIRO_API_TOKEN": "siro-live-token-8f2a",
    "LEADWAY_API_TOKEN": "pit-3c1e9a77-5b0d-4f8e-9a1c-2b7d6e5f4a3b",
    "LEADWAY_LOCATION_ID": "ve9EPM428h8vShlRW1KT",
    "LEADWAY_PIPELINE_ID": "pipeline-1",
    "IVVY_API_KEY": "ivvy-key-0f9e8d7c",
    "IVVY_API_SECRET": "ivvy-secret-1a2b3c4d",
    "IVVY_VENUE_ID": "107",
    "IVVY_TYPE_ID": "18",
    "IVVY_SOURCE_ID": "25",
    "SALESCALING_API_KEY": "sc-key-77aa88bb",
    "SALESCALING_WEBHOOK_SECRET": (
        "whsec_c2FsZXNjYWxpbmctc2VjcmV0LS0t,whsec_b2xkLXNlY3JldC0tLS0tLS0t"
    ),
    "ICLOUDREADY_EMAIL": "ops@icloudready.example",
    "ICLOUDREADY_PASSWORD": "icr-password-Q7w",
    "OPPSYNC_ADMIN_USER": "ops",
    "OPPSYNC_ADMIN_PASSWORD": "admin-password-5e6f",
}
SECRETS = [
    ENV["SIRO_API_TOKEN"],
    ENV["LEADWAY_API_TOKEN"],
    ENV["IVVY_API_KEY"],
    ENV["IVVY_API_SECRET"],
    ENV["SALESCALING_API_KEY"],
    *ENV["SALESCALING_WEBHOOK_SECRET"].split(","),
    ENV["ICLOUDREADY_PASSWORD"],
    ENV["OPPSYNC_ADMIN_PASSWORD"],
]


@pytest.fixture
def lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Logs configured with every configured secret, written to a buffer."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buffer)
    configure(from_env(ENV).secret_values(), "INFO")
    yield buffer
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


def _records(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


def test_settings_secret_values_name_every_configured_secret() -> None:
    assert set(SECRETS) <= set(from_env(ENV).secret_values())


@pytest.mark.parametrize("secret", SECRETS)
def test_logs_redact_each_configured_secret(lines: io.StringIO, secret: str) -> None:
    # when a secret turns up in a message, a field, and a nested value
    log = structlog.get_logger("test")
    log.warning(
        f"vendor said: bad credentials {secret}",
        header=f"Bearer {secret}",
        request={"headers": [["x-api-key", secret]]},
    )
    # then the line is JSON and the secret is nowhere in it
    out = lines.getvalue()
    assert secret not in out
    (record,) = _records(lines)
    assert record["header"] == "Bearer [secret]"
    assert record["request"] == {"headers": [["x-api-key", "[secret]"]]}


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("contact dana@harbour.example replied", "contact [email] replied"),
        ("owner alice+crm@sub.example.co.uk.", "owner [email]."),
        ("phone +61400111222", "phone [phone]"),
        ("phone +1 (415) 555-0100 ext", "phone [phone] ext"),
        ("phone +44 20 7946 0958.", "phone [phone]."),
    ],
)
def test_logs_redact_emails_and_phone_numbers(lines: io.StringIO, text: str, redacted: str) -> None:
    structlog.get_logger("test").info("seen", detail=text)
    (record,) = _records(lines)
    assert record["detail"] == redacted


def test_logs_keep_ids_amounts_and_dates(lines: io.StringIO) -> None:
    # ids, amounts and dates are what an operator needs: they are not phone numbers
    detail = "id 5516cd47-2bd0-4f4f-adc2-22524e54ba4d amount 12500.00 on 2027-03-15 n=1234567890"
    structlog.get_logger("test").info("seen", detail=detail, count=3)
    (record,) = _records(lines)
    assert record["detail"] == detail
    assert record["count"] == 3


def test_logs_redact_tracebacks_and_library_logs(lines: io.StringIO) -> None:
    # given an exception whose text carries a secret and an email
    try:
        raise RuntimeError(f"401 for {SECRETS[0]} (user dana@harbour.example)")
    except RuntimeError:
        structlog.get_logger("test").exception("push.failed")
        # and a library (Celery, gunicorn) logging through the standard library
        logging.getLogger("celery.worker").error("retry with token %s", SECRETS[1])
    out = lines.getvalue()
    # then neither reaches the log, and each line is still JSON
    assert SECRETS[0] not in out and SECRETS[1] not in out
    assert "dana@harbour.example" not in out
    first, second = _records(lines)
    assert "[secret]" in first["exception"] and "[email]" in first["exception"]
    assert second["event"] == "retry with token [secret]"
    assert second["logger"] == "celery.worker"


def test_redactor_prefers_the_longest_secret() -> None:
    # a short secret that is part of a longer one must not leave the rest of it behind
    redactor = Redactor(["abcd", "abcdefgh-long-token"])
    assert redactor.scrub("x abcdefgh-long-token y abcd") == "x [secret] y [secret]"


def test_redactor_ignores_values_too_short_to_be_secrets() -> None:
    # a three-character "secret" would blank out ordinary words everywhere
    assert Redactor(["abc"]).scrub("abc abcabc") == "abc abcabc"


def test_web_request_starts_without_a_previous_correlation_id(
    redis_server: EmbeddedRedis,
) -> None:
    # given a server thread that logged one event's correlation id
    app = create_app(from_env({"REDIS_URL": redis_server.url_for(8), "OPPSYNC_VENDORS": ""}))
    structlog.contextvars.bind_contextvars(correlation_id="from-the-previous-request")
    try:
        # when the same thread serves the next request
        with app.test_request_context("/healthz"):
            app.preprocess_request()
            seen = structlog.contextvars.get_contextvars()
    finally:
        structlog.contextvars.clear_contextvars()
    # then that request's lines carry no stale id
    assert "correlation_id" not in seen


def test_redactor_scrubs_bearer_and_ivvy_credentials_it_was_not_told_about() -> None:
    from worker.logs import Redactor

    line = Redactor([]).scrub(
        "answer: Authorization: Bearer eyJhbGciOi.abc-def; "
        "X-Api-Authorization: IWS key1234:74af7ec6fec55dc885"
    )
    assert "eyJhbGciOi" not in line and "74af7ec6" not in line
    assert "Bearer [secret]" in line and "IWS [secret]" in line


@pytest.fixture
def limited_app(redis_server: EmbeddedRedis) -> Flask:
    """A receiver that allows one request a minute per client (built before ``lines``, whose
    logging configuration must be the last one made)."""
    app = create_app(
        from_env(
            {
                "REDIS_URL": redis_server.url_for(8),
                "OPPSYNC_VENDORS": "",
                "OPPSYNC_INGRESS_RATE_LIMIT": "1/minute",
            }
        )
    )
    app.extensions["oppsync.runtime"].redis.flushdb()
    return app


def test_rate_limited_request_logs_no_previous_correlation_id(
    limited_app: Flask, lines: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a server thread that logged one event's correlation id, and a client that used
    # its one request (the limits' logger afresh: one cached by an earlier test writes to
    # the stream of that test's configuration)
    monkeypatch.setattr(limits, "log", structlog.get_logger("oppsync.web"))
    client = limited_app.test_client()
    client.post("/webhooks/siro", data=b"{}")
    structlog.contextvars.bind_contextvars(correlation_id="from-the-previous-request")
    try:
        # when the same thread serves a request the limiter refuses
        answer = client.post("/webhooks/siro", data=b"{}")
    finally:
        structlog.contextvars.clear_contextvars()
    # then the line about it carries no stale id
    assert answer.status_code == 429
    refused = [r for r in _records(lines) if r.get("reason") == "rate_limited"]
    assert refused
    assert all("correlation_id" not in r for r in refused)


def test_gunicorn_lines_are_json_without_query_strings_or_request_headers(
    lines: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given gunicorn's logger class as the Procfile names it, with access lines on
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    monkeypatch.setattr(sys, "stderr", lines)  # the logger class configures logs itself
    cfg = GunicornConfig()
    cfg.set("accesslog", "-")
    logger = JsonLogger(cfg)
    get_settings.cache_clear()
    target = f"/status?api_key={SECRETS[0]}&password=hunter2-hunter2"
    # when gunicorn reports a failed request and answers one with a secret in its headers
    logger.error("Error handling request %s", target)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/status",
        "QUERY_STRING": target.split("?", 1)[1],
        "REMOTE_ADDR": "10.1.2.3",
        "HTTP_USER_AGENT": "agent-hunter2-hunter2",
        "HTTP_REFERER": "https://example.com/?hunter2-hunter2",
        "HTTP_AUTHORIZATION": "Basic " + "b3BzOmh1bnRlcjItaHVudGVyMg==",
    }
    response = SimpleNamespace(status_code=401, status="401 UNAUTHORIZED", sent=57)
    logger.access(response, None, environ, timedelta(milliseconds=3))
    # then both lines are JSON, name the path alone, and carry nothing the sender chose
    error, access = _records(lines)
    assert error["event"] == "Error handling request /status"
    assert access == {
        **access,
        "event": "http.access",
        "method": "GET",
        "path": "/status",
        "status": 401,
        "client": "10.1.2.3",
    }
    out = lines.getvalue()
    assert "hunter2" not in out and SECRETS[0] not in out and "api_key" not in out
