"""Leadway translation: records and webhooks in, upsert bodies out, and the round trip."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from marshmallow import ValidationError

from schemas import leadway
from schemas.opportunity import Contact, Opportunity, Status
from tests.strategies import EXAMPLE_MAPPING, opportunities
from worker.sandbox.simulators.leadway import API_VERSION, LeadwaySimulator

M = EXAMPLE_MAPPING
NEW, PROPOSAL, WON, LOST = (s.ids["leadway"] for s in M.stages)
ALICE = "bNl8QNGXhIQJLv8eeASQ"


def a_record(**changes: Any) -> dict[str, Any]:
    """An opportunity as ``GET /opportunities/{id}`` returns it (VENDORS.md §2.4)."""
    record: dict[str, Any] = {
        "id": "wWhVuzqpRuOA1ZVWi4FC",
        "name": "Harbour expansion",
        "monetaryValue": 1250.5,
        "pipelineId": "VDm7RPYC2GLUvdpKmBfC",
        "pipelineStageId": PROPOSAL,
        "assignedTo": ALICE,
        "status": "open",
        "source": "api",
        "contactId": "cJAWDskpkJHbRbhAT7bs",
        "locationId": "ve9EPM428h8vShlRW1KT",
        "contact": {
            "id": "cJAWDskpkJHbRbhAT7bs",
            "name": "Dana Reyes",
            "companyName": "Harbour Co",
            "email": "dana@harbour.example.com",
            "phone": "+61400000001",
            "tags": ["vip"],
        },
        "customFields": [],
        "createdAt": "2025-01-28T14:35:00.123Z",
        "updatedAt": "2025-01-29T09:00:00.000Z",
        "lastStatusChangeAt": "2025-01-28T14:35:00.123Z",
    }
    record.update(changes)
    return record


def an_opportunity(**changes: Any) -> Opportunity:
    opp = Opportunity(
        name="Harbour expansion",
        amount=Decimal("1250.50"),
        status=Status.OPEN,
        stage="proposal",
        owner="alice@example.com",
        contact=Contact(name="Dana Reyes", email="dana@harbour.example.com", phone=None),
        company="Harbour Co",
    )
    return opp.replace(**changes)


# -- inbound -----------------------------------------------------------------------------
def test_to_canonical_reads_every_synced_field() -> None:
    # given a full record
    # when it is translated
    opp = leadway.to_canonical(a_record(), M)
    # then every synced field and the vendor's timestamps are read
    assert opp == Opportunity(
        name="Harbour expansion",
        amount=Decimal("1250.50"),
        status=Status.OPEN,
        stage="proposal",
        owner="alice@example.com",
        contact=Contact(name="Dana Reyes", email="dana@harbour.example.com", phone="+61400000001"),
        company="Harbour Co",
        created_at=datetime(2025, 1, 28, 14, 35, 0, 123000, tzinfo=UTC),
        updated_at=datetime(2025, 1, 29, 9, 0, tzinfo=UTC),
    )


def test_to_canonical_tolerates_missing_fields() -> None:
    # given a record holding only its id
    # when it is translated
    opp = leadway.to_canonical({"id": "abc", "somethingNew": {"x": 1}}, M)
    # then everything is unknown, nothing fails
    assert opp == Opportunity()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"monetaryValue": "lots"}, "monetaryValue"),
        ({"createdAt": "yesterday"}, "createdAt"),
        ({"name": 42}, "name"),
        ({"contact": "dana"}, "contact"),
        ({"id": None}, "id"),
    ],
)
def test_to_canonical_rejects_wrong_types_naming_the_field(
    changes: dict[str, Any], field: str
) -> None:
    # given a record with one bad field
    # when it is translated
    with pytest.raises(ValidationError) as caught:
        leadway.to_canonical(a_record(**changes), M)
    # then the error names that field
    assert field in caught.value.messages


def test_to_canonical_without_id_is_invalid() -> None:
    # given a record without an id
    record = a_record()
    del record["id"]
    # when / then
    with pytest.raises(ValidationError) as caught:
        leadway.to_canonical(record, M)
    assert "id" in caught.value.messages


def test_to_canonical_drops_a_stage_that_disagrees_with_the_status() -> None:
    # given a deal marked won that still sits on the "proposal" (open) stage
    # when it is translated
    opp = leadway.to_canonical(a_record(status="won"), M)
    # then the status is kept and the contradicting stage is not
    assert (opp.status, opp.stage) == (Status.WON, None)


def test_to_canonical_leaves_unmapped_stage_and_owner_unknown() -> None:
    # given a stage and a user the mapping does not know
    record = a_record(pipelineStageId="11111111-2222-3333-4444-555555555555", assignedTo="zz")
    # when it is translated
    opp = leadway.to_canonical(record, M)
    # then both read as unknown, and the stage id is reported for the mapping
    assert (opp.stage, opp.owner) == (None, None)
    assert "stage" in opp.unknown
    assert opp.unmapped == (("pipelineStageId", "11111111-2222-3333-4444-555555555555"),)


def test_to_canonical_reads_a_placeholder_contact_as_no_contact() -> None:
    # given a contact with neither email nor phone (a placeholder named after the company)
    contact = {"id": "c1", "name": "Harbour Co", "companyName": "Harbour Co", "email": None}
    # when it is translated
    opp = leadway.to_canonical(a_record(contact=contact), M)
    # then there is no contact, but the company is read
    assert (opp.contact, opp.company) == (None, "Harbour Co")


def test_record_id_needs_an_id() -> None:
    # given / when / then
    assert leadway.record_id(a_record()) == "wWhVuzqpRuOA1ZVWi4FC"
    with pytest.raises(ValidationError):
        leadway.record_id({"name": "x"})


# -- outbound ----------------------------------------------------------------------------
def test_to_body_for_a_create_carries_the_required_trio_and_no_id() -> None:
    # given a canonical opportunity
    # when the create body is built
    body = leadway.to_body(an_opportunity(), M, pipeline_id="P", location_id="L", contact_id="C")
    # then it is the documented upsert body without an id
    assert body == {
        "pipelineId": "P",
        "locationId": "L",
        "contactId": "C",
        "name": "Harbour expansion",
        "status": "open",
        "pipelineStageId": PROPOSAL,
        "monetaryValue": 1250.5,
        "assignedTo": ALICE,
        "followers": [],
        "isRemoveAllFollowers": False,
        "followersActionType": "add",
    }


def test_to_body_for_an_update_carries_every_synced_field_cleared_ones_as_null() -> None:
    # given an opportunity without amount or owner
    opp = an_opportunity(amount=None, owner=None)
    # when the update body is built
    body = leadway.to_body(opp, M, pipeline_id="P", location_id="L", contact_id="C", vendor_id="X")
    # then the id is sent and cleared fields are sent as null
    assert body["id"] == "X"
    assert body["monetaryValue"] is None
    assert body["assignedTo"] is None
    assert {"name", "status", "pipelineStageId", "contactId"} <= set(body)


def test_to_body_sends_whole_amounts_as_integers() -> None:
    # given a whole amount
    body = leadway.to_body(
        an_opportunity(amount=Decimal("220.00")), M, pipeline_id="P", location_id="L",
        contact_id="C",
    )  # fmt: skip
    # then it is a JSON integer, as in the vendor's example
    assert body["monetaryValue"] == 220
    assert isinstance(body["monetaryValue"], int)


def test_to_body_takes_the_stage_from_the_status_when_none_is_given() -> None:
    # given a won deal without a stage
    opp = an_opportunity(stage=None, status=Status.WON)
    # when the body is built
    body = leadway.to_body(opp, M, pipeline_id="P", location_id="L", contact_id="C")
    # then the mapping's first won stage is used
    assert body["pipelineStageId"] == WON


def test_to_body_prefers_a_stage_that_agrees_with_the_status() -> None:
    # given a lost deal whose canonical stage says "proposal"
    opp = an_opportunity(status=Status.LOST)
    # when the body is built
    body = leadway.to_body(opp, M, pipeline_id="P", location_id="L", contact_id="C")
    # then the lost stage is sent, so stage and status agree in Leadway
    assert body["pipelineStageId"] == LOST


def test_to_body_uses_the_default_stage_only_without_a_mapped_one() -> None:
    # given an abandoned deal (the example mapping has no abandoned stage)
    opp = an_opportunity(stage=None, status=Status.ABANDONED)
    # when the create and the update bodies are built
    create = leadway.to_body(
        opp, M, pipeline_id="P", location_id="L", contact_id="C", default_stage_id="FIRST"
    )
    update = leadway.to_body(opp, M, pipeline_id="P", location_id="L", contact_id="C",
                             vendor_id="X")  # fmt: skip
    # then the create lands on the pipeline's first stage and the update leaves the stage be
    assert create["pipelineStageId"] == "FIRST"
    assert "pipelineStageId" not in update


def test_project_normalises_what_leadway_cannot_hold() -> None:
    # given values Leadway cannot keep: an unknown owner, a contact without email or phone,
    # a stage contradicting the status, and fields it has no place for
    opp = an_opportunity(
        owner="bob@example.com",
        contact=Contact(name="Nameless"),
        status=Status.WON,
        description="notes",
        probability=Decimal("50"),
        created_at=datetime(2025, 1, 1, tzinfo=UTC),
        deleted=True,
    )
    # when it is projected
    projected = leadway.project(opp, M)
    # then only what would read back remains
    assert projected == Opportunity(
        name="Harbour expansion",
        amount=Decimal("1250.50"),
        status=Status.WON,
        stage="won",
        company="Harbour Co",
    )


def test_contact_body_is_built_from_the_primary_contact() -> None:
    # given a contact with an email
    # when the contact body is built
    body = leadway.contact_body(an_opportunity(), location_id="L")
    # then it carries the person and the company
    assert body == {
        "locationId": "L",
        "name": "Dana Reyes",
        "email": "dana@harbour.example.com",
        "phone": None,
        "companyName": "Harbour Co",
    }


@pytest.mark.parametrize(
    ("company", "name", "expected"),
    [("Harbour Co", "Deal", "Harbour Co"), (None, "Deal", "Deal"), (None, None, "Opportunity")],
)
def test_contact_body_without_email_or_phone_names_a_placeholder(
    company: str | None, name: str | None, expected: str
) -> None:
    # given no reachable contact
    opp = an_opportunity(contact=Contact(name="Dana"), company=company, name=name)
    # when the contact body is built
    body = leadway.contact_body(opp, location_id="L")
    # then the placeholder is named after the company, else the opportunity
    assert (body["name"], body["email"], body["phone"]) == (expected, None, None)


def test_contact_fingerprint_changes_with_the_contact_fields() -> None:
    # given two bodies that differ only by company
    first = leadway.contact_body(an_opportunity(), location_id="L")
    second = leadway.contact_body(an_opportunity(company="Other"), location_id="L")
    # then equal bodies agree and different ones do not
    assert leadway.contact_fingerprint(first) == leadway.contact_fingerprint(dict(first))
    assert leadway.contact_fingerprint(first) != leadway.contact_fingerprint(second)


# -- native webhooks ---------------------------------------------------------------------
def a_webhook(**changes: Any) -> dict[str, Any]:
    """VENDORS.md §2.7's example, with the envelope's ``timestamp`` and ``webhookId``."""
    payload: dict[str, Any] = {
        "type": "OpportunityCreate",
        "locationId": "ve9EPM428h8vShlRW1KT",
        "id": "wWhVuzqpRuOA1ZVWi4FC",
        "assignedTo": "bNl8QNGXhIQJLv8eeASQ",
        "contactId": "cJAWDskpkJHbRbhAT7bs",
        "monetaryValue": 40,
        "name": "Loram ipsu",
        "pipelineId": "VDm7RPYC2GLUvdpKmBfC",
        "pipelineStageId": "e93ba61a-53b3-45e7-985a-c7732dbcdb69",
        "source": "Loram ipsu",
        "status": "open",
        "dateAdded": "2021-11-26T12:41:02.193Z",
        "timestamp": "2025-01-28T14:35:00Z",
        "webhookId": "8f6a1c1e-1111-4b5b-9c1d-0a1b2c3d4e5f",
    }
    payload.update(changes)
    return payload


@pytest.mark.parametrize("kind", sorted(leadway.OPPORTUNITY_EVENTS - {"OpportunityDelete"}))
def test_parse_native_names_the_record_for_the_worker_to_fetch(kind: str) -> None:
    # given an opportunity event
    # when it is parsed
    event = leadway.parse_native(a_webhook(type=kind))
    # then it names the record, is semi-fat (no record) and carries the delivery time
    assert event is not None
    assert event.vendor_id == "wWhVuzqpRuOA1ZVWi4FC"
    assert (event.deleted, event.record) == (False, None)
    assert event.event_time == datetime(2025, 1, 28, 14, 35, tzinfo=UTC)


def test_parse_native_marks_a_delete() -> None:
    # given / when
    event = leadway.parse_native(a_webhook(type="OpportunityDelete"))
    # then
    assert event is not None and event.deleted


def test_parse_native_ignores_other_events() -> None:
    # given a contact event
    # when / then it is not about opportunities
    assert leadway.parse_native({"type": "ContactCreate", "id": "c1"}) is None
    assert leadway.parse_native({"type": "AppInstall"}) is None


@pytest.mark.parametrize("field", ["id", "type"])
def test_parse_native_without_id_or_type_is_invalid(field: str) -> None:
    # given an opportunity event missing a key
    payload = a_webhook()
    del payload[field]
    # when / then the error names it
    with pytest.raises(ValidationError) as caught:
        leadway.parse_native(payload)
    assert field in caught.value.messages


def test_parse_native_rejects_a_bad_timestamp() -> None:
    # given / when / then
    with pytest.raises(ValidationError) as caught:
        leadway.parse_native(a_webhook(timestamp="soon"))
    assert "timestamp" in caught.value.messages


def test_native_delivery_id_is_the_webhook_id() -> None:
    # given / when / then
    assert leadway.native_delivery_id(a_webhook()) == "8f6a1c1e-1111-4b5b-9c1d-0a1b2c3d4e5f"
    with pytest.raises(ValidationError):
        leadway.native_delivery_id({"type": "OpportunityCreate"})


# -- the round trip through the simulator's own storage ---------------------------------
@pytest.fixture(scope="module")
def store() -> Iterator[LeadwaySimulator]:
    """The simulator's app, driven in-process (no server needed for pure storage)."""
    sim = LeadwaySimulator(rate_limit=None)
    yield sim
    sim.stop()


def _write(sim: LeadwaySimulator, opp: Opportunity, vendor_id: str | None = None) -> str:
    """What the adapter does, against the simulator's app: contact, then opportunity."""
    client = sim.app.test_client()
    headers = {"Authorization": f"Bearer {sim.token}", "Version": API_VERSION}
    contact = client.post(
        "/contacts/upsert",
        json=leadway.contact_body(opp, location_id=sim.location_id),
        headers=headers,
    )
    assert contact.status_code == 200, contact.get_json()
    body = leadway.to_body(
        opp,
        M,
        pipeline_id=sim.pipeline_id,
        location_id=sim.location_id,
        contact_id=contact.get_json()["contact"]["id"],
        vendor_id=vendor_id,
        default_stage_id=None if vendor_id else sim.pipelines[0]["stages"][0]["id"],
    )
    answer = client.post("/opportunities/upsert", json=body, headers=headers)
    assert answer.status_code == 200, answer.get_json()
    return str(answer.get_json()["opportunity"]["id"])


def _synced(opp: Opportunity) -> dict[str, Any]:
    return {name: getattr(opp, name) for name in leadway.SYNCED_FIELDS}


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=opportunities(), second=opportunities())
def test_round_trip_reads_back_the_projection(
    store: LeadwaySimulator, first: Opportunity, second: Opportunity
) -> None:
    # given an empty Leadway
    store.reset()
    # when an opportunity is created, read back, then updated with another and read back
    vendor_id = _write(store, first)
    created = leadway.to_canonical(store.records[vendor_id], M)
    _write(store, second, vendor_id)
    updated = leadway.to_canonical(store.records[vendor_id], M)
    # then each read equals the projection, and projecting is idempotent
    assert _synced(created) == _synced(leadway.project(first, M))
    assert _synced(updated) == _synced(leadway.project(second, M))
    for opp in (first, second):
        assert leadway.project(leadway.project(opp, M), M) == leadway.project(opp, M)
