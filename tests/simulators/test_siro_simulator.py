"""The SIRO simulator enforces SIRO's auth, body rules and answer shapes over real HTTP."""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flask import Flask, request
from standardwebhooks import Webhook
from werkzeug.serving import make_server

from worker.sandbox.simulators.siro import OPPORTUNITIES_PATH, SYNC_PATH, SiroSimulator

TOKEN = "siro-test-token"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()


@pytest.fixture(scope="module")
def server() -> Iterator[SiroSimulator]:
    simulator = SiroSimulator(token=TOKEN).start()
    yield simulator
    simulator.stop()


@pytest.fixture
def sim(server: SiroSimulator) -> SiroSimulator:
    # One server per module (stopping one takes half a second); each test starts clean.
    server.reset()
    server.webhook_url = server.webhook_secret = None
    return server


@pytest.fixture
def client(sim: SiroSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=sim.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=2.0
    ) as c:
        yield c


def sync(client: httpx.Client, **fields: Any) -> httpx.Response:
    return client.put(SYNC_PATH, json={"externalId": "opp-1", **fields})


@pytest.mark.parametrize("header", [None, "Bearer wrong", TOKEN, f"Basic {TOKEN}"])
def test_simulator_refuses_requests_without_the_bearer_token(
    sim: SiroSimulator, header: str | None
) -> None:
    # given a request with missing or wrong credentials
    headers = {"Authorization": header} if header else {}
    # when it reaches SIRO
    answer = httpx.put(sim.url + SYNC_PATH, json={"externalId": "x"}, headers=headers)
    # then 401 with SIRO's message, and nothing is stored
    assert answer.status_code == 401
    assert answer.json() == {"message": "Unauthorized"}
    assert sim.records == {}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "externalId"),
        ({"externalId": 5}, "externalId"),
        ({"externalId": "x", "amount": "100"}, "amount"),
        ({"externalId": "x", "disposition": "PENDING"}, "disposition"),
        ({"externalId": "x", "closedAt": "next week"}, "closedAt"),
        ({"externalId": "x", "opportunityUsers": [{"email": "a@b.c"}]}, "opportunityUsers"),
        ({"externalId": "x", "opportunityContacts": [{"externalId": "c", "isPrimary": "y"}]},
         "opportunityContacts"),
    ],
)  # fmt: skip
def test_simulator_sync_refuses_bad_bodies_naming_the_field(
    sim: SiroSimulator, client: httpx.Client, body: dict[str, Any], field: str
) -> None:
    # given a sync body missing a required field or with a wrong type
    # when it is sent
    answer = client.put(SYNC_PATH, json=body)
    # then 422 names the field and nothing is stored
    assert answer.status_code == 422
    assert field in answer.json()["message"]
    assert sim.records == {}


def test_simulator_sync_answers_in_the_documented_envelope(
    sim: SiroSimulator, client: httpx.Client
) -> None:
    # given a valid body, when it is synced
    answer = sync(client, name="Deal", amount=10, closedAt="2024-02-28 00:00:00.000",
                  disposition="WON", account={"externalId": "a1", "name": "Acme"})  # fmt: skip
    # then the answer is {"data": …} with SIRO's fields, a UUID and ms-precision timestamps
    assert answer.status_code == 200
    data = answer.json()["data"]
    assert set(data) == {
        "id", "externalId", "createdAt", "updatedAt", "organizationId", "name", "amount",
        "closedAt", "disposition", "recordingId", "accountId", "account", "opportunityUsers",
    }  # fmt: skip
    assert UUID.match(data["id"]) and STAMP.match(data["createdAt"])
    assert data["closedAt"] == "2024-02-28T00:00:00.000Z"
    assert data["account"]["name"] == "Acme" and data["accountId"] == data["account"]["id"]
    assert sim.records[data["id"]]["name"] == "Deal"


def test_simulator_sync_upserts_by_external_id(sim: SiroSimulator, client: httpx.Client) -> None:
    # given a synced record
    first = sync(client, name="One").json()["data"]
    # when the same externalId is synced again with other values
    second = sync(client, name="Two").json()["data"]
    # then it is the same record, created once, updated later, replaced by the new body
    assert second["id"] == first["id"] and len(sim.records) == 1
    assert second["createdAt"] == first["createdAt"]
    assert second["updatedAt"] > first["updatedAt"]
    assert second["name"] == "Two"


def test_simulator_get_returns_the_flat_record_or_404(
    sim: SiroSimulator, client: httpx.Client
) -> None:
    # given a synced record with a contact
    contact = {"externalId": "c1", "name": "Bob", "emailAddresses": ["b@x.com"], "isPrimary": True}
    vendor_id = sync(client, opportunityContacts=[contact]).json()["data"]["id"]
    # when it is read, and a missing one too
    found = client.get(f"{OPPORTUNITIES_PATH}/{vendor_id}")
    missing = client.get(f"{OPPORTUNITIES_PATH}/no-such-id")
    # then the record is flat (no envelope) and carries contacts; the missing one is 404
    assert found.status_code == 200
    assert found.json() == sim.records[vendor_id]
    assert found.json()["opportunityContacts"][0]["emailAddresses"] == ["b@x.com"]
    assert missing.status_code == 404 and "message" in missing.json()


def test_simulator_list_filters_by_external_id_and_pages_by_cursor(
    sim: SiroSimulator, client: httpx.Client
) -> None:
    # given 30 records, one of them ours
    for i in range(29):
        sim.seed({"name": f"Native {i}"})
    ours = sync(client, name="Ours").json()["data"]["id"]
    # when the list is read page by page, and filtered by externalId
    first = client.get(OPPORTUNITIES_PATH).json()
    second = client.get(OPPORTUNITIES_PATH, params={"cursor": first["cursor"]}).json()
    filtered = client.get(OPPORTUNITIES_PATH, params={"externalId": "opp-1"}).json()
    # then pages are 25 with SIRO's paging fields and the filter finds exactly ours
    assert (len(first["data"]), first["hasNextPage"], first["total"]) == (25, True, 30)
    assert first["pageSize"] == first["limit"] == 25
    assert (len(second["data"]), second["hasNextPage"], second["cursor"]) == (5, False, None)
    assert [r["id"] for r in filtered["data"]] == [ours]


def test_simulator_list_refuses_a_bad_cursor(client: httpx.Client) -> None:
    # given a cursor SIRO never issued, when used, then 400
    assert client.get(OPPORTUNITIES_PATH, params={"cursor": "nonsense!"}).status_code == 400


def test_simulator_keeps_soft_deleted_records_and_delete_removes(
    sim: SiroSimulator, client: httpx.Client
) -> None:
    # given a record synced with deletedAt
    vendor_id = sync(client, deletedAt="2024-04-01T00:00:00Z").json()["data"]["id"]
    # when it is read, then it is still there with deletedAt
    assert client.get(f"{OPPORTUNITIES_PATH}/{vendor_id}").json()["deletedAt"] == (
        "2024-04-01T00:00:00.000Z"
    )
    # when it is deleted, then it is gone, and deleting again is 404
    assert client.delete(f"{OPPORTUNITIES_PATH}/{vendor_id}").status_code == 200
    assert vendor_id not in sim.records
    assert client.delete(f"{OPPORTUNITIES_PATH}/{vendor_id}").status_code == 404


def test_simulator_edit_bumps_updated_at(sim: SiroSimulator) -> None:
    # given a seeded record, when a person edits it
    vendor_id = sim.seed({"name": "Before"})
    before = sim.records[vendor_id]["updatedAt"]
    after = sim.edit(vendor_id, name="After", disposition="WON")
    # then the change is kept and updatedAt moved on
    assert after["name"] == "After" and after["disposition"] == "WON"
    assert after["updatedAt"] > before


def test_simulator_faults_answer_errors_and_lose_responses(
    sim: SiroSimulator, client: httpx.Client
) -> None:
    # given an error fault and a lost-response fault
    sim.faults.add("error", status=503, retry_after=7)
    sim.faults.add("lost_response", methods=("PUT",))
    # when requests are sent
    failed = sync(client, name="A")
    with pytest.raises(httpx.TransportError):
        sync(client, name="B")
    # then the first is 503 with Retry-After and not stored; the second was stored anyway
    assert failed.status_code == 503 and failed.headers["Retry-After"] == "7"
    assert [r["name"] for r in sim.records.values()] == ["B"]


def test_simulator_quota_answers_429_with_retry_after() -> None:
    # given a simulator allowing two requests a minute
    sim = SiroSimulator(rate_limit=(2, 60)).start()
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        # when three requests are sent
        answers = [httpx.get(sim.url + OPPORTUNITIES_PATH, headers=headers) for _ in range(3)]
        # then the third is 429 with Retry-After
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert int(answers[2].headers["Retry-After"]) > 0
    finally:
        sim.stop()


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    received: list[tuple[dict[str, str], bytes]] = []
    app = Flask("receiver")

    @app.post("/webhooks/siro")
    def hook() -> tuple[str, int]:
        received.append((dict(request.headers), request.get_data()))
        return "", 202

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/webhooks/siro", received
    server.shutdown()


def test_simulator_emit_standard_sends_signed_fat_and_thin_deliveries(
    sim: SiroSimulator, receiver: tuple[str, list[tuple[dict[str, str], bytes]]]
) -> None:
    # given a simulator wired to a receiver through the customer's automation
    sim.webhook_url, received = receiver
    sim.webhook_secret = SECRET
    vendor_id = sim.seed({"name": "Deal"})
    # when it emits the record, then only its id
    statuses = [sim.emit_standard(vendor_id), sim.emit_standard(vendor_id, thin=True)]
    # then both are Standard Webhooks deliveries that verify, fat then thin
    assert statuses == [202, 202]
    payloads = [Webhook(SECRET).verify(body, headers) for headers, body in received]
    assert payloads[0] == json.loads(json.dumps(sim.records[vendor_id]))
    assert payloads[1] == {"id": vendor_id}
