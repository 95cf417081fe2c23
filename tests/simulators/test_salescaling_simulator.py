"""The Salescaling simulator enforces the vendor's auth, body rules and answer shapes."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from worker.sandbox.simulators.salescaling import PREFIX, SalescalingSimulator
from worker.sandbox.simulators.variants import Variants

KEY = "salescaling-test-key"
DEAL = {
    "name": "Enterprise Software License",
    "amount": 50000,
    "closeProbability": 75,
    "closeDate": "2024-03-10T00:00:00.000Z",
    "status": "open",
    "description": "500 users",
}


@pytest.fixture(scope="module")
def server() -> Iterator[SalescalingSimulator]:
    simulator = SalescalingSimulator(api_key=KEY).start()
    yield simulator
    simulator.stop()


@pytest.fixture
def sim(server: SalescalingSimulator) -> SalescalingSimulator:
    """The shared simulator, emptied (state, faults, webhook wiring) for each test."""
    server.reset()
    server.webhook_url = server.webhook_secret = None
    return server


@pytest.fixture
def client(sim: SalescalingSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, headers={"x-api-key": KEY}, timeout=2.0) as http:
        yield http


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[bytes, dict[str, str]]]]]:
    """A loopback endpoint that records each delivery (body, headers) and answers 202."""
    received: list[tuple[bytes, dict[str, str]]] = []

    @Request.application
    def app(req: Request) -> Response:
        received.append((req.get_data(), dict(req.headers)))
        return Response(status=202)

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/webhooks/salescaling", received
    server.shutdown()


def is_ms_utc(value: str) -> bool:
    return len(value) == 24 and value.endswith("Z") and datetime.fromisoformat(value) is not None


def wait_for(condition: Callable[[], bool], seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


# -- auth ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{}, {"x-api-key": "wrong"}, {"Authorization": f"Bearer {KEY}"}]
)
def test_simulator_refuses_missing_or_wrong_api_key(
    sim: SalescalingSimulator, headers: dict[str, str]
) -> None:
    # given a request without the right x-api-key
    # when it lists opportunities
    answer = httpx.get(f"{sim.url}{PREFIX}", headers=headers, timeout=2.0)
    # then the vendor's 401 envelope comes back
    assert answer.status_code == 401
    assert answer.json() == {
        "statusCode": 401,
        "count": 0,
        "error": "Unauthorized - missing or invalid API key",
        "data": None,
    }


# -- create / read / update / delete -------------------------------------------------------


def test_simulator_create_answers_the_envelope_with_a_uuid(
    sim: SalescalingSimulator, client: httpx.Client
) -> None:
    # given a valid body
    # when it is posted
    answer = client.post(PREFIX, json=DEAL)
    # then the record comes back in the envelope, with a UUID and ms/Z timestamps
    assert answer.status_code == 200
    envelope = answer.json()
    assert set(envelope) == {"statusCode", "count", "error", "data"}
    assert envelope["statusCode"] == 200 and envelope["count"] == 1
    record = envelope["data"]
    assert uuid.UUID(record["id"]).version == 4
    assert is_ms_utc(record["createdAt"]) and record["createdAt"] == record["updatedAt"]
    assert {k: record[k] for k in DEAL} == DEAL
    assert record["finalAmount"] is None and record["risk"] is None
    assert sim.records[record["id"]] == record


def test_simulator_create_requires_a_name(client: httpx.Client) -> None:
    # given a body without a name
    # when it is posted
    answer = client.post(PREFIX, json={"amount": 5})
    # then a 400 envelope names the field
    assert answer.status_code == 400
    assert answer.json()["statusCode"] == 400 and answer.json()["data"] is None
    assert "name" in answer.json()["error"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", "5000"),
        ("amount", True),
        ("closeProbability", 101),
        ("closeProbability", "7"),
        ("status", "pending"),
        ("closeDate", "next week"),
        ("description", 5),
        ("name", ""),
    ],
)
def test_simulator_create_checks_types_and_enums(
    sim: SalescalingSimulator, client: httpx.Client, field: str, value: Any
) -> None:
    # given a body with one bad field
    # when it is posted
    answer = client.post(PREFIX, json={**DEAL, field: value})
    # then a 400 envelope names the field and nothing is stored
    assert answer.status_code == 400
    assert field in answer.json()["error"]
    assert sim.records == {}


def test_simulator_statuses_are_configurable() -> None:
    # given a tenant whose statuses are custom
    custom = SalescalingSimulator(statuses=("open", "closed_won")).start()
    try:
        with httpx.Client(base_url=custom.url, headers={"x-api-key": KEY}) as http:
            # when a custom and a default status are posted
            # then only the configured one is accepted
            assert http.post(PREFIX, json={"name": "a", "status": "closed_won"}).status_code == 200
            assert http.post(PREFIX, json={"name": "b", "status": "won"}).status_code == 400
    finally:
        custom.stop()


def test_simulator_get_and_put_of_unknown_id_answer_404(client: httpx.Client) -> None:
    # given an id that does not exist
    missing = f"{PREFIX}/{uuid.uuid4()}"
    # when it is read, updated and deleted
    # then each answers the 404 envelope
    for answer in (client.get(missing), client.put(missing, json=DEAL), client.delete(missing)):
        assert answer.status_code == 404
        assert answer.json()["statusCode"] == 404 and answer.json()["data"] is None


def test_simulator_put_replaces_writable_fields_and_bumps_updated_at(
    sim: SalescalingSimulator, client: httpx.Client
) -> None:
    # given a record with every field set, including ones a person set in the UI
    record = client.post(PREFIX, json={**DEAL, "risk": "Low"}).json()["data"]
    # when it is updated with only a new name
    answer = client.put(f"{PREFIX}/{record['id']}", json={"name": "Renamed"})
    # then the omitted fields are cleared (replace), createdAt stays, updatedAt moves on
    updated = answer.json()["data"]
    assert updated["name"] == "Renamed" and updated["amount"] is None and updated["risk"] is None
    assert updated["createdAt"] == record["createdAt"]
    assert updated["updatedAt"] > record["updatedAt"]
    assert client.get(f"{PREFIX}/{record['id']}").json()["data"] == updated


def test_simulator_put_merges_when_configured() -> None:
    # given a simulator whose PUT is partial
    merging = SalescalingSimulator(put_replaces=False).start()
    try:
        with httpx.Client(base_url=merging.url, headers={"x-api-key": KEY}) as http:
            record = http.post(PREFIX, json=DEAL).json()["data"]
            # when only the amount is sent (and the description explicitly nulled)
            answer = http.put(f"{PREFIX}/{record['id']}", json={"amount": 7, "description": None})
            # then the other fields are kept
            updated = answer.json()["data"]
            assert updated["name"] == DEAL["name"] and updated["amount"] == 7
            assert updated["description"] is None
    finally:
        merging.stop()


def test_simulator_delete_answers_data_true(
    sim: SalescalingSimulator, client: httpx.Client
) -> None:
    # given a record
    vendor_id = sim.seed({"name": "Gone soon"})
    # when it is deleted
    answer = client.delete(f"{PREFIX}/{vendor_id}")
    # then the answer is data true and the record is gone
    assert answer.json() == {"statusCode": 200, "count": 1, "error": None, "data": True}
    assert vendor_id not in sim.records


# -- list ----------------------------------------------------------------------------------


def test_simulator_list_pages_filters_by_name_and_counts_the_total(
    sim: SalescalingSimulator, client: httpx.Client
) -> None:
    # given 25 records, 12 of them named "Acme ..."
    for i in range(25):
        sim.seed({"name": f"Acme {i}" if i % 2 == 0 else f"Other {i}"})
    # when the second page of 5 "acme" matches is read
    answer = client.get(PREFIX, params={"page": 2, "limit": 5, "name": "acme"}).json()
    # then count is the total matching and data holds that page
    assert answer["count"] == 13
    assert [r["name"] for r in answer["data"]] == [f"Acme {i}" for i in range(10, 20, 2)]
    last = client.get(PREFIX, params={"page": 3, "limit": 5, "name": "acme"}).json()
    assert len(last["data"]) == 3


def test_simulator_list_filters_by_contact_and_refuses_bad_paging(
    sim: SalescalingSimulator, client: httpx.Client
) -> None:
    # given two records, one linked to a contact through the API
    linked, other = sim.seed({"name": "A"}), sim.seed({"name": "B"})
    contact = str(uuid.uuid4())
    assert client.post(f"{PREFIX}/{linked}/contacts", json={"contactId": contact}).json()["data"]
    # when listing by contact
    answer = client.get(PREFIX, params={"contactId": contact}).json()
    # then only the linked record comes back; a limit over the maximum is refused
    assert [r["id"] for r in answer["data"]] == [linked] and other in sim.records
    assert client.get(PREFIX, params={"limit": 1000}).status_code == 400


# -- test hooks ----------------------------------------------------------------------------


def test_simulator_edit_bumps_updated_at(sim: SalescalingSimulator) -> None:
    # given a seeded record
    vendor_id = sim.seed({"name": "Deal", "status": "open"})
    before = dict(sim.records[vendor_id])
    # when a person edits it
    after = sim.edit(vendor_id, status="won")
    # then the change and a later updatedAt are kept
    assert after["status"] == "won" and after["updatedAt"] > before["updatedAt"]
    assert is_ms_utc(after["updatedAt"])


def test_simulator_emit_standard_sends_signed_fat_or_thin_deliveries(
    sim: SalescalingSimulator, receiver: tuple[str, list[tuple[bytes, dict[str, str]]]]
) -> None:
    # given a receiver and a Standard Webhooks secret
    url, received = receiver
    secret = "whsec_" + base64.b64encode(b"s" * 24).decode()
    sim.webhook_url, sim.webhook_secret = url, secret
    vendor_id = sim.seed({"name": "Deal"})
    # when the automation sends the record, then only its id
    assert sim.emit_standard(vendor_id, thin=False) == 202
    assert sim.emit_standard(vendor_id, thin=True) == 202
    # then both verify and carry the record, then just {"id"}
    bodies = [Webhook(secret).verify(body, headers) for body, headers in received]
    assert bodies == [sim.records[vendor_id], {"id": vendor_id}]


def test_simulator_automation_emits_after_each_change(
    receiver: tuple[str, list[tuple[bytes, dict[str, str]]]],
) -> None:
    # given a simulator wired to an automation that sends thin events
    url, received = receiver
    auto = SalescalingSimulator(automation=True).start()
    auto.webhook_url, auto.webhook_secret = url, "whsec_" + base64.b64encode(b"k" * 24).decode()
    auto.webhook_mode = "thin"
    try:
        # when a record is created over the API and then edited by a person
        with httpx.Client(base_url=auto.url, headers={"x-api-key": KEY}) as http:
            vendor_id = http.post(PREFIX, json={"name": "Deal"}).json()["data"]["id"]
        auto.edit(vendor_id, amount=5)
        # then one delivery per change arrives
        assert wait_for(lambda: len(received) == 2)
        assert [json.loads(body) for body, _ in received] == [{"id": vendor_id}] * 2
    finally:
        auto.stop()


# -- faults and quota ----------------------------------------------------------------------


def test_simulator_error_fault_answers_without_touching_state(
    sim: SalescalingSimulator, client: httpx.Client
) -> None:
    # given a 503 fault on creates
    sim.faults.add("error", status=503, methods=("POST",))
    # when a create is sent
    answer = client.post(PREFIX, json=DEAL)
    # then it fails and nothing is stored; the next create works
    assert answer.status_code == 503 and sim.records == {}
    assert client.post(PREFIX, json=DEAL).status_code == 200


def test_simulator_lost_response_commits_then_drops_the_connection(
    sim: SalescalingSimulator, client: httpx.Client
) -> None:
    # given a lost-response fault on creates
    sim.faults.add("lost_response", methods=("POST",))
    # when a create is sent
    with pytest.raises(httpx.TransportError):
        client.post(PREFIX, json=DEAL)
    # then the record was committed anyway
    assert [r["name"] for r in sim.records.values()] == [DEAL["name"]]


def test_simulator_late_commit_holds_past_the_timeout_then_commits(
    sim: SalescalingSimulator, client: httpx.Client
) -> None:
    # given a create held 1.5 s, longer than the client's 0.5 s timeout
    sim.faults.add("late_commit", delay=1.5, methods=("POST",))
    # when the client gives up waiting
    with pytest.raises(httpx.ReadTimeout):
        client.post(PREFIX, json=DEAL, timeout=0.5)
    # then the simulator still holds it, nothing is committed yet, and then it is
    assert sim.held == 1 and sim.records == {}
    deadline = time.monotonic() + 5
    while sim.held and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sim.held == 0
    assert [r["name"] for r in sim.records.values()] == [DEAL["name"]]


def test_simulator_late_commit_variant_holds_a_write_then_commits(
    sim: SalescalingSimulator, client: httpx.Client
) -> None:
    # given answer variants that hold every write 1.5 s, past the client's 0.5 s timeout
    sim.variants = Variants(
        seed=7, kinds={"late_commit"}, late_commit_delay=1.5, late_commit_share=1.0
    )
    # when the client gives up waiting on a create
    with pytest.raises(httpx.ReadTimeout):
        client.post(PREFIX, json=DEAL, timeout=0.5)
    # then it is held, and committed once the hold ends
    assert sim.held == 1 and sim.records == {}
    deadline = time.monotonic() + 5
    while sim.held and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r["name"] for r in sim.records.values()] == [DEAL["name"]]
    # and reads are never held
    assert client.get(PREFIX, timeout=0.5).status_code == 200


def test_simulator_quota_answers_429_envelope_with_retry_after() -> None:
    # given a quota of two requests a minute
    limited = SalescalingSimulator(rate_limit=(2, 60.0)).start()
    try:
        with httpx.Client(base_url=limited.url, headers={"x-api-key": KEY}) as http:
            # when three requests are made
            answers = [http.get(PREFIX) for _ in range(3)]
        # then the third is refused with the envelope and a Retry-After
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[2].json()["statusCode"] == 429 and answers[2].json()["data"] is None
        assert int(answers[2].headers["Retry-After"]) >= 1
    finally:
        limited.stop()
