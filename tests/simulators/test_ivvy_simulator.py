"""The iVvy simulator enforces iVvy's signing, fields and shapes, and sends SNS notifications."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from flask import Flask, request
from werkzeug.serving import make_server

from web.sns import SnsVerifier
from worker.sandbox.simulators import tls
from worker.sandbox.simulators.ivvy import IvvySimulator
from worker.vendors.ivvy import IvvyAuth, content_md5, ivvy_headers, signature, string_to_sign

WRITE = "/api/1.0/venue?action=addOrUpdateOpportunity"
LIST = "/api/1.0/crm?action=getOpportunityList"
NEW = {"venueId": 107, "name": "Gala", "typeId": 18, "sourceId": 25, "stageId": 69}


class Receiver:
    """A webhook receiver on loopback that keeps what it is sent."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        app = Flask("receiver")
        app.add_url_rule("/hook", "hook", self._hook, methods=["POST"])
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def _hook(self) -> tuple[str, int]:
        self.received.append((dict(request.headers), request.get_data()))
        return "", 204

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return [json.loads(body) for _, body in self.received]


@pytest.fixture(scope="module")
def started() -> Iterator[IvvySimulator]:
    simulator = IvvySimulator().start()
    yield simulator
    simulator.stop()


@pytest.fixture
def sim(started: IvvySimulator) -> IvvySimulator:
    started.reset()
    started.auto_emit, started.webhook_url, started.topic.confirmed = False, None, False
    return started


@pytest.fixture
def client(sim: IvvySimulator) -> Iterator[httpx.Client]:
    auth = IvvyAuth("ivvy-test-key", "ivvy-test-secret")
    with httpx.Client(base_url=sim.url, auth=auth, timeout=5.0) as signed:
        yield signed


@pytest.fixture
def receiver(sim: IvvySimulator) -> Iterator[Receiver]:
    hook = Receiver()
    sim.webhook_url = hook.url
    yield hook
    hook.server.shutdown()


def post(client: httpx.Client, path: str, body: Any) -> httpx.Response:
    return client.post(path, content=json.dumps(body).encode())


def hand_signed(
    path: str,
    body: bytes,
    *,
    secret: str = "ivvy-test-secret",
    md5_of: bytes | None = None,
    when: datetime | None = None,
) -> dict[str, str]:
    """Headers signed by hand, so tests can get one part wrong."""
    md5 = content_md5(body if md5_of is None else md5_of)
    date = (when or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    headers = {"Content-Type": "application/json", "Content-MD5": md5, "IVVY-Date": date}
    text = string_to_sign(
        method="POST",
        content_md5=md5,
        content_type="application/json",
        date="",
        path_and_query=path,
        ivvy_header_text=ivvy_headers(headers),
    )
    return {**headers, "X-Api-Authorization": f"IWS ivvy-test-key:{signature(secret, text)}"}


# -- signing -------------------------------------------------------------------------------
def test_simulator_accepts_a_correctly_signed_request(client: httpx.Client) -> None:
    answer = post(client, "/api/1.0/test?action=ping", {})
    assert answer.status_code == 200 and answer.json() == {"success": True}


def test_simulator_refuses_an_unsigned_request_with_ivvys_error(sim: IvvySimulator) -> None:
    # given no X-Api-Authorization / when posted
    answer = httpx.post(sim.url + LIST, json={})
    # then 401 in iVvy's error shape
    assert answer.status_code == 401
    assert set(answer.json()) == {"errorCode", "message", "specificCode", "additionalMessages"}
    assert answer.json()["errorCode"] == 401


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"secret": "wrong"}, 23002),
        ({"md5_of": b"other"}, 23003),
        ({"when": datetime.now(UTC) - timedelta(minutes=6)}, 23005),
    ],
)
def test_simulator_refuses_a_bad_signature_md5_or_stale_date(
    sim: IvvySimulator, kwargs: dict[str, Any], code: int
) -> None:
    # given headers with one part wrong
    body = b"{}"
    answer = httpx.post(sim.url + LIST, content=body, headers=hand_signed(LIST, body, **kwargs))
    # then 401 with that specific code (stale: the documented answer)
    assert answer.status_code == 401 and answer.json()["specificCode"] == code
    if code == 23005:
        assert answer.json()["message"] == "Request is stale"


def test_simulator_accepts_the_date_header_instead_of_ivvy_date(sim: IvvySimulator) -> None:
    # given a request signed with Date (which is then part of the signed string)
    body, md5 = b"{}", content_md5(b"{}")
    date = datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S UTC")
    text = string_to_sign(
        method="POST",
        content_md5=md5,
        content_type="application/json",
        date=date,
        path_and_query=LIST,
        ivvy_header_text="",
    )
    headers = {
        "Content-Type": "application/json",
        "Content-MD5": md5,
        "Date": date,
        "X-Api-Authorization": f"IWS ivvy-test-key:{signature('ivvy-test-secret', text)}",
    }
    # then it is accepted
    assert httpx.post(sim.url + LIST, content=body, headers=headers).status_code == 200


def test_simulator_refuses_other_methods_and_content_types(
    sim: IvvySimulator, client: httpx.Client
) -> None:
    assert client.get(LIST).status_code == 405
    headers = {**hand_signed(LIST, b"{}"), "Content-Type": "text/plain"}
    assert httpx.post(sim.url + LIST, content=b"{}", headers=headers).status_code == 406


# -- addOrUpdateOpportunity ----------------------------------------------------------------
def test_simulator_creates_with_ivvys_answer_and_record_shape(
    sim: IvvySimulator, client: httpx.Client
) -> None:
    # given a create body / when posted
    answer = post(client, WRITE, {**NEW, "ownerUserId": 12, "closedDate": "2025-02-01"})
    # then {"success": true, "id": <int>} and a getOpportunityList-shaped record
    assert answer.status_code == 200
    assert answer.json()["success"] is True and isinstance(answer.json()["id"], int)
    record = sim.records[str(answer.json()["id"])]
    assert (
        record["stageName"] == "New Enquiry" and record["ownerUser"]["email"] == "alice@example.com"
    )
    assert datetime.strptime(record["modifiedDate"], "%Y-%m-%d %H:%M:%S")
    assert record["closedDate"] == "2025-02-01" and record["externalUrls"] == []


@pytest.mark.parametrize("field", ["name", "typeId", "sourceId", "stageId", "venueId"])
def test_simulator_requires_the_create_fields(client: httpx.Client, field: str) -> None:
    # given a create without one required field / when posted
    answer = post(client, WRITE, {k: v for k, v in NEW.items() if k != field})
    # then 400, code 23017, naming the field
    assert answer.status_code == 400
    assert answer.json()["specificCode"] == 23017 and field in answer.json()["message"]


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"venueId": 999}, 24224),
        ({"stageId": 5}, 24224),
        ({"ownerUserId": 77}, 24224),
        ({"typeId": "eighteen"}, 23016),
        ({"stageId": True}, 23016),
        ({"closedDate": "05/05/2017"}, 23016),
        ({"name": 5}, 23016),
        ({"externalUrls": [{"ref": str(i)} for i in range(4)]}, 23016),
        ({"externalUrls": [{"url": "x"}]}, 23016),
        ({"contact": "Ada"}, 23016),
        ({"company": {"phone": "1"}}, 23016),
    ],
)
def test_simulator_refuses_invalid_values(
    sim: IvvySimulator, client: httpx.Client, change: dict[str, Any], code: int
) -> None:
    answer = post(client, WRITE, {**NEW, **change})
    assert answer.status_code == 400 and answer.json()["specificCode"] == code
    assert sim.records == {}


def test_simulator_takes_digit_string_ids_like_the_doc_example(client: httpx.Client) -> None:
    # given the vendor page's own example, with ids as strings
    answer = post(
        client,
        WRITE,
        {
            "venueId": "107",
            "name": "Lead By API",
            "typeId": "18",
            "sourceId": "25",
            "stageId": "69",
            "closedDate": "2017-05-05",
        },
    )
    assert answer.status_code == 200


def test_simulator_answers_empty_and_unknown_id_updates(client: httpx.Client) -> None:
    assert post(client, WRITE, {}).json()["specificCode"] == 24221
    missing = post(client, WRITE, {"id": 4242, "venueId": 107, "name": "x"})
    assert missing.status_code == 400 and missing.json()["specificCode"] == 24222


def test_simulator_update_keeps_absent_keys_and_clears_nulls(
    sim: IvvySimulator, client: httpx.Client
) -> None:
    # given a record with a description, owner and date
    created = post(
        client, WRITE, {**NEW, "description": "d", "ownerUserId": 12, "closedDate": "2025-01-01"}
    ).json()["id"]
    # when updated with a new name and a null owner
    answer = post(
        client, WRITE, {"id": created, "venueId": 107, "name": "New", "ownerUserId": None}
    )
    # then the same id; name changed, owner cleared, description and date kept
    assert answer.json() == {"success": True, "id": created}
    record = sim.records[str(created)]
    assert (record["name"], record["ownerUser"], record["description"]) == ("New", None, "d")
    assert record["closedDate"] == "2025-01-01" and len(sim.records) == 1


def test_simulator_reuses_a_contact_when_asked_to_update_it(
    sim: IvvySimulator, client: httpx.Client
) -> None:
    contact = {"firstName": "Ada", "lastName": "L", "email": "a@x.com", "updateIfExists": True}
    first = post(client, WRITE, {**NEW, "contact": contact}).json()["id"]
    second = post(client, WRITE, {**NEW, "contact": {**contact, "phone": "+61"}}).json()["id"]
    one, two = sim.records[str(first)]["contact"], sim.records[str(second)]["contact"]
    assert one["id"] == two["id"] and two["phone"] == "+61"


# -- reads ---------------------------------------------------------------------------------
def test_simulator_lists_pages_with_ivvys_collection_meta(
    sim: IvvySimulator, client: httpx.Client
) -> None:
    # given five records / when the second page of two is asked for
    for n in range(5):
        sim.seed({"name": f"Deal {n}"})
    answer = post(client, LIST, {"venueIds": [107], "start": 2, "perPage": 2}).json()
    # then meta describes the page and results hold records 3 and 4
    assert answer["meta"] == {"totalResults": 5, "start": 2, "perPage": 2, "count": 2}
    assert [r["name"] for r in answer["results"]] == ["Deal 2", "Deal 3"]


def test_simulator_caps_pages_at_100(sim: IvvySimulator, client: httpx.Client) -> None:
    for n in range(105):
        sim.seed({"name": f"D{n}"})
    answer = post(client, LIST, {"perPage": 500}).json()
    assert answer["meta"]["count"] == 100 and answer["meta"]["totalResults"] == 105


def test_simulator_filters_by_equality_contains_and_greater_than(
    sim: IvvySimulator, client: httpx.Client
) -> None:
    # given three records of different names and ages
    old = sim.seed({"name": "Winter Gala", "createdDate": "2020-01-01 00:00:00"})
    sim.seed({"name": "Summer Gala"})
    wedding = sim.seed({"name": "Wedding"})

    def names(filter_: dict[str, Any]) -> list[str]:
        return [r["name"] for r in post(client, LIST, {"filter": filter_}).json()["results"]]

    # then each filter selects what it says
    assert names({"id": int(wedding)}) == ["Wedding"]
    assert names({"name": "summer gala"}) == ["Summer Gala"]
    assert names({"name__CONTAINS": "gala"}) == ["Winter Gala", "Summer Gala"]
    assert names({"createdDate__GREATERTHAN": "2021-01-01 00:00:00"}) == ["Summer Gala", "Wedding"]
    assert names({"id__GREATERTHAN": int(old)}) == ["Summer Gala", "Wedding"]
    assert names({"description": "ISNULL", "name__NOT": "Wedding"}) == [
        "Winter Gala",
        "Summer Gala",
    ]


def test_simulator_refuses_a_filter_on_an_unknown_key(client: httpx.Client) -> None:
    answer = post(client, LIST, {"filter": {"colour": "red"}})
    assert answer.status_code == 400 and answer.json()["specificCode"] == 23016


def test_simulator_lists_stages_types_and_sources(client: httpx.Client) -> None:
    stages = post(client, "/api/1.0/crm?action=getLeadStageList", {}).json()["results"]
    assert {(s["id"], s["name"]) for s in stages} >= {(71, "Won"), (72, "Lost")}
    assert post(client, "/api/1.0/crm?action=getLeadTypeList", {}).json()["results"][0]["id"] == 18
    sources = post(client, "/api/1.0/crm?action=getLeadSourceList", {}).json()["results"]
    assert sources[0]["id"] == 25


def test_simulator_answers_an_unknown_action(client: httpx.Client) -> None:
    assert post(client, "/api/1.0/crm?action=getNothing", {}).status_code == 404


# -- faults, quota, person edits -----------------------------------------------------------
def test_simulator_fault_error_answers_without_committing(
    sim: IvvySimulator, client: httpx.Client
) -> None:
    sim.faults.add("error", status=503, path_contains="addOrUpdateOpportunity")
    assert post(client, WRITE, NEW).status_code == 503
    assert sim.records == {}


def test_simulator_fault_lost_response_commits_then_drops(
    sim: IvvySimulator, client: httpx.Client
) -> None:
    sim.faults.add("lost_response", path_contains="addOrUpdateOpportunity")
    with pytest.raises(httpx.TransportError):
        post(client, WRITE, NEW)
    assert len(sim.records) == 1


def test_simulator_quota_answers_429_in_ivvys_shape() -> None:
    sim = IvvySimulator(rate_limit=(1, 60.0)).start()
    try:
        with httpx.Client(
            base_url=sim.url, auth=IvvyAuth("ivvy-test-key", "ivvy-test-secret")
        ) as client:
            assert post(client, LIST, {}).status_code == 200
            answer = post(client, LIST, {})
        assert answer.status_code == 429 and answer.json()["errorCode"] == 429
        assert int(answer.headers["Retry-After"]) >= 1
    finally:
        sim.stop()


def test_simulator_edit_moves_modified_date_on(sim: IvvySimulator) -> None:
    # given a record last modified now / when a person edits it twice at once
    vendor_id = sim.seed({"name": "Deal"})
    first = sim.edit(vendor_id, stageId=71)
    second = sim.edit(vendor_id, name="Deal!")
    # then each edit is later than the one before, and the stage name follows the id
    assert first["stageName"] == "Won"
    assert second["modifiedDate"] > first["modifiedDate"] > sim.records[vendor_id]["createdDate"]


def test_simulator_seed_can_backdate(sim: IvvySimulator) -> None:
    vendor_id = sim.seed(
        {"name": "Old", "createdDate": "2020-01-01 00:00:00", "modifiedDate": "2020-01-02 00:00:00"}
    )
    assert sim.records[vendor_id]["modifiedDate"] == "2020-01-02 00:00:00"


# -- notifications -------------------------------------------------------------------------
def test_simulator_emit_sends_a_verifiable_sns_notification(
    sim: IvvySimulator, receiver: Receiver
) -> None:
    # given a record / when emitted
    vendor_id = sim.seed({"name": "Deal"})
    assert sim.emit(vendor_id, "OpportunityUpdated", signature_version=2) == 204
    headers, body = receiver.received[0]
    message = json.loads(body)
    # then it is an SNS Notification (sent as text/plain) that verifies, carrying the record
    assert headers["X-Amz-Sns-Message-Type"] == "Notification"
    assert headers["Content-Type"].startswith("text/plain")
    verifier = SnsVerifier(
        topic_arn=sim.topic_arn, cert_hosts=("127.0.0.1",), ca_bundle=tls.ca_bundle()
    )
    verifier.verify(message)
    verifier.close()
    inner = json.loads(message["Message"])
    assert inner["Subject"] == "OpportunityUpdated" and inner["SourceType"] == 0
    assert json.loads(inner["Body"])["data"] == sim.records[vendor_id]


def test_simulator_auto_emit_reports_api_writes_edits_and_removals(
    sim: IvvySimulator, client: httpx.Client, receiver: Receiver
) -> None:
    # given auto_emit / when the API creates, a person edits, then removes
    sim.auto_emit = True
    created = str(post(client, WRITE, NEW).json()["id"])
    receiver.wait_for(1)
    sim.edit(created, name="Renamed")
    receiver.wait_for(2)
    sim.remove(created)
    messages = receiver.wait_for(3)
    inner = [json.loads(m["Message"]) for m in messages]
    # then Added by our key (SourceType 1), Updated by a person with previousData, Deleted
    assert [m["Subject"] for m in inner] == [
        "OpportunityAdded",
        "OpportunityUpdated",
        "OpportunityDeleted",
    ]
    assert (inner[0]["SourceType"], inner[0]["SourceInfo"]) == (1, "ivvy-test-key")
    update = json.loads(inner[1]["Body"])
    assert (update["data"]["name"], update["previousData"]["name"]) == ("Renamed", "Gala")
    assert inner[1]["SourceType"] == 0
    assert json.loads(inner[2]["Body"]) == {"venueId": 107, "opportunityId": int(created)}


def test_simulator_subscription_confirmation_round_trip(
    sim: IvvySimulator, receiver: Receiver
) -> None:
    # given a confirmation sent to the receiver
    assert sim.send_subscription_confirmation() == 204
    message = json.loads(receiver.received[0][1])
    # when the SubscribeURL is visited / then the subscription is confirmed
    assert message["Type"] == "SubscriptionConfirmation" and not sim.confirmed
    assert httpx.get(message["SubscribeURL"], verify=tls.client_context()).status_code == 200
    assert sim.confirmed
    assert httpx.get(f"{sim.url}/sns/confirm?token=wrong").status_code == 400


def test_simulator_emit_standard_sends_the_record_or_its_id(
    sim: IvvySimulator, receiver: Receiver
) -> None:
    sim.webhook_secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    vendor_id = sim.seed({"name": "Deal"})
    sim.emit_standard(vendor_id)
    sim.emit_standard(vendor_id, thin=True)
    headers, _ = receiver.received[0]
    bodies = receiver.wait_for(2)
    assert "Webhook-Signature" in headers
    assert bodies == [sim.records[vendor_id], {"id": int(vendor_id)}]


def test_simulator_seed_treats_a_nameless_company_as_none(sim: IvvySimulator) -> None:
    vendor_id = sim.seed({"name": "Deal", "company": {"businessName": None}})
    assert sim.records[vendor_id]["company"] is None
