"""The Leadway simulator answers as HighLevel does: auth, shapes, errors, quota, webhooks."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from flask import Flask, request
from standardwebhooks import Webhook
from werkzeug.serving import make_server

from tests.strategies import EXAMPLE_MAPPING
from worker.sandbox.simulators.leadway import API_VERSION, LeadwaySimulator

STAGES = [s.ids["leadway"] for s in EXAMPLE_MAPPING.stages]
SECRET = "whsec_" + base64.b64encode(b"leadway-simulator-test-secret!!").decode()


@pytest.fixture(scope="module")
def server() -> Iterator[LeadwaySimulator]:
    # one server per module (werkzeug takes ~0.5 s to stop); the quota is tested on its own
    sim = LeadwaySimulator(rate_limit=None).start()
    yield sim
    sim.stop()


@pytest.fixture
def sim(server: LeadwaySimulator) -> LeadwaySimulator:
    server.reset()
    server.faults.fired.clear()
    server.auto_emit, server.webhook_url, server.webhook_secret = False, None, None
    return server


@pytest.fixture
def api(sim: LeadwaySimulator) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {sim.token}", "Version": API_VERSION}
    with httpx.Client(base_url=sim.url, headers=headers, timeout=5.0) as client:
        yield client


class Receiver:
    """A webhook endpoint on loopback that keeps what it was sent."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.arrived = threading.Condition()
        app = Flask("receiver")
        app.add_url_rule("/webhooks/leadway", "hook", self._hook, methods=["POST"])
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/webhooks/leadway"

    def _hook(self) -> tuple[str, int]:
        with self.arrived:
            self.received.append((request.get_data(), dict(request.headers)))
            self.arrived.notify_all()
        return "", 202

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.received) >= count, timeout)
        return [json.loads(body) for body, _ in self.received]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture
def receiver(sim: LeadwaySimulator, endpoint: Receiver) -> Receiver:
    endpoint.received.clear()
    sim.webhook_url = endpoint.url
    return endpoint


def a_contact(api: httpx.Client, sim: LeadwaySimulator, **fields: Any) -> str:
    body = {"locationId": sim.location_id, "name": "Dana Reyes", **fields}
    return str(api.post("/contacts/upsert", json=body).json()["contact"]["id"])


def upsert_body(sim: LeadwaySimulator, **changes: Any) -> dict[str, Any]:
    body = {
        "pipelineId": sim.pipeline_id,
        "locationId": sim.location_id,
        "name": "Harbour expansion",
        "status": "open",
        "monetaryValue": 220,
        "followers": [],
        "isRemoveAllFollowers": False,
        "followersActionType": "add",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def created(api: httpx.Client, sim: LeadwaySimulator, **changes: Any) -> dict[str, Any]:
    contact = a_contact(api, sim, email="dana@harbour.example.com")
    answer = api.post("/opportunities/upsert", json=upsert_body(sim, contactId=contact, **changes))
    assert answer.status_code == 200, answer.text
    return dict(answer.json()["opportunity"])


# -- auth --------------------------------------------------------------------------------
@pytest.mark.parametrize("token", [None, "Bearer wrong", "leadway-test-token"])
def test_leadway_simulator_refuses_a_missing_or_wrong_token(
    sim: LeadwaySimulator, token: str | None
) -> None:
    # given a request without the right bearer token
    headers = {"Version": API_VERSION, **({"Authorization": token} if token else {})}
    # when it asks for pipelines
    answer = httpx.get(f"{sim.url}/opportunities/pipelines", headers=headers)
    # then HighLevel's 401 comes back
    assert answer.status_code == 401
    assert answer.json() == {
        "statusCode": 401,
        "message": "Invalid token: access token is invalid",
        "error": "Unauthorized",
    }


def test_leadway_simulator_requires_the_version_header(sim: LeadwaySimulator) -> None:
    # given the right token but no Version header
    headers = {"Authorization": f"Bearer {sim.token}"}
    # when / then
    answer = httpx.get(f"{sim.url}/opportunities/pipelines", headers=headers)
    assert (answer.status_code, answer.json()) == (
        400,
        {"statusCode": 400, "message": "Bad Request"},
    )


# -- upsert ------------------------------------------------------------------------------
def test_leadway_simulator_creates_then_updates_one_record(
    sim: LeadwaySimulator, api: httpx.Client
) -> None:
    # given a contact
    contact = a_contact(api, sim, email="dana@harbour.example.com")
    # when an opportunity is upserted without, then with its id
    first = api.post("/opportunities/upsert", json=upsert_body(sim, contactId=contact)).json()
    opp_id = first["opportunity"]["id"]
    second = api.post(
        "/opportunities/upsert", json=upsert_body(sim, id=opp_id, status="won", contactId=...)
    ).json()
    # then one record exists, in HighLevel's envelope, with a HighLevel-style id
    assert (first["new"], second["new"]) == (True, False)
    assert re.fullmatch(r"[A-Za-z0-9]{20}", opp_id)
    assert list(sim.records) == [opp_id]
    record = second["opportunity"]
    assert record["status"] == "won"
    assert record["pipelineStageId"] == STAGES[0]  # the pipeline's first stage
    assert record["contact"]["email"] == "dana@harbour.example.com"
    assert record["updatedAt"] > record["createdAt"]
    assert record["lastStatusChangeAt"] == record["updatedAt"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pipelineId": ...}, "pipelineId should not be empty"),
        ({"followers": ...}, "followers must be an array"),
        ({"status": "pending"}, "status must be one of the following values"),
        ({"monetaryValue": "220"}, "monetaryValue must be a number"),
        ({"contactId": ...}, "contactId should not be empty"),
    ],
)
def test_leadway_simulator_answers_422_for_a_bad_body(
    sim: LeadwaySimulator, api: httpx.Client, changes: dict[str, Any], message: str
) -> None:
    # given a create body with one thing wrong
    body = upsert_body(sim, **{"contactId": a_contact(api, sim, phone="+6140001"), **changes})
    # when it is sent
    answer = api.post("/opportunities/upsert", json=body)
    # then HighLevel's validation error names the field
    assert answer.status_code == 422
    payload = answer.json()
    assert (payload["statusCode"], payload["error"]) == (422, "Unprocessable Entity")
    assert any(m.startswith(message) for m in payload["message"])
    assert sim.records == {}


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"locationId": "someoneElse"}, 403),
        ({"pipelineId": "unknownPipeline"}, 400),
        ({"pipelineStageId": "not-a-stage"}, 400),
        ({"contactId": "unknownContact"}, 400),
        ({"id": "unknownOpportunity0"}, 404),
    ],
)
def test_leadway_simulator_refuses_unknown_references(
    sim: LeadwaySimulator, api: httpx.Client, changes: dict[str, Any], status: int
) -> None:
    # given a body naming something that does not exist (or is not ours)
    body = upsert_body(sim, contactId=a_contact(api, sim, phone="+61400000001"))
    body.update(changes)
    # when / then
    answer = api.post("/opportunities/upsert", json=body)
    assert answer.status_code == status
    assert answer.json()["statusCode"] == status


# -- reads -------------------------------------------------------------------------------
def test_leadway_simulator_gets_a_record_or_404(sim: LeadwaySimulator, api: httpx.Client) -> None:
    # given a record
    record = created(api, sim)
    # when it is read, and a missing one is read
    found = api.get(f"/opportunities/{record['id']}")
    missing = api.get("/opportunities/nothingHere000000000")
    # then the record comes back wrapped, the missing one is 404
    assert found.json() == {"opportunity": sim.records[record["id"]]}
    assert missing.status_code == 404


def test_leadway_simulator_searches_with_filters_and_pages(
    sim: LeadwaySimulator, api: httpx.Client
) -> None:
    # given five records, one of them under another contact
    for n in range(4):
        created(api, sim, name=f"Deal {n}")
    other = a_contact(api, sim, email="other@example.com")
    api.post("/opportunities/upsert", json=upsert_body(sim, contactId=other, name="Other deal"))
    query: dict[str, Any] = {
        "location_id": sim.location_id,
        "pipeline_id": sim.pipeline_id,
        "limit": 2,
    }
    # when the pipeline is searched page by page, and by contact and text
    pages = [
        api.get("/opportunities/search", params={**query, "page": p}).json() for p in (1, 2, 3)
    ]
    by_contact = api.get("/opportunities/search", params={**query, "contact_id": other}).json()
    by_text = api.get("/opportunities/search", params={**query, "q": "deal 2"}).json()
    # then pages cover everything once, newest first, and filters narrow
    names = [o["name"] for page in pages for o in page["opportunities"]]
    assert names == ["Other deal", "Deal 3", "Deal 2", "Deal 1", "Deal 0"]
    assert [p["meta"]["nextPage"] for p in pages] == [2, 3, None]
    assert pages[0]["meta"]["total"] == 5
    assert [o["name"] for o in by_contact["opportunities"]] == ["Other deal"]
    assert [o["name"] for o in by_text["opportunities"]] == ["Deal 2"]


def test_leadway_simulator_search_needs_a_location_and_a_sane_limit(
    sim: LeadwaySimulator, api: httpx.Client
) -> None:
    # given / when / then
    assert api.get("/opportunities/search").status_code == 422
    too_many: dict[str, Any] = {"location_id": sim.location_id, "limit": 101}
    assert api.get("/opportunities/search", params=too_many).status_code == 422


def test_leadway_simulator_lists_pipelines_with_the_mapping_stages(
    sim: LeadwaySimulator, api: httpx.Client
) -> None:
    # given / when
    answer = api.get("/opportunities/pipelines", params={"locationId": sim.location_id}).json()
    # then the default pipeline holds the example mapping's stage ids, in order
    (pipeline,) = answer["pipelines"]
    assert pipeline["id"] == "VDm7RPYC2GLUvdpKmBfC"
    assert [s["id"] for s in pipeline["stages"]] == STAGES


def test_leadway_simulator_deletes_with_its_misspelt_answer(
    sim: LeadwaySimulator, api: httpx.Client
) -> None:
    # given a record
    record = created(api, sim)
    # when it is deleted twice
    first = api.delete(f"/opportunities/{record['id']}")
    second = api.delete(f"/opportunities/{record['id']}")
    # then the first answers {"succeded": true} (sic) and the second 404
    assert first.json() == {"succeded": True}
    assert second.status_code == 404
    assert record["id"] not in sim.records


def test_leadway_simulator_contacts_deduplicate_by_email_then_phone(
    sim: LeadwaySimulator, api: httpx.Client
) -> None:
    # given a contact with an email and a phone
    url, loc = "/contacts/upsert", sim.location_id
    first = api.post(url, json={"locationId": loc, "email": "a@x.example.com", "phone": "+611"})
    # when the same email, then the same phone, then neither is upserted
    by_email = api.post(url, json={"locationId": loc, "email": "A@x.example.com", "name": "A"})
    by_phone = api.post(url, json={"locationId": loc, "phone": "+611", "companyName": "Co"})
    placeholder = api.post(url, json={"locationId": loc, "name": "Co"})
    # then the first two find the same contact, the placeholder is new
    contact_id = first.json()["contact"]["id"]
    assert first.json()["new"] is True
    assert (by_email.json()["new"], by_email.json()["contact"]["id"]) == (False, contact_id)
    assert (by_phone.json()["new"], by_phone.json()["contact"]["id"]) == (False, contact_id)
    assert placeholder.json()["new"] is True
    assert sim.contacts[contact_id]["companyName"] == "Co"
    assert api.post(url, json={"locationId": loc}).status_code == 422


def test_leadway_simulator_record_shows_its_contact_as_it_is_now(
    sim: LeadwaySimulator, api: httpx.Client
) -> None:
    # given a record and its contact
    record = created(api, sim)
    # when the contact's company changes
    a_contact(api, sim, email="dana@harbour.example.com", companyName="New Co")
    # then the record embeds the current contact
    assert sim.records[record["id"]]["contact"]["companyName"] == "New Co"


# -- quota and faults --------------------------------------------------------------------
def test_leadway_simulator_enforces_highlevel_burst_quota() -> None:
    # given a quota of two requests per ten seconds
    sim = LeadwaySimulator(rate_limit=(2, 10.0)).start()
    headers = {"Authorization": f"Bearer {sim.token}", "Version": API_VERSION}
    url = f"{sim.url}/opportunities/pipelines?locationId={sim.location_id}"
    try:
        # when three requests are made at once
        answers = [httpx.get(url, headers=headers) for _ in range(3)]
    finally:
        sim.stop()
    # then successes count down and the third gets 429 with HighLevel's headers
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["1", "0", "0"]
    assert answers[2].headers["X-RateLimit-Max"] == "2"
    assert answers[2].headers["X-RateLimit-Interval-Milliseconds"] == "10000"
    assert "Retry-After" not in answers[2].headers
    assert sim.rate_limited == 1


def test_leadway_simulator_injects_errors_and_lost_responses(
    sim: LeadwaySimulator, api: httpx.Client
) -> None:
    # given a 503 and then a lost response on the next upserts
    contact = a_contact(api, sim, email="dana@harbour.example.com")
    sim.faults.add("error", status=503, path_contains="/opportunities/upsert")
    sim.faults.add("lost_response", path_contains="/opportunities/upsert")
    body = upsert_body(sim, contactId=contact)
    # when two upserts are sent
    failed = api.post("/opportunities/upsert", json=body)
    with pytest.raises(httpx.TransportError):
        api.post("/opportunities/upsert", json=body)
    # then the 503 committed nothing, the lost response committed the record
    assert failed.status_code == 503
    assert len(sim.records) == 1
    assert [kind for kind, _, _ in sim.faults.fired] == ["error", "lost_response"]


# -- test hooks --------------------------------------------------------------------------
def test_leadway_simulator_seed_and_edit_act_like_a_person(sim: LeadwaySimulator) -> None:
    # given a seeded record with a contact
    opp_id = sim.seed({"name": "Walk-in", "contact": {"name": "Lee", "phone": "+61400000002"}})
    before = dict(sim.records[opp_id])
    # when a person edits it
    time.sleep(0.002)
    after = sim.edit(opp_id, pipelineStageId=STAGES[1], monetaryValue=99)
    # then it changed and its updated time moved on
    assert before["source"] == "manual"
    assert before["contact"]["phone"] == "+61400000002"
    assert (after["pipelineStageId"], after["monetaryValue"]) == (STAGES[1], 99)
    assert after["updatedAt"] > before["updatedAt"]
    assert after["lastStageChangeAt"] == after["updatedAt"]


# -- webhooks ----------------------------------------------------------------------------
def test_leadway_simulator_emit_signs_the_raw_body_with_ed25519(
    sim: LeadwaySimulator, receiver: Receiver
) -> None:
    # given a record
    opp_id = sim.seed({"name": "Signed", "monetaryValue": 40})
    when = datetime(2025, 1, 28, 14, 35, tzinfo=UTC)
    # when its create event is emitted
    status = sim.emit(opp_id, "OpportunityCreate", timestamp=when, webhook_id="wh-1")
    # then the receiver got HighLevel's payload, verifiable with the public key
    body, headers = receiver.received[0]
    key = serialization.load_pem_public_key(sim.public_key_pem.encode())
    key.verify(base64.b64decode(headers["X-Ghl-Signature"]), body)  # type: ignore[union-attr,call-arg]
    payload = json.loads(body)
    assert status == 202
    assert payload["type"] == "OpportunityCreate"
    assert (payload["id"], payload["name"], payload["monetaryValue"]) == (opp_id, "Signed", 40)
    assert (payload["timestamp"], payload["webhookId"]) == ("2025-01-28T14:35:00.000Z", "wh-1")
    assert payload["dateAdded"] == sim.records[opp_id]["createdAt"]
    assert "X-Wh-Signature" not in headers


def test_leadway_simulator_emit_legacy_signs_with_rsa(
    sim: LeadwaySimulator, receiver: Receiver
) -> None:
    # given a record
    opp_id = sim.seed({"name": "Legacy"})
    # when a legacy-signed event is emitted
    sim.emit(opp_id, "OpportunityUpdate", legacy=True)
    # then X-WH-Signature verifies as RSA-SHA256 PKCS#1 v1.5 with a 2048-bit key
    body, headers = receiver.received[0]
    key: Any = serialization.load_pem_public_key(sim.rsa_public_key_pem.encode())
    key.verify(base64.b64decode(headers["X-Wh-Signature"]), body, padding.PKCS1v15(),
               hashes.SHA256())  # fmt: skip
    assert key.key_size == 2048
    assert "X-Ghl-Signature" not in headers


def test_leadway_simulator_emit_tampered_fails_verification(
    sim: LeadwaySimulator, receiver: Receiver
) -> None:
    # given a record
    opp_id = sim.seed({"name": "Tampered"})
    # when a tampered event is emitted
    sim.emit(opp_id, "OpportunityUpdate", tamper=True)
    # then its signature does not match its body
    body, headers = receiver.received[0]
    key: Any = serialization.load_pem_public_key(sim.public_key_pem.encode())
    with pytest.raises(InvalidSignature):
        key.verify(base64.b64decode(headers["X-Ghl-Signature"]), body)


def test_leadway_simulator_auto_emit_echoes_every_change(
    sim: LeadwaySimulator, api: httpx.Client, receiver: Receiver
) -> None:
    # given auto emit on
    sim.auto_emit = True
    # when a record is created and updated over the API, edited by a person, then deleted
    record = created(api, sim)
    body = upsert_body(sim, id=record["id"], status="won", contactId=...)
    api.post("/opportunities/upsert", json=body)
    sim.edit(record["id"], name="Renamed", monetaryValue=1)
    api.delete(f"/opportunities/{record['id']}")
    # then each change arrived as its matching native event (in any order, as webhooks do),
    # each a snapshot taken at its change
    by_type = {p["type"]: p for p in receiver.wait_for(4)}
    assert sorted(by_type) == [
        "OpportunityCreate",
        "OpportunityDelete",
        "OpportunityStatusUpdate",
        "OpportunityUpdate",
    ]
    assert by_type["OpportunityStatusUpdate"]["status"] == "won"
    assert by_type["OpportunityUpdate"]["name"] == "Renamed"
    assert by_type["OpportunityDelete"]["id"] == record["id"]
    assert len({p["webhookId"] for p in by_type.values()}) == 4


def test_leadway_simulator_emit_standard_sends_the_record_or_its_id(
    sim: LeadwaySimulator, receiver: Receiver
) -> None:
    # given a record and a Standard Webhooks secret
    sim.webhook_secret = SECRET
    opp_id = sim.seed({"name": "Standard"})
    # when it is sent fat, then thin
    sim.emit_standard(opp_id)
    sim.emit_standard(opp_id, thin=True)
    # then both verify with the secret and carry the record, then only its id
    verified = [Webhook(SECRET).verify(body, headers) for body, headers in receiver.received]
    assert verified == [sim.records[opp_id], {"id": opp_id}]
