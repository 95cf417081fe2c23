"""The iCloudReady simulator enforces sign-in, Bearer tokens, body types and its answer shapes."""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from flask import Flask, request
from standardwebhooks import Webhook
from werkzeug.serving import make_server

from worker.sandbox.simulators.icloudready import IcloudreadySimulator

EMAIL, PASSWORD = "ops@example.com", "icr-test-password"
OPPS = "/api/v2/opportunities"
SECRET = "whsec_" + base64.b64encode(b"icloudready-automation-secret!!!").decode()


@pytest.fixture(scope="module")
def server() -> Iterator[IcloudreadySimulator]:
    sim = IcloudreadySimulator().start()
    yield sim
    sim.stop()


@pytest.fixture
def sim(server: IcloudreadySimulator) -> IcloudreadySimulator:
    """The module's simulator, emptied (stopping a server costs half a second)."""
    server.reset()
    server.webhook_url = server.webhook_secret = None
    return server


@pytest.fixture
def client(sim: IcloudreadySimulator) -> Iterator[httpx.Client]:
    """A client signed in to ``sim``."""
    with httpx.Client(base_url=sim.url, timeout=5.0) as client:
        answer = client.post("/api/v2/signin", json={"email": EMAIL, "password": PASSWORD})
        client.headers["Authorization"] = f"Bearer {answer.json()['token']}"
        yield client


def _create(client: httpx.Client, name: str = "Villa lease", **fields: Any) -> dict[str, Any]:
    answer = client.post(OPPS, json={"opportunityInformation": {"name": name}, **fields})
    assert answer.status_code == 201, answer.text
    return answer.json()["data"]


# -- auth ------------------------------------------------------------------------------------
@pytest.mark.parametrize("token_key", ["token", "accessToken", "access_token"])
def test_signin_answers_a_token_under_the_configured_key(token_key: str) -> None:
    # given a simulator naming its token with one of the tolerated keys
    sim = IcloudreadySimulator(token_key=token_key).start()
    try:
        # when the right credentials sign in
        answer = httpx.post(f"{sim.url}/api/v2/signin", json={"email": EMAIL, "password": PASSWORD})
        # then the token is under that key and opens the API
        token = answer.json()[token_key]
        listed = httpx.get(f"{sim.url}{OPPS}", headers={"Authorization": f"Bearer {token}"})
        assert (answer.status_code, listed.status_code) == (200, 200)
    finally:
        sim.stop()


@pytest.mark.parametrize(
    "credentials",
    [{"email": EMAIL, "password": "wrong"}, {"email": "x@example.com", "password": PASSWORD}, {}],
)
def test_signin_refuses_wrong_credentials(
    sim: IcloudreadySimulator, credentials: dict[str, str]
) -> None:
    # given wrong or missing credentials
    issued = set(sim.tokens)
    # when they sign in
    answer = httpx.post(f"{sim.url}/api/v2/signin", json=credentials)
    # then the answer is 401 and no token is issued
    assert answer.status_code == 401
    assert "token" not in answer.json()
    assert sim.tokens == issued


@pytest.mark.parametrize("header", [None, "Bearer not-a-token", "Basic b3BzOnB3"])
def test_routes_need_a_valid_bearer_token(sim: IcloudreadySimulator, header: str | None) -> None:
    # given no header, an unknown token, or another scheme
    headers = {"Authorization": header} if header else {}
    # when the list is read
    answer = httpx.get(f"{sim.url}{OPPS}", headers=headers)
    # then the vendor's 401 answer comes back
    assert (answer.status_code, answer.json()) == (401, {"message": "Unauthorized"})


def test_expire_tokens_invalidates_issued_tokens(
    sim: IcloudreadySimulator, client: httpx.Client
) -> None:
    # given a working token
    assert client.get(OPPS).status_code == 200
    # when the simulator expires its tokens
    sim.expire_tokens()
    # then the same token is refused
    assert client.get(OPPS).status_code == 401


# -- shapes ----------------------------------------------------------------------------------
def test_create_answers_the_record_under_data_with_an_object_id(
    sim: IcloudreadySimulator, client: httpx.Client
) -> None:
    # given a signed-in client
    # when an opportunity is created with an undocumented key
    record = _create(client, revenue=1000, probability=0.75, closeDate="2023-06-30", extra=1)
    # then it gets a 24-hex _id and timestamps, the unknown key is dropped, and it is stored
    assert re.fullmatch(r"[0-9a-f]{24}", record["_id"])
    assert record["createdAt"] == record["updatedAt"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["createdAt"])
    assert "extra" not in record
    assert sim.records[record["_id"]] == record


def test_create_answers_the_bare_record_without_wrap_data() -> None:
    # given a simulator that answers bare records and arrays
    sim = IcloudreadySimulator(wrap_data=False).start()
    try:
        with httpx.Client(base_url=sim.url) as client:
            token = client.post("/api/v2/signin", json={"email": EMAIL, "password": PASSWORD})
            client.headers["Authorization"] = f"Bearer {token.json()['token']}"
            # when one opportunity is created and the list is read
            created = client.post(OPPS, json={"opportunityInformation": {"name": "Bare"}})
            listed = client.get(OPPS)
        # then the record and the list come unwrapped
        assert created.json()["opportunityInformation"] == {"name": "Bare"}
        assert listed.json() == [created.json()]
    finally:
        sim.stop()


def test_read_answers_the_record_and_404_when_missing(client: httpx.Client) -> None:
    # given one record
    record = _create(client)
    # when it and a missing id are read
    found = client.get(f"{OPPS}/{record['_id']}")
    missing = client.get(f"{OPPS}/{'0' * 24}")
    malformed = client.get(f"{OPPS}/nope")
    # then the record comes bare, the missing one is 404, a malformed id is 400
    assert found.json() == record
    assert (missing.status_code, malformed.status_code) == (404, 400)


def test_patch_changes_only_given_keys_and_null_clears(
    sim: IcloudreadySimulator, client: httpx.Client
) -> None:
    # given a record with revenue, probability and a description
    record = _create(client, revenue=10, probability=0.5, opportunityDescription="d")
    # when it is patched with a new revenue and a null description
    answer = client.patch(
        f"{OPPS}/{record['_id']}", json={"revenue": 20, "opportunityDescription": None}
    )
    # then only those change, and updatedAt moves on
    patched = answer.json()["data"]
    assert (patched["revenue"], patched["probability"]) == (20, 0.5)
    assert patched["opportunityDescription"] is None
    assert patched["updatedAt"] > record["updatedAt"]
    assert patched["createdAt"] == record["createdAt"]


def test_list_is_newest_first_filtered_and_paged(
    sim: IcloudreadySimulator, client: httpx.Client
) -> None:
    # given five records, the first one edited last
    ids = [_create(client, name=f"Deal {n}")["_id"] for n in range(5)]
    ids.append(_create(client, name="Other")["_id"])
    sim.edit(ids[0], revenue=5)
    # when the list is read in pages of two, searched by name
    first = client.get(OPPS, params={"q": "deal", "limit": 2, "page": 1}).json()
    third = client.get(OPPS, params={"q": "deal", "limit": 2, "page": 3}).json()
    oldest = client.get(OPPS, params={"sortBy": "createdAt", "order": "asc", "limit": 1}).json()
    # then the most recently updated comes first, q filters, and pages follow
    assert first["total"] == 5
    assert [r["_id"] for r in first["data"]] == [ids[0], ids[4]]
    assert [r["_id"] for r in third["data"]] == [ids[1]]
    assert [r["_id"] for r in oldest["data"]] == [ids[0]]


def test_delete_is_at_the_documented_path(sim: IcloudreadySimulator, client: httpx.Client) -> None:
    # given a record
    record = _create(client)
    # when it is deleted at /opportunities/deleted/:id, twice
    first = client.delete(f"{OPPS}/deleted/{record['_id']}")
    second = client.delete(f"{OPPS}/deleted/{record['_id']}")
    # then it is gone (kept in sim.deleted), and the second delete is 404
    assert (first.status_code, second.status_code) == (200, 404)
    assert record["_id"] not in sim.records
    assert client.get(f"{OPPS}/{record['_id']}").status_code == 404
    assert sim.deleted[record["_id"]] == record


# -- validation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "opportunityInformation.name"),
        ({"opportunityInformation": {}}, "opportunityInformation.name"),
        ({"opportunityInformation": "Villa"}, "opportunityInformation"),
        ({"revenue": "1000"}, "revenue"),
        ({"revenue": -1}, "revenue"),
        ({"probability": 75}, "probability"),
        ({"probability": True}, "probability"),
        ({"closeDate": "30/06/2023"}, "closeDate"),
        ({"closeDate": "2023-02-30"}, "closeDate"),
        ({"status": 1}, "status"),
        ({"notes": "x"}, "notes"),
    ],
)
def test_create_refuses_bad_fields_naming_them(
    sim: IcloudreadySimulator, client: httpx.Client, body: dict[str, Any], field: str
) -> None:
    # given a create body with one bad or missing field (a name unless it is the subject)
    if "opportunityInformation" not in body and field != "opportunityInformation.name":
        body = {"opportunityInformation": {"name": "Villa"}, **body}
    # when it is posted
    answer = client.post(OPPS, json=body)
    # then it is refused with 400 naming the field, and nothing is stored
    assert answer.status_code == 400
    assert field in answer.json()["errors"]
    assert field in answer.json()["message"]
    assert sim.records == {}


def test_patch_refuses_bad_fields_and_keeps_the_record(
    sim: IcloudreadySimulator, client: httpx.Client
) -> None:
    # given a record
    record = _create(client, revenue=10)
    # when a patch sends a probability out of range
    answer = client.patch(f"{OPPS}/{record['_id']}", json={"revenue": 20, "probability": 2})
    # then it is refused and the record is unchanged
    assert (answer.status_code, list(answer.json()["errors"])) == (400, ["probability"])
    assert sim.records[record["_id"]]["revenue"] == 10


# -- faults and quota ------------------------------------------------------------------------
def test_error_fault_answers_without_touching_state(
    sim: IcloudreadySimulator, client: httpx.Client
) -> None:
    # given a 503 fault on creates
    sim.faults.add("error", status=503, methods=("POST",), path_contains=OPPS)
    # when an opportunity is created
    answer = client.post(OPPS, json={"opportunityInformation": {"name": "x"}})
    # then the fault answers and nothing is stored
    assert answer.status_code == 503
    assert sim.records == {}


def test_lost_response_commits_then_drops_the_connection(
    sim: IcloudreadySimulator, client: httpx.Client
) -> None:
    # given a lost-response fault on creates
    sim.faults.add("lost_response", methods=("POST",), path_contains=OPPS)
    # when an opportunity is created
    with pytest.raises(httpx.TransportError):
        client.post(OPPS, json={"opportunityInformation": {"name": "Committed"}})
    # then the client saw no answer but the record exists
    assert [r["opportunityInformation"]["name"] for r in sim.records.values()] == ["Committed"]


def test_quota_answers_429_with_retry_after() -> None:
    # given a simulator allowing two requests a minute
    sim = IcloudreadySimulator(rate_limit=(2, 60)).start()
    try:
        with httpx.Client(base_url=sim.url) as fresh:
            token = fresh.post("/api/v2/signin", json={"email": EMAIL, "password": PASSWORD})
            headers = {"Authorization": f"Bearer {token.json()['token']}"}
            # when three requests are made
            answers = [fresh.get(OPPS, headers=headers) for _ in range(2)]
        # then the third is 429 with a Retry-After
        assert [a.status_code for a in answers] == [200, 429]
        assert int(answers[1].headers["Retry-After"]) > 0
        assert sim.rate_limited == 1
    finally:
        sim.stop()


# -- test hooks ------------------------------------------------------------------------------
def test_seed_and_edit_bump_updated_at(sim: IcloudreadySimulator) -> None:
    # given a seeded record
    vendor_id = sim.seed({"opportunityInformation": {"name": "Seeded"}, "revenue": 1})
    before = dict(sim.records[vendor_id])
    # when a person renames it in the UI
    after = sim.edit(vendor_id, name="Renamed", revenue=2)
    # then the name and revenue change and updatedAt moves on
    assert re.fullmatch(r"[0-9a-f]{24}", vendor_id)
    assert after["opportunityInformation"] == {"name": "Renamed"}
    assert after["revenue"] == 2
    assert after["updatedAt"] > before["updatedAt"]


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """A loopback endpoint recording what it is sent."""
    got: list[tuple[dict[str, str], bytes]] = []
    app = Flask("receiver")

    @app.post("/hook")
    def hook() -> tuple[str, int]:
        got.append((dict(request.headers), request.get_data()))
        return "", 202

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", got
    server.shutdown()


@pytest.mark.parametrize("thin", [False, True])
def test_emit_standard_sends_a_signed_record_or_id(
    sim: IcloudreadySimulator,
    receiver: tuple[str, list[tuple[dict[str, str], bytes]]],
    thin: bool,
) -> None:
    # given a record and an automation wired to a receiver with a Standard Webhooks secret
    url, got = receiver
    sim.webhook_url, sim.webhook_secret = url, SECRET
    vendor_id = sim.seed({"opportunityInformation": {"name": "Hooked"}})
    # when the automation fires
    status = sim.emit_standard(vendor_id, thin=thin)
    # then one delivery arrives, signed, carrying the record or only its id
    assert status == 202
    headers, body = got[0]
    payload = Webhook(SECRET).verify(body, {k.lower(): v for k, v in headers.items()})
    assert payload == ({"id": vendor_id} if thin else sim.records[vendor_id])


def test_emit_standard_after_delete_flags_the_record(
    sim: IcloudreadySimulator,
    client: httpx.Client,
    receiver: tuple[str, list[tuple[dict[str, str], bytes]]],
) -> None:
    # given a record deleted through the API
    url, got = receiver
    sim.webhook_url, sim.webhook_secret = url, SECRET
    record = _create(client)
    client.delete(f"{OPPS}/deleted/{record['_id']}")
    # when the automation reports it
    sim.emit_standard(record["_id"])
    # then the last record goes out marked deleted
    payload = Webhook(SECRET).verify(got[0][1], {k.lower(): v for k, v in got[0][0].items()})
    assert payload == {**record, "isDeleted": True}
