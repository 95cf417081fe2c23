"""What an operator watches, on the real stack: /metrics, /status, /healthz, /readyz and the
logs of one change as it goes from the receiver through every task."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import QUEUE_KEYS
from tests.integration.drive import (
    DEAL,
    announce,
    as_held_by,
    events,
    others,
    person_creates,
    wait_converged,
)
from worker.sandbox.stack import ADMIN_PASSWORD, ADMIN_USER, Stack, wait_for

pytestmark = pytest.mark.integration

AUTH = (ADMIN_USER, ADMIN_PASSWORD)


def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = httpx.get(f"{stack.web_url}/metrics", auth=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def sync_one(stack: Stack, source: str = "salescaling") -> str:
    """A deal created in ``source`` and synced to the other four; returns its id there."""
    vendor_id = person_creates(stack, source)
    assert announce(stack, source, vendor_id) == 202
    wait_converged(stack, others(source), as_held_by(source, DEAL))
    return vendor_id


def test_metrics_count_one_change_from_edge_to_every_vendor(live: Stack) -> None:
    before = scrape(live)
    # when a deal created in Salescaling is synced to the other four
    sync_one(live)
    # then the edge, the upserts and the latency histogram each counted it
    # (each process writes its counts once a second)
    after = wait_for(
        lambda: (
            (s := scrape(live))
            and value(s, "oppsync_sync_latency_seconds_count") > 0
            and value(s, "oppsync_events_received_total", vendor="salescaling", outcome="queued")
            > value(before, "oppsync_events_received_total", vendor="salescaling", outcome="queued")
            and s
        ),
        10,
        "no latency observed",
    )

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("oppsync_events_received_total", vendor="salescaling", outcome="queued") == 1
    for target in others("salescaling"):
        assert delta("oppsync_upserts_total", vendor=target, outcome="created") == 1, target
    assert delta("oppsync_sync_latency_seconds_count") == 1
    assert value(after, "oppsync_sync_latency_seconds_bucket", le="+Inf") == value(
        after, "oppsync_sync_latency_seconds_count"
    )
    # and every queue and vendor has its series
    depths = {dict(k[1])["queue"] for k in after if k[0] == "oppsync_queue_depth"}
    assert depths == set(QUEUE_KEYS)
    letters = {dict(k[1])["vendor"] for k in after if k[0] == "oppsync_dead_letters"}
    assert set(others("salescaling")) <= letters


def test_metrics_and_status_ask_for_credentials(live: Stack) -> None:
    for path in ("/metrics", "/status"):
        assert httpx.get(f"{live.web_url}{path}").status_code == 401
        assert httpx.get(f"{live.web_url}{path}", auth=(ADMIN_USER, "nope")).status_code == 401


def test_status_shows_each_vendors_health_and_the_latest_event(live: Stack) -> None:
    # given a change synced from Salescaling to the other four
    sync_one(live)

    # when an operator opens the status page (push results reach it within a second)
    def page_with_successes() -> str | None:
        page = httpx.get(f"{live.web_url}/status", auth=AUTH)
        assert page.status_code == 200
        return page.text if page.text.count(" s ago") >= len(others("salescaling")) else None

    html = wait_for(page_with_successes, 10, "the status page shows no recent success")
    # then each vendor written shows a recent success, and the event is listed with its
    # outcome and correlation id
    for target in others("salescaling"):
        row = re.search(rf'<tr id="vendor-{target}">(.*?)</tr>', html, re.S)
        assert row is not None, target
        assert " s ago" in row.group(1), row.group(1)
    event = next(e for e in events(live) if e["vendor"] == "salescaling")
    assert event["outcome"] == "applied"
    assert event["correlation_id"] in html
    assert 'id="queue-push.salescaling"' in html
    assert "No dead letters." in html


def test_health_and_readiness_on_the_stack(live: Stack) -> None:
    assert httpx.get(f"{live.web_url}/healthz").json() == {"status": "ok"}
    # (the fixture wiped Redis, heartbeat included: the worker beats again within seconds)
    ready = wait_for(
        lambda: (r := httpx.get(f"{live.web_url}/readyz")).status_code == 200 and r,
        15,
        "the worker's heartbeat did not come back",
    )
    assert ready.json()["status"] == "ready"


def _log_records(stack: Stack, name: str) -> list[dict[str, Any]]:
    records = []
    for line in (stack.log_dir / name).read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def test_logs_follow_one_correlation_id_from_the_receiver_through_every_push(
    live: Stack,
) -> None:
    # given a deal created in Salescaling and synced to the other four
    sync_one(live)
    event = next(e for e in events(live) if e["vendor"] == "salescaling")
    correlation_id = event["correlation_id"]
    # then the web process logged its acceptance and the request's access line under that id
    web = [r for r in _log_records(live, "web.log") if r.get("correlation_id") == correlation_id]
    assert [r["event"] for r in web] == ["webhook.accepted", "http.access"]
    assert web[0]["delivery"] == event["delivery"]
    # and the worker logged the ingest and each of the four pushes under the same id
    worker = [
        r for r in _log_records(live, "worker0.log") if r.get("correlation_id") == correlation_id
    ]
    assert [r["event"] for r in worker if r["event"] == "ingest.done"] == ["ingest.done"]
    pushed = {r["vendor"] for r in worker if r["event"] == "push.done"}
    assert pushed == set(others("salescaling"))


def test_logs_hold_no_secret_and_no_personal_data(live: Stack) -> None:
    # given a deal with a contact's email and phone synced everywhere
    sync_one(live, "leadway")
    logs = live.logs()
    # then neither the contact nor any credential of the stack is in any process's log
    contact = DEAL.contact
    assert contact is not None and contact.email and contact.phone
    assert contact.email not in logs
    assert contact.phone not in logs
    secret_names = ("TOKEN", "SECRET", "PASSWORD", "API_KEY")
    secrets = [
        v
        for k, v in live.env.items()
        if k.startswith(("OPPSYNC_", "SIRO_", "LEADWAY_", "IVVY_", "SALESCALING_", "ICLOUDREADY_"))
        and any(word in k for word in secret_names)
        and "PUBLIC_KEY" not in k
        and len(v) >= 4
    ]
    assert len(secrets) >= 10
    leaked = [k for k, v in live.env.items() if v in secrets and v in logs]
    assert leaked == []
