"""``/metrics``, ``/readyz``, vendor health and the admin guards, on a real Redis with Flask's
test client.

No stack here: the web app is built in-process on a private Redis database, and what the
workers would have counted is written with the same functions they use.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from web.app import create_app
from web.status import TOKEN_TTL_SECONDS, CsrfTokens, ago
from worker import vendorhealth
from worker.errors import Busy, ConfigError, OwnQuota, Permanent, RateLimited
from worker.runtime import build_runtime
from worker.sandbox.embedded_redis import EmbeddedRedis
from worker.settings import Settings, from_env
from worker.store import metrics
from worker.store.deadletters import DeadLetters

DB = 7  # a database of the session's Redis no other test uses
ADMIN = ("ops", "correct horse battery staple")


def _settings(url: str, admin: bool, **extra: str) -> Settings:
    env = {
        **extra,
        "REDIS_URL": url,
        "OPPSYNC_VENDORS": "siro,salescaling",
        "SIRO_API_TOKEN": "siro-token",
        "SALESCALING_API_KEY": "salescaling-key",
    }
    if admin:
        env |= {"OPPSYNC_ADMIN_USER": ADMIN[0], "OPPSYNC_ADMIN_PASSWORD": ADMIN[1]}
    return from_env(env)


@pytest.fixture
def url(redis_server: EmbeddedRedis) -> Iterator[str]:
    url = redis_server.url_for(DB)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True)


def _app(url: str, *, admin: bool) -> Flask:
    return create_app(_settings(url, admin))


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _scrape(web: FlaskClient, **headers: str) -> dict[str, Any]:
    answer = web.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.text
    samples: dict[str, Any] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[str(key)] = sample.value
    return samples


def _value(samples: dict[str, Any], name: str, **labels: str) -> Any:
    return samples.get(str((name, tuple(sorted(labels.items())))))


def test_metrics_exports_the_pinned_families(url: str, client: redis.Redis) -> None:
    # given what the edge and the workers counted
    metrics.count(client, "oppsync_events_received_total", vendor="siro", outcome="queued")
    metrics.count(client, "oppsync_events_received_total", vendor="siro", outcome="queued")
    metrics.count(client, "oppsync_events_received_total", vendor="siro", outcome="bad_signature")
    metrics.count(client, "oppsync_upserts_total", vendor="salescaling", outcome="created")
    metrics.count(client, "oppsync_retries_total", vendor="salescaling", amount=3)
    metrics.observe_latency(client, 0.2)
    metrics.observe_latency(client, 4.0)
    metrics.flush()  # counts are batched in-process and written once a second
    DeadLetters(client).add(
        kind="push", vendor="siro", job={"key": "opp_1"}, attempts=1, error=Permanent(
            "refused", vendor="siro", status=400)
    )  # fmt: skip
    client.rpush("ingest", "job-1", "job-2")
    # when Prometheus scrapes
    samples = _scrape(_app(url, admin=False).test_client())
    # then every pinned name carries what was counted
    assert _value(samples, "oppsync_events_received_total", vendor="siro", outcome="queued") == 2
    assert (
        _value(samples, "oppsync_events_received_total", vendor="siro", outcome="bad_signature")
        == 1
    )
    assert _value(samples, "oppsync_upserts_total", vendor="salescaling", outcome="created") == 1
    assert _value(samples, "oppsync_retries_total", vendor="salescaling") == 3
    assert _value(samples, "oppsync_retries_total", vendor="siro") == 0
    assert _value(samples, "oppsync_dead_letters", vendor="siro") == 1
    assert _value(samples, "oppsync_dead_letters", vendor="salescaling") == 0
    assert _value(samples, "oppsync_queue_depth", queue="ingest") == 2
    assert _value(samples, "oppsync_queue_depth", queue="push.siro") == 0
    assert _value(samples, "oppsync_sync_latency_seconds_count") == 2
    assert _value(samples, "oppsync_sync_latency_seconds_sum") == pytest.approx(4.2)
    assert _value(samples, "oppsync_sync_latency_seconds_bucket", le="0.25") == 1
    assert _value(samples, "oppsync_sync_latency_seconds_bucket", le="5.0") == 2
    assert _value(samples, "oppsync_sync_latency_seconds_bucket", le="+Inf") == 2


def test_metrics_queue_depth_counts_jobs_a_worker_holds(url: str, client: redis.Redis) -> None:
    # given one retry waiting for its countdown inside a worker (kombu's unacked hash), one
    # running ingest, and one ingest waiting in the list at a higher priority
    held = {
        "tag-1": json.dumps([{"body": "…"}, "", "push.salescaling"]),
        "tag-2": json.dumps([{"body": "…"}, "", "ingest"]),
    }
    client.hset("unacked", mapping=held)
    client.rpush("ingest\x06\x163", "job")
    # when Prometheus scrapes
    samples = _scrape(_app(url, admin=False).test_client())
    # then each queue counts both
    assert _value(samples, "oppsync_queue_depth", queue="push.salescaling") == 1
    assert _value(samples, "oppsync_queue_depth", queue="ingest") == 2
    assert metrics.queue_depths(client, ("ingest", "poll")) == {"ingest": (1, 1), "poll": (0, 0)}


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        (_basic(ADMIN[0], "wrong"), 401),
        (_basic("someone", ADMIN[1]), 401),
        ({"Authorization": "Bearer " + ADMIN[1]}, 401),
        (_basic(*ADMIN), 200),
    ],
)
def test_metrics_asks_for_the_admin_credentials_when_set(
    url: str, headers: dict[str, str], status: int
) -> None:
    answer = _app(url, admin=True).test_client().get("/metrics", headers=headers)
    assert answer.status_code == status
    if status == 401:
        assert answer.headers["WWW-Authenticate"].startswith("Basic")
        assert "oppsync_" not in answer.text


def test_metrics_is_open_without_admin_credentials(url: str) -> None:
    answer = _app(url, admin=False).test_client().get("/metrics")
    assert answer.status_code == 200
    assert "oppsync_queue_depth" in answer.text


def test_status_is_off_without_admin_credentials(url: str) -> None:
    # given no admin credentials configured
    answer = _app(url, admin=False).test_client().get("/status")
    # then the page refuses, and says how to turn it on
    assert answer.status_code == 403
    assert "OPPSYNC_ADMIN_USER" in answer.text and "OPPSYNC_ADMIN_PASSWORD" in answer.text


def test_status_renders_behind_basic_auth(url: str, client: redis.Redis) -> None:
    web = _app(url, admin=True).test_client()
    assert web.get("/status").status_code == 401
    answer = web.get("/status", headers=_basic(*ADMIN))
    assert answer.status_code == 200
    assert answer.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
    assert 'id="vendor-siro"' in answer.text and 'id="queue-push.salescaling"' in answer.text


def test_admin_sign_in_failures_are_limited_per_client(url: str) -> None:
    # given at most 3 failed sign-ins a minute per client
    app = create_app(_settings(url, admin=True, OPPSYNC_ADMIN_AUTH_RATE_LIMIT="3/minute"))
    web = app.test_client()
    guess = _basic(ADMIN[0], "guess")
    # and an operator who signed in many times (that never counts)
    signed_in = [web.get("/metrics", headers=_basic(*ADMIN)).status_code for _ in range(5)]
    assert signed_in == [200] * 5
    # when one client guesses, on both admin pages
    answers = [web.get(page, headers=guess).status_code for page in ("/status", "/metrics")]
    answers.append(web.get("/status").status_code)
    # then its next request is refused with Retry-After, the right password too
    assert answers == [401, 401, 401]
    refused = web.get("/metrics", headers=_basic(*ADMIN))
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert web.get("/status", headers=_basic(*ADMIN)).status_code == 429
    # and another client still signs in
    other = {"REMOTE_ADDR": "10.0.0.2"}
    assert web.get("/status", headers=_basic(*ADMIN), environ_base=other).status_code == 200


def test_readyz_says_no_worker_was_seen_until_one_beats(url: str) -> None:
    # given Redis up and no worker
    app = _app(url, admin=False)
    web = app.test_client()
    answer = web.get("/readyz")
    # then the web is not ready, and says why
    assert answer.status_code == 503 and answer.json is not None
    assert "no worker seen" in answer.json["reason"]
    # when a worker beats, it is
    app.extensions["oppsync.runtime"].store.beat()
    assert web.get("/readyz").status_code == 200
    assert web.get("/healthz").json == {"status": "ok"}


def test_settings_admin_user_without_password_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="OPPSYNC_ADMIN_PASSWORD"):
        from_env({"OPPSYNC_VENDORS": "", "OPPSYNC_ADMIN_USER": "ops"})


def test_csrf_token_is_accepted_once_issued_and_refused_when_forged(url: str) -> None:
    app = _app(url, admin=True)
    tokens = CsrfTokens(app.extensions["oppsync.runtime"])
    now = time.time()
    token = tokens.issue("letter-a", now)
    issued, _, signature = token.partition(".")
    assert tokens.valid(token, "letter-a", now + 60)
    assert not tokens.valid(f"{issued}.{'0' * len(signature)}", "letter-a", now)
    assert not tokens.valid(f"{int(issued) + 1}.{signature}", "letter-a", now)
    assert not tokens.valid(token, "letter-a", now + TOKEN_TTL_SECONDS + 1)
    assert not tokens.valid("", "letter-a", now)
    assert not tokens.valid("not-a-token", "letter-a", now)


def test_csrf_token_is_void_once_the_admin_credentials_change(url: str) -> None:
    # given a token issued under one password
    token = CsrfTokens(_app(url, admin=True).extensions["oppsync.runtime"]).issue("letter-a")
    # when the password is rotated
    rotated = create_app(replace(_settings(url, admin=True), admin_password="a new password"))
    # then the old token no longer replays anything
    assert not CsrfTokens(rotated.extensions["oppsync.runtime"]).valid(token, "letter-a")


def _letter(client: redis.Redis, key: str) -> str:
    return DeadLetters(client).add(
        kind="push", vendor="siro", job={"key": key, "vendor": "siro", "cause": {}},
        attempts=1, error=Permanent("refused", vendor="siro", status=400),
    ).id  # fmt: skip


def _rendered_tokens(web: FlaskClient) -> dict[str, str]:
    """Each Replay form's token on the rendered page, by the letter its form replays."""
    page = web.get("/status", headers=_basic(*ADMIN)).text
    forms = re.findall(r'deadletters/([^/"]+)/replay">\s*<input[^>]*value="([^"]+)"', page)
    return dict(forms)


def test_status_replay_token_replays_only_its_own_letter(url: str, client: redis.Redis) -> None:
    # given two dead letters on the status page, each with its Replay form
    first, second = _letter(client, "opp_1"), _letter(client, "opp_2")
    web = _app(url, admin=True).test_client()
    tokens = _rendered_tokens(web)
    assert set(tokens) == {first, second}
    # when the first form's token is posted to replay the second letter
    answer = web.post(
        f"/status/deadletters/{second}/replay",
        data={"csrf_token": tokens[first]},
        headers=_basic(*ADMIN),
    )
    # then it is refused and nothing is replayed (the browser test replays with the right one)
    assert answer.status_code == 403
    assert DeadLetters(client).get(second) is not None


def test_status_replay_token_expires_within_the_hour(url: str, client: redis.Redis) -> None:
    # given a Replay form rendered 61 minutes ago
    letter = _letter(client, "opp_1")
    app = _app(url, admin=True)
    stale = CsrfTokens(app.extensions["oppsync.runtime"]).issue(letter, time.time() - 61 * 60)
    # when it is posted now, then it is refused
    answer = app.test_client().post(
        f"/status/deadletters/{letter}/replay", data={"csrf_token": stale}, headers=_basic(*ADMIN)
    )
    assert answer.status_code == 403
    assert DeadLetters(client).get(letter) is not None


@pytest.mark.parametrize(
    "claimed",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Referer": "https://evil.example/page"},
        {"Origin": "http://localhost.evil.example"},
    ],
)
def test_status_replay_refuses_a_post_from_another_site(
    url: str, client: redis.Redis, claimed: dict[str, str]
) -> None:
    # given a valid token for the letter (the forger got hold of one)
    letter = _letter(client, "opp_1")
    web = _app(url, admin=True).test_client()
    token = _rendered_tokens(web)[letter]
    # when a browser without Sec-Fetch-Site posts it from another site
    answer = web.post(
        f"/status/deadletters/{letter}/replay",
        data={"csrf_token": token},
        headers={**_basic(*ADMIN), **claimed},
    )
    # then nothing is replayed
    assert answer.status_code == 403
    assert DeadLetters(client).get(letter) is not None


def test_status_replay_refuses_a_post_without_the_token(url: str, client: redis.Redis) -> None:
    # given a dead letter
    letter = DeadLetters(client).add(
        kind="push", vendor="siro", job={"key": "opp_1", "vendor": "siro", "cause": {}},
        attempts=1, error=Permanent("refused", vendor="siro", status=400),
    )  # fmt: skip
    web = _app(url, admin=True).test_client()
    # when a form posts without a token, or with a forged one
    for form in ({}, {"csrf_token": "1.abc"}):
        answer = web.post(
            f"/status/deadletters/{letter.id}/replay", data=form, headers=_basic(*ADMIN)
        )
        # then nothing is replayed
        assert answer.status_code == 403
        assert "reload /status" in answer.text
    assert DeadLetters(client).get(letter.id) is not None


def test_vendorhealth_counts_the_vendors_own_failures_in_the_window(
    client: redis.Redis,
) -> None:
    now = 1_800_000_000.0
    # given writes and failures in the last minutes, and one long ago
    vendorhealth.record_push(client, "siro", outcome="created", now=now - 120)
    vendorhealth.record_push(client, "siro", outcome="updated", now=now - 60)
    vendorhealth.record_push(client, "siro", outcome="unchanged", now=now - 30)
    vendorhealth.record_push(client, "siro", error=RateLimited("429", vendor="siro"), now=now - 10)
    vendorhealth.record_push(
        client, "siro", error=Permanent("400", vendor="siro", status=400), now=now - 20
    )
    vendorhealth.record_push(client, "siro", outcome="created", now=now - 3600)
    # and waits that are ours, not the vendor's
    vendorhealth.record_push(client, "siro", error=Busy("busy", vendor="siro"), now=now)
    vendorhealth.record_push(client, "siro", error=OwnQuota("q", vendor="siro"), now=now)
    metrics.flush()  # results are batched in-process and written once a second
    # when the status page reads them
    health = vendorhealth.read_health(client, ("siro", "salescaling"), now=now)
    # then only the vendor's own results in the window count
    siro = health["siro"]
    assert (siro.ok, siro.errors) == (2, 2)
    assert siro.error_rate == 0.5
    assert siro.errors_by_reason == {"rate_limited": 1, "permanent": 1}
    assert siro.last_success == now - 60
    assert siro.last_error == now - 10 and siro.last_error_reason == "rate_limited"
    assert health["salescaling"].error_rate is None
    assert health["salescaling"].last_success is None


def test_vendorhealth_headroom_reads_the_shared_quota(url: str, client: redis.Redis) -> None:
    # given a worker that drew three requests from SIRO's quota
    settings = _settings(url, admin=False, SIRO_RATE_LIMIT="10/minute")
    worker_quota = build_runtime(settings).quotas["siro"]
    for _ in range(3):
        worker_quota.acquire()
    # when the status page reads the headroom
    reader = vendorhealth.QuotaReader(settings, client)
    (row,) = reader.headroom("siro")
    # then it sees what is left, and reading drew nothing
    assert (row.amount, row.remaining) == (10, 7)
    assert reader.headroom("siro")[0].remaining == 7
    assert reader.headroom("salescaling")[0].remaining == reader.headroom("salescaling")[0].amount


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "never"), (5, "5 s ago"), (600, "10 min ago"), (3 * 3600, "3 h ago")],
)
def test_status_ago_says_how_long_ago(seconds: float | None, text: str) -> None:
    now = 1_800_000_000.0
    assert ago(None if seconds is None else now - seconds, now) == text
