"""iVvy translation: record -> canonical, canonical -> body, notifications, the round trip."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from marshmallow import ValidationError

from schemas import ivvy
from schemas.mapping import Mapping, parse_mapping
from schemas.opportunity import SYNCED_FIELDS, Contact, Opportunity, Status
from tests.strategies import EXAMPLE_MAPPING, opportunities
from worker.sandbox.simulators.ivvy import DEFAULT_STAGES, IvvySimulator

M = EXAMPLE_MAPPING
NO_MAPPING = Mapping()
#: A stage the mapping names without an iVvy id: it cannot be written as itself.
PARTIAL = parse_mapping(
    {
        "stages": [
            {"name": "qualified", "status": "open", "leadway": "x"},
            {"name": "new", "status": "open", "ivvy": 69},
        ]
    }
)
RECORD: dict[str, Any] = {
    "id": 755,
    "venueId": 107,
    "name": "Lead By API",
    "description": "Annual conference",
    "ownerUser": {"id": 12, "firstName": "Alice", "lastName": "Ex", "email": "x@venue.com"},
    "contact": {
        "id": 918,
        "firstName": "Ada",
        "lastName": "Lovelace",
        "email": "ada@x.com",
        "phone": "+61400000000",
    },
    "company": {"id": 5, "businessName": "Analytical Engines", "businessNumber": ""},
    "stageId": 70,
    "stageName": "Proposal Sent",
    "typeId": 18,
    "sourceId": 25,
    "closedDate": "2017-05-05",
    "createdDate": "2017-04-01 09:00:00",
    "modifiedDate": "2017-04-02 10:30:15",
    "externalUrls": [{"ref": "k1", "url": "urn:oppsync:k1", "label": "oppsync"}],
    "sourceName": "Website",
}


@pytest.fixture(scope="module")
def sim() -> Iterator[IvvySimulator]:
    simulator = IvvySimulator()  # its state machine only: no server needed
    yield simulator
    simulator.stop()


def stored(sim: IvvySimulator, body: dict[str, Any]) -> dict[str, Any]:
    """The record the simulator keeps for an ``addOrUpdateOpportunity`` body (via JSON)."""
    answer = sim.add_or_update(json.loads(json.dumps(body)), source=(1, sim.api_key))
    return json.loads(json.dumps(sim.records[str(answer["id"])]))


def body_for(
    sim: IvvySimulator, opp: Opportunity, mapping: Mapping, vendor_id: str | None = None
) -> dict[str, Any]:
    stage_id = ivvy.choose_stage(opp, mapping, sim.stages, None)
    assert stage_id is not None
    return ivvy.to_body(
        opp,
        mapping,
        venue_id=107,
        key="key-1",
        stage_id=stage_id,
        vendor_id=vendor_id,
        type_id=18,
        source_id=25,
    )


def synced(opp: Opportunity) -> dict[str, Any]:
    return {name: getattr(opp, name) for name in SYNCED_FIELDS}


# -- inbound -------------------------------------------------------------------------------
def test_to_canonical_reads_every_synced_field() -> None:
    # given a getOpportunityList record in a mapped stage / when translated
    opp = ivvy.to_canonical(RECORD, M)
    # then the synced fields and iVvy's own timestamps (UTC) are read, the owner by mapping
    assert opp == Opportunity(
        name="Lead By API",
        status=Status.OPEN,
        stage="proposal",
        close_date=date(2017, 5, 5),
        description="Annual conference",
        owner="alice@example.com",
        contact=Contact(name="Ada Lovelace", email="ada@x.com", phone="+61400000000"),
        company="Analytical Engines",
        created_at=datetime(2017, 4, 1, 9, 0, tzinfo=UTC),
        updated_at=datetime(2017, 4, 2, 10, 30, 15, tzinfo=UTC),
    )


def test_to_canonical_reads_blanks_and_nulls_as_absent() -> None:
    # given a record with iVvy's empty strings and nulls
    record = {
        **RECORD,
        "description": "",
        "closedDate": "",
        "ownerUser": None,
        "contact": {"firstName": "", "lastName": "", "email": "", "phone": ""},
        "company": None,
        "modifiedDate": None,
    }
    # when translated
    opp = ivvy.to_canonical(record, M)
    # then they are None
    assert (opp.description, opp.close_date, opp.owner, opp.contact, opp.company) == (None,) * 5
    assert opp.updated_at is None


@pytest.mark.parametrize(
    ("stage_name", "status"),
    [
        ("Won", Status.WON),
        ("Closed - Lost", Status.LOST),
        ("Tentative", Status.OPEN),
        (None, Status.OPEN),
    ],
)
def test_to_canonical_reads_status_from_an_unmapped_stage_name(
    stage_name: str | None, status: Status
) -> None:
    # given a stage the mapping does not know / when translated
    opp = ivvy.to_canonical({**RECORD, "stageId": 999, "stageName": stage_name}, M)
    # then its name decides the status and there is no canonical stage
    assert (opp.stage, opp.status) == (None, status)


def test_to_canonical_takes_an_unmapped_owner_by_email() -> None:
    # given an owner whose iVvy id the mapping does not list
    record = {**RECORD, "ownerUser": {"id": 99, "email": "Bob@Venue.com"}}
    # when translated / then the email iVvy shows, lowercased
    assert ivvy.to_canonical(record, M).owner == "bob@venue.com"


def test_to_canonical_ignores_unknown_fields_and_takes_string_ids() -> None:
    # given iVvy's extra fields and an id as a digit string
    record = {**RECORD, "id": "755", "leadBccEmail": "x@y", "quality": "Hot"}
    # when translated / then nothing fails
    assert ivvy.to_canonical(record, M).name == "Lead By API"
    assert ivvy.record_id(record) == "755"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"id": None}, "id"),
        ({"id": "abc"}, "id"),
        ({"name": 5}, "name"),
        ({"stageId": "sixty"}, "stageId"),
        ({"closedDate": "05/05/2017"}, "closedDate"),
        ({"modifiedDate": "yesterday"}, "modifiedDate"),
        ({"contact": "Ada"}, "contact"),
        ({"externalUrls": [{"url": "x"}]}, "externalUrls"),
    ],
)
def test_to_canonical_names_the_bad_field(change: dict[str, Any], field: str) -> None:
    # given a record with one wrong value / when translated / then the error names it
    with pytest.raises(ValidationError) as caught:
        ivvy.to_canonical({**RECORD, **change}, M)
    assert field in caught.value.messages


def test_to_canonical_requires_an_id_and_leaves_an_absent_name_unknown() -> None:
    # given a record missing both / when translated / then the id is named
    with pytest.raises(ValidationError) as caught:
        ivvy.to_canonical({"venueId": 107}, M)
    assert set(caught.value.messages) == {"id"}
    # and with an id, the name it does not carry is unknown (not cleared)
    assert "name" in ivvy.to_canonical({"id": 7}, M).unknown


def test_record_id_refuses_a_non_integer_id() -> None:
    with pytest.raises(ValidationError):
        ivvy.record_id({"id": "abc"})


def test_key_of_reads_our_external_url() -> None:
    # given a record we stamped / when asked for our key / then the ref
    assert ivvy.key_of(RECORD) == "k1"
    assert ivvy.key_of({**RECORD, "externalUrls": None}) is None


# -- notifications ---------------------------------------------------------------------------
def message(subject: str, body: Any, source_type: int = 0, source_info: str = "") -> dict[str, Any]:
    return {
        "TxnId": "t1",
        "Region": "ap-southeast-2",
        "Timestamp": "2017-04-02 10:31:00",
        "AccountId": 1,
        "Subject": subject,
        "Body": json.dumps(body),
        "SourceType": source_type,
        "SourceInfo": source_info,
    }


def test_parse_native_takes_an_update_whole() -> None:
    # given an OpportunityUpdated message from an API key
    msg = message("OpportunityUpdated", {"data": RECORD, "previousData": RECORD}, 1, "key-a")
    # when parsed
    event = ivvy.parse_native(msg)
    # then the record rides along (fat), timed by modifiedDate, authored by the key
    assert event is not None
    assert (event.vendor_id, event.deleted, event.record) == ("755", False, RECORD)
    assert event.event_time == datetime(2017, 4, 2, 10, 30, 15, tzinfo=UTC)
    assert event.api_author == "key-a"


def test_parse_native_reads_an_add_made_in_the_ui_without_author() -> None:
    # given an OpportunityAdded from the UI (SourceType 0)
    event = ivvy.parse_native(message("OpportunityAdded", {"data": RECORD}, 0, "ignored"))
    # then there is no API author
    assert event is not None and event.api_author is None


def test_parse_native_reads_a_delete_by_ids() -> None:
    # given an OpportunityDeleted message / when parsed
    event = ivvy.parse_native(message("OpportunityDeleted", {"venueId": 107, "opportunityId": 234}))
    # then deleted, no record, timed by the message
    assert event is not None
    assert (event.vendor_id, event.deleted, event.record) == ("234", True, None)
    assert event.event_time == datetime(2017, 4, 2, 10, 31, tzinfo=UTC)


def test_parse_native_ignores_other_crm_subjects() -> None:
    assert ivvy.parse_native(message("TaskAdded", {"data": {"id": 1}})) is None


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        ({"Body": "{}"}, "Subject"),
        (message("OpportunityAdded", {}) | {"Body": "not json"}, "Body"),
        (message("OpportunityAdded", {"data": {**RECORD, "id": "x"}}), "Body"),
        (message("OpportunityDeleted", {"venueId": 1}), "Body"),
    ],
)
def test_parse_native_names_what_is_wrong(msg: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ivvy.parse_native(msg)
    assert field in caught.value.messages


def test_unwrap_sns_parses_a_notification_message() -> None:
    # given an SNS Notification carrying the iVvy message
    inner = message("OpportunityAdded", {"data": RECORD})
    envelope = {"Type": "Notification", "Message": json.dumps(inner)}
    # then unwrapping gives the inner message; an inner message passes through
    assert ivvy.unwrap_sns(envelope) == inner
    assert ivvy.unwrap_sns(inner) == inner
    with pytest.raises(ValidationError):
        ivvy.unwrap_sns({"Type": "Notification", "Message": "[1]"})


# -- outbound --------------------------------------------------------------------------------
def test_project_drops_what_ivvy_cannot_hold() -> None:
    # given an opportunity with amount, probability, an unmapped owner, timestamps
    opp = Opportunity(
        name="N",
        amount=Decimal("5.00"),
        probability=Decimal(50),
        status=Status.OPEN,
        owner="nobody@example.com",
        created_at=datetime.now(UTC),
    )
    # when projected / then those are gone and the open status lands in the first open stage
    assert ivvy.project(opp, M) == Opportunity(name="N", status=Status.OPEN, stage="new")


@pytest.mark.parametrize(
    ("mapping", "stage", "status"),
    [(M, "lost", Status.LOST), (NO_MAPPING, None, Status.LOST)],
)
def test_project_makes_abandoned_lost(mapping: Mapping, stage: str | None, status: Status) -> None:
    # given an abandoned opportunity (iVvy has no such stage) / when projected
    shown = ivvy.project(Opportunity(name="N", status=Status.ABANDONED), mapping)
    # then it is lost (in the mapped lost stage when there is one)
    assert (shown.stage, shown.status) == (stage, status)


def test_project_claims_no_status_when_the_deal_has_none() -> None:
    # given no status and no stage (e.g. a state not yet filled) / when projected
    shown = ivvy.project(Opportunity(name="N"), M)
    # then no status or stage is claimed, though a write would use the default stage
    assert (shown.stage, shown.status) == (None, None)


def test_project_replaces_a_stage_without_ivvy_id_by_one_for_its_status() -> None:
    # given a stage the mapping names without an iVvy id / when projected
    shown = ivvy.project(Opportunity(name="N", stage="qualified", status=Status.OPEN), PARTIAL)
    # then it reads back as the stage written for its status
    assert (shown.stage, shown.status) == ("new", Status.OPEN)


def test_project_normalises_contact_names_as_ivvy_splits_them() -> None:
    # given a contact name with a leading space and one with only an email
    odd = ivvy.project(Opportunity(name="N", contact=Contact(name=" Ada")), M)
    bare = ivvy.project(Opportunity(name="N", contact=Contact(email="a@b.c")), M)
    # then first/last name rejoin without the gap; an all-empty contact is none
    assert odd.contact == Contact(name="Ada")
    assert bare.contact == Contact(email="a@b.c")
    assert ivvy.project(Opportunity(name="N", contact=Contact()), M).contact is None


def test_to_body_creates_with_type_source_and_our_key() -> None:
    # given a new opportunity in the "new" stage (whose mapping overrides type and source)
    opp = Opportunity(
        name="Gala",
        stage="new",
        status=Status.OPEN,
        owner="Alice@Example.com",
        contact=Contact(name="Ada Lovelace King", email="ada@x.com"),
        company="Engines",
        close_date=date(2025, 1, 31),
    )
    # when the create body is built
    body = ivvy.to_body(opp, M, venue_id=107, key="k9", stage_id=69, type_id=1, source_id=2)
    # then it carries ints, the stage's type/source, our key, and leaves out what is unset
    assert body == {
        "venueId": 107,
        "name": "Gala",
        "stageId": 69,
        "closedDate": "2025-01-31",
        "ownerUserId": 12,
        "typeId": 18,
        "sourceId": 25,
        "contact": {
            "firstName": "Ada",
            "lastName": "Lovelace King",
            "email": "ada@x.com",
            "phone": None,
            "updateIfExists": True,
        },
        "company": {"businessName": "Engines", "updateIfExists": True},
        "externalUrls": [{"ref": "k9", "url": "urn:oppsync:k9", "label": "oppsync"}],
    }


def test_to_body_create_falls_back_to_the_configured_type_and_source() -> None:
    # given a stage without overrides / when the create body is built
    body = ivvy.to_body(
        Opportunity(name="G", stage="proposal"),
        M,
        venue_id=107,
        key="k",
        stage_id=70,
        type_id=1,
        source_id=2,
    )
    # then IVVY_TYPE_ID / IVVY_SOURCE_ID are used
    assert (body["typeId"], body["sourceId"]) == (1, 2)


def test_to_body_update_carries_every_synced_field_and_clears_the_rest() -> None:
    # given an update of an opportunity with no description, date or owner
    body = ivvy.to_body(
        Opportunity(name="G", status=Status.WON),
        M,
        venue_id=107,
        key="k",
        stage_id=71,
        vendor_id="755",
        type_id=1,
        source_id=2,
    )
    # then the id is an int, cleared fields are null, create-only fields are absent
    assert body == {
        "id": 755,
        "venueId": 107,
        "name": "G",
        "description": None,
        "stageId": 71,
        "closedDate": None,
        "ownerUserId": None,
    }


@pytest.mark.parametrize(
    ("opp", "default", "expected"),
    [
        (Opportunity(status=Status.WON), None, 71),
        (Opportunity(status=Status.ABANDONED), None, 72),
        (Opportunity(status=Status.OPEN), 70, 70),
        (Opportunity(status=Status.OPEN), None, 69),
        (Opportunity(status=None), None, 69),
    ],
)
def test_choose_stage_without_mapping_reads_the_tenant_list(
    opp: Opportunity, default: int | None, expected: int
) -> None:
    # given no mapping file / when a stage is chosen from the tenant's list
    chosen = ivvy.choose_stage(opp, NO_MAPPING, list(DEFAULT_STAGES), default)
    # then won/lost by name, open by IVVY_STAGE_ID or the first stage
    assert chosen == expected


def test_choose_stage_is_none_when_the_tenant_cannot_say_won() -> None:
    stages = [{"id": 1, "name": "Enquiry"}, {"id": 2, "name": "Lost"}]
    assert ivvy.choose_stage(Opportunity(status=Status.WON), NO_MAPPING, stages, None) is None


# -- the round trip ------------------------------------------------------------------------
@pytest.mark.parametrize("mapping", [M, NO_MAPPING, PARTIAL], ids=["example", "none", "partial"])
@given(opp=opportunities())
def test_round_trip_reads_back_the_projection(
    sim: IvvySimulator, mapping: Mapping, opp: Opportunity
) -> None:
    # given the record the simulator stores for the create body
    record = stored(sim, body_for(sim, opp, mapping))
    # when read back
    back = ivvy.to_canonical(record, mapping)
    # then it is the projection, and projecting is idempotent
    assert synced(back) == synced(ivvy.project(opp, mapping))
    assert ivvy.project(ivvy.project(opp, mapping), mapping) == ivvy.project(opp, mapping)


@given(first=opportunities(), second=opportunities())
def test_round_trip_update_ends_with_the_new_values(
    sim: IvvySimulator, first: Opportunity, second: Opportunity
) -> None:
    # given a record created from one opportunity
    vendor_id = str(stored(sim, body_for(sim, first, M))["id"])
    # when updated from another
    back = ivvy.to_canonical(stored(sim, body_for(sim, second, M, vendor_id)), M)
    # then every field is the new one; a contact/company is only ever replaced, not removed
    # (the body carries them only when set: iVvy documents no way to unlink them)
    expected = synced(ivvy.project(second, M))
    for kept in ("contact", "company"):
        if expected[kept] is None:
            expected[kept] = synced(ivvy.project(first, M))[kept]
    assert synced(back) == expected


@given(st.sampled_from(["OpportunityAdded", "OpportunityUpdated"]), opportunities())
def test_parse_native_of_a_simulated_notification_gives_the_stored_record(
    sim: IvvySimulator, subject: str, opp: Opportunity
) -> None:
    # given the message the simulator would send for a stored record
    record = stored(sim, body_for(sim, opp, M))
    inner = sim.inner_message(subject, str(record["id"]), record, record, (1, sim.api_key))
    # when parsed / then it is that record, by our key
    event = ivvy.parse_native(json.loads(json.dumps(inner)))
    assert event is not None and event.record == record and event.api_author == sim.api_key
