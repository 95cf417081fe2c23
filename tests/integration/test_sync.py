"""A change in any vendor reaches the other four: the real stack, end to end.

Each test drives a simulator the way a person and the vendor would (a record created or
edited in the vendor's UI, then the vendor's own webhook), and checks what every other
simulator holds, read back through that vendor's schema.
"""

from __future__ import annotations

import json

import httpx
import pytest
import redis

from schemas.opportunity import Status
from tests.integration.drive import (
    DEAL,
    MAPPING,
    announce,
    as_held_by,
    events,
    held,
    others,
    person_creates,
    wait_converged,
    writes,
)
from worker.sandbox.simulators.base import sign_standard_webhook
from worker.sandbox.stack import VENDORS, Stack, wait_for
from worker.store.deadletters import DeadLetters

pytestmark = [pytest.mark.integration, pytest.mark.variants]


@pytest.mark.parametrize("source", VENDORS)
def test_sync_new_opportunity_reaches_the_other_four(live: Stack, source: str) -> None:
    # given a deal a person created in the source vendor
    vendor_id = person_creates(live, source)
    # when the vendor announces it
    assert announce(live, source, vendor_id) == 202
    # then each other vendor holds exactly one record with the mapped fields
    wait_converged(live, others(source), as_held_by(source, DEAL))


@pytest.mark.parametrize("source", VENDORS)
def test_sync_second_change_updates_and_creates_nothing(live: Stack, source: str) -> None:
    vendor_id = person_creates(live, source)
    announce(live, source, vendor_id)
    wait_converged(live, others(source), as_held_by(source, DEAL))
    creates_before = {v: len(held(live, v)) for v in others(source)}
    # when a person changes name and status in the source
    changed = DEAL.replace(name="Harbour View Gala", status=Status.WON, stage="won")
    sim = live.sims[source]
    if source == "siro":
        sim.edit(vendor_id, name=changed.name, disposition="WON")
    elif source == "leadway":
        sim.edit(
            vendor_id,
            name=changed.name,
            status="won",
            pipelineStageId=MAPPING.stage_id("leadway", "won"),
        )
    elif source == "ivvy":
        won = MAPPING.stage_id("ivvy", "won")
        assert won is not None
        sim.edit(vendor_id, name=changed.name, stageId=int(won))
    elif source == "salescaling":
        sim.edit(vendor_id, name=changed.name, status="won")
    else:
        sim.edit(
            vendor_id, name=changed.name, status="won", stage=MAPPING.stage_id("icloudready", "won")
        )
    assert announce(live, source, vendor_id, created=False) == 202
    # then the same four records now hold the change (a vendor without stages says only
    # "won": the stage follows to the mapping's won stage), and none was created
    wait_converged(live, others(source), as_held_by(source, changed))
    assert {v: len(held(live, v)) for v in others(source)} == creates_before


@pytest.mark.parametrize("source", VENDORS)
def test_sync_thin_event_is_fetched_and_synced(live: Stack, source: str) -> None:
    # given a deal announced only by its id (Standard Webhooks, {"id": …})
    vendor_id = person_creates(live, source)
    assert announce(live, source, vendor_id, thin=True) == 202
    # then oppsync fetched the record and synced it
    wait_converged(live, others(source), as_held_by(source, DEAL))


def test_sync_echo_of_our_own_write_goes_no_further(live: Stack) -> None:
    # given a deal from salescaling synced everywhere
    vendor_id = person_creates(live, "salescaling")
    announce(live, "salescaling", vendor_id)
    wait_converged(live, others("salescaling"), as_held_by("salescaling", DEAL))
    from tests.integration.conftest import wait_idle

    wait_idle(redis.Redis.from_url(live.redis.url))
    before = writes(live)
    # when every vendor we wrote reports the record back as a change
    for target in others("salescaling"):
        (target_id,) = list(live.sims[target].records)
        announce(live, target, target_id, created=True)
    wait_idle(redis.Redis.from_url(live.redis.url))
    # then no vendor was written again, and every event ended as an echo
    assert writes(live) == before
    assert [e["outcome"] for e in events(live)[:4]] == ["echo"] * 4


def test_sync_invalid_payload_is_a_dead_letter_and_reaches_no_vendor(live: Stack) -> None:
    # given a Salescaling record whose amount is not a number
    before = writes(live)
    record = {
        "id": "5516cd47-2bd0-4f4f-adc2-22524e54ba4d",
        "name": "Bad deal",
        "amount": "a lot",
        "status": "open",
        "closeProbability": 250,
    }
    sim = live.sims["salescaling"]
    assert sim.send_standard_webhook(record) == 202
    # then it ends as a dead letter naming the fields, and no vendor was called
    client = redis.Redis.from_url(live.redis.url, decode_responses=True)
    letters = wait_for(lambda: DeadLetters(client).list(), 20, "no dead letter")
    assert letters[0].reason == "invalid_payload"
    assert {"amount", "closeProbability"} <= set(letters[0].fields)
    assert writes(live) == before


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("case", ["valid", "tampered", "stale", "missing", "wrong_secret"])
def test_receiver_checks_standard_webhook_signatures(live: Stack, vendor: str, case: str) -> None:
    # An id of the vendor's own form (iVvy: an integer; the others take a hex UUID).
    vendor_id = "12345" if vendor == "ivvy" else "0f8fad5bd9cb469fa16570867728950e"
    body = json.dumps({"id": vendor_id}).encode()
    secret = live.sims[vendor].webhook_secret
    headers = sign_standard_webhook(secret, body)
    if case == "tampered":
        body = json.dumps({"id": vendor_id.replace("5", "9")}).encode()
    elif case == "stale":
        headers["webhook-timestamp"] = str(int(headers["webhook-timestamp"]) - 600)
    elif case == "missing":
        headers = {"content-type": "application/json"}
    elif case == "wrong_secret":
        headers = sign_standard_webhook(
            live.sims["siro" if vendor != "siro" else "ivvy"].webhook_secret, body
        )
    answer = httpx.post(f"{live.web_url}/webhooks/{vendor}", content=body, headers=headers)
    assert answer.status_code == (202 if case == "valid" else 401), answer.text
    assert answer.json()["status" if case == "valid" else "message"]


@pytest.mark.parametrize("case", ["valid", "legacy", "tampered", "stale", "missing"])
def test_receiver_checks_highlevel_signatures(live: Stack, case: str) -> None:
    sim = live.sims["leadway"]
    vendor_id = person_creates(live, "leadway")
    if case == "valid":
        assert sim.emit(vendor_id, "OpportunityCreate") == 202
    elif case == "legacy":
        assert sim.emit(vendor_id, "OpportunityCreate", legacy=True) == 202
    elif case == "tampered":
        assert sim.emit(vendor_id, "OpportunityCreate", tamper=True) == 401
    elif case == "stale":
        from datetime import UTC, datetime, timedelta

        old = datetime.now(UTC) - timedelta(minutes=76)  # past HighLevel's redeliveries
        assert sim.emit(vendor_id, "OpportunityCreate", timestamp=old) == 401
    else:
        body = json.dumps(sim.native_payload(vendor_id, "OpportunityCreate")).encode()
        answer = httpx.post(
            f"{live.web_url}/webhooks/leadway",
            content=body,
            headers={"content-type": "application/json"},
        )
        assert answer.status_code == 401


def test_receiver_drops_a_repeated_delivery(live: Stack) -> None:
    sim = live.sims["leadway"]
    vendor_id = person_creates(live, "leadway")
    assert sim.emit(vendor_id, "OpportunityCreate", webhook_id="wh-same") == 202
    assert sim.emit(vendor_id, "OpportunityCreate", webhook_id="wh-same") == 200


@pytest.mark.parametrize("case", ["valid_v1", "valid_v2", "tampered"])
def test_receiver_checks_sns_signatures(live: Stack, case: str) -> None:
    sim = live.sims["ivvy"]
    vendor_id = person_creates(live, "ivvy")
    if case == "valid_v1":
        assert sim.emit(vendor_id, "OpportunityAdded", signature_version=1) == 202
    elif case == "valid_v2":
        assert sim.emit(vendor_id, "OpportunityAdded", signature_version=2) == 202
    else:
        assert sim.emit(vendor_id, "OpportunityAdded", tamper=True) == 401


def test_receiver_confirms_the_sns_subscription(live: Stack) -> None:
    sim = live.sims["ivvy"]
    assert sim.send_subscription_confirmation() == 200
    assert sim.confirmed


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/webhooks/nosuchvendor", b"{}", 404),
        ("/webhooks/siro", b"x" * 1_100_000, 413),
    ],
)
def test_receiver_answers_edge_errors_in_json(
    live: Stack, path: str, body: bytes, status: int
) -> None:
    answer = httpx.post(
        f"{live.web_url}{path}", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == status
    assert answer.json()["message"]
