"""Unit tests of schemas.icloudready: records in, bodies out, and the round trip through the
simulator's storage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from marshmallow import ValidationError

from schemas import icloudready as icr
from schemas.mapping import Mapping
from schemas.opportunity import Contact, Opportunity, Status
from tests.strategies import EXAMPLE_MAPPING, opportunities
from worker.sandbox.simulators.icloudready import IcloudreadySimulator

M = EXAMPLE_MAPPING
OWNER_ID = "609a8f85c2834915d0a5a5e2"
RECORD: dict[str, Any] = {
    "_id": "6650a1b2c3d4e5f6a7b8c9d0",
    "customer": "609a8f85c2834915d0a5a5e1",
    "opportunityInformation": {"name": "Villa lease", "floor": 3},
    "opportunityDescription": "Interested in purchasing a new property",
    "revenue": 1000.5,
    "probability": 0.75,
    "closeDate": "2023-06-30",
    "status": "active",
    "stage": "stage2",
    "opportunityOwner": OWNER_ID,
    "forecastCategory": "category1",
    "createdAt": "2024-05-01T10:00:00.000Z",
    "updatedAt": "2024-05-02T11:30:00.250Z",
    "__v": 0,
}


def _stored(body: dict[str, Any], sim: IcloudreadySimulator) -> dict[str, Any]:
    """What the simulator keeps for a create body sent as JSON."""
    return sim.store_new(json.loads(json.dumps(body)))


# -- inbound ---------------------------------------------------------------------------------
def test_to_canonical_reads_every_synced_field() -> None:
    # given a full record as the API returns it
    # when it is translated
    opp = icr.to_canonical(RECORD, M)
    # then every synced field is read, the fraction becomes a percentage, timestamps are UTC
    assert opp == Opportunity(
        name="Villa lease",
        amount=Decimal("1000.50"),
        status=Status.OPEN,
        stage="proposal",
        close_date=date(2023, 6, 30),
        description="Interested in purchasing a new property",
        probability=Decimal("75.00"),
        owner="alice@example.com",
        created_at=datetime(2024, 5, 1, 10, tzinfo=UTC),
        updated_at=datetime(2024, 5, 2, 11, 30, 0, 250000, tzinfo=UTC),
    )


def test_to_canonical_reads_a_record_under_data() -> None:
    # given the record wrapped as a create answer wraps it
    # when it is translated
    opp = icr.to_canonical({"data": RECORD}, M)
    # then it reads the same as the bare record
    assert opp == icr.to_canonical(RECORD, M)


def test_to_canonical_leaves_missing_fields_none() -> None:
    # given a record holding only an id and a name
    record = {"_id": "6650a1b2c3d4e5f6a7b8c9d0", "opportunityInformation": {"name": "Bare"}}
    # when it is translated
    opp = icr.to_canonical(record, Mapping())
    # then everything else is None and the record is not deleted
    assert opp == Opportunity(name="Bare")


def test_to_canonical_tolerates_populated_references_and_datetime_close_dates() -> None:
    # given an owner populated as a user object and a close date stored as a date-time
    record = {
        **RECORD,
        "opportunityOwner": {"_id": OWNER_ID, "name": "Alice"},
        "stage": {"_id": "stage1", "stageName": "New"},
        "closeDate": "2023-06-30T00:00:00.000Z",
    }
    # when it is translated
    opp = icr.to_canonical(record, M)
    # then the ids are read from the objects and the date keeps its calendar day
    assert (opp.owner, opp.stage, opp.close_date) == ("alice@example.com", "new", date(2023, 6, 30))


@pytest.mark.parametrize(
    ("vendor_status", "status"),
    [
        ("active", Status.OPEN),
        ("won", Status.WON),
        ("Lost", Status.LOST),
        ("abandoned", Status.ABANDONED),
    ],
)
def test_to_canonical_maps_status_without_a_mapping_file(
    vendor_status: str, status: Status
) -> None:
    # given a record with one of iCloudReady's default statuses
    # when it is translated with no mapping file
    opp = icr.to_canonical({**RECORD, "status": vendor_status}, Mapping())
    # then the canonical status follows DESIGN.md's defaults
    assert opp.status is status


def test_to_canonical_drops_unmapped_stage_and_owner() -> None:
    # given a stage and an owner the mapping does not know
    record = {**RECORD, "stage": "stage9", "opportunityOwner": "ffffffffffffffffffffffff"}
    # when it is translated
    opp = icr.to_canonical(record, M)
    # then neither is guessed
    assert (opp.stage, opp.owner) == (None, None)


@pytest.mark.parametrize("flag", ["isDeleted", "deleted"])
def test_to_canonical_marks_soft_deleted_records(flag: str) -> None:
    # given a record flagged as deleted
    # when it is translated
    opp = icr.to_canonical({**RECORD, flag: True}, M)
    # then the canonical value says so
    assert opp.deleted is True


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("revenue", "a lot"),
        ("revenue", -1),
        ("revenue", True),
        ("probability", 1.5),
        ("probability", "likely"),
        ("opportunityInformation", "Villa lease"),
        ("closeDate", "30/06/2023"),
        ("closeDate", 20230630),
        ("status", 3),
        ("opportunityDescription", ["a"]),
        ("opportunityOwner", ["x"]),
        ("createdAt", "yesterday"),
        ("updatedAt", 1714644000),
    ],
)
def test_to_canonical_rejects_wrong_types_naming_the_field(field: str, value: Any) -> None:
    # given a record with one field of the wrong type or range
    record = {**RECORD, field: value}
    # when it is translated
    with pytest.raises(ValidationError) as caught:
        icr.to_canonical(record, M)
    # then the error names that field
    assert field in caught.value.messages


def test_to_canonical_rejects_a_name_that_is_not_text() -> None:
    # given a name that is a number
    record = {**RECORD, "opportunityInformation": {"name": 42}}
    # when / then the nested field is named
    with pytest.raises(ValidationError) as caught:
        icr.to_canonical(record, M)
    assert caught.value.messages == {"opportunityInformation": {"name": ["Not a valid string."]}}


@pytest.mark.parametrize(
    "answer",
    [
        {"_id": "a1"},
        {"id": "a1"},
        {"data": {"_id": "a1"}},
        {"data": {"id": "a1"}},
        {"_id": "a1", "data": {"note": "x"}},
    ],
)
def test_record_id_reads_id_or_underscore_id_at_top_level_or_under_data(
    answer: dict[str, Any],
) -> None:
    # given an answer in one of the tolerated shapes
    # when / then the id is found
    assert icr.record_id(answer) == "a1"


def test_record_id_without_an_id_raises() -> None:
    # given an answer with no id anywhere
    # when / then the error names the id
    with pytest.raises(ValidationError) as caught:
        icr.record_id({"data": {"opportunityInformation": {"name": "x"}}})
    assert "_id" in caught.value.messages


@pytest.mark.parametrize("answer", [[{"_id": "a"}], {"data": [{"_id": "a"}], "total": 1}])
def test_unwrap_list_accepts_a_bare_array_or_data(answer: Any) -> None:
    # given a list answer in either shape
    # when / then the records come out
    assert icr.unwrap_list(answer) == [{"_id": "a"}]


def test_unwrap_list_rejects_other_shapes() -> None:
    # given an answer with no array
    # when / then it is refused
    with pytest.raises(ValidationError):
        icr.unwrap_list({"data": {"docs": []}})


# -- outbound --------------------------------------------------------------------------------
FULL = Opportunity(
    name="Villa lease",
    amount=Decimal("1000.50"),
    status=Status.WON,
    stage="won",
    close_date=date(2023, 6, 30),
    description="Signed",
    probability=Decimal("12.34"),
    owner="alice@example.com",
    contact=Contact(name="Jo", email="jo@example.com"),
    company="Acme",
)


def test_to_body_create_carries_the_customer_and_leaves_out_unknowns() -> None:
    # given an opportunity without description or amount
    opp = FULL.replace(description=None, amount=None)
    # when the create body is built
    body = icr.to_body(opp, M, create=True, customer="609a8f85c2834915d0a5a5e1")
    # then it has the vendor's keys, a fraction for probability, and no nulls
    assert body == {
        "opportunityInformation": {"name": "Villa lease"},
        "probability": 0.1234,
        "closeDate": "2023-06-30",
        "status": "won",
        "stage": "closed-won",
        "opportunityOwner": OWNER_ID,
        "customer": "609a8f85c2834915d0a5a5e1",
    }


def test_to_body_update_carries_every_synced_field_with_nulls() -> None:
    # given an opportunity with nothing but a name
    # when the PATCH body is built
    body = icr.to_body(Opportunity(name="Only name"), M, create=False)
    # then every synced key is present, unknown ones null, and no customer is sent
    assert body == {
        "opportunityInformation": {"name": "Only name"},
        "opportunityDescription": None,
        "revenue": None,
        "probability": None,
        "closeDate": None,
        "status": None,
        "stage": None,
        "opportunityOwner": None,
    }
    assert set(body) <= set(icr.BODY_KEYS)


def test_to_body_sends_integral_numbers_without_a_fraction() -> None:
    # given whole amounts and a full probability
    opp = FULL.replace(amount=Decimal("5000.00"), probability=Decimal("100"))
    # when the body is built
    body = icr.to_body(opp, M, create=False)
    # then JSON integers are sent
    assert (body["revenue"], body["probability"]) == (5000, 1)
    assert isinstance(body["revenue"], int)


def test_to_body_falls_back_to_the_first_stage_of_the_status() -> None:
    # given an open opportunity with no stage
    # when the body is built
    body = icr.to_body(FULL.replace(stage=None, status=Status.OPEN), M, create=False)
    # then the first open stage iCloudReady knows is sent
    assert body["stage"] == "stage1"


def test_project_normalises_like_a_round_trip() -> None:
    # given an opportunity with fields iCloudReady cannot hold and an unmapped owner
    opp = FULL.replace(
        owner="bob@example.com",
        stage=None,
        status=Status.LOST,
        created_at=datetime(2024, 1, 1, tzinfo=UTC),
    )
    # when it is projected
    projected = icr.project(opp, M)
    # then contact/company/owner/timestamps are gone and the stage follows the status
    assert projected == Opportunity(
        name="Villa lease",
        amount=Decimal("1000.50"),
        status=Status.LOST,
        stage="lost",
        close_date=date(2023, 6, 30),
        description="Signed",
        probability=Decimal("12.34"),
    )


def test_project_without_a_mapping_file_has_no_stage() -> None:
    # given no mapping file (no stages known)
    # when a staged opportunity is projected
    projected = icr.project(FULL, Mapping())
    # then its stage and owner cannot be held
    assert (projected.stage, projected.owner, projected.status) == (None, None, Status.WON)


# -- the round trip --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store() -> Iterator[IcloudreadySimulator]:
    """The simulator's storage, used without its HTTP server."""
    sim = IcloudreadySimulator()
    yield sim
    sim.stop()


@settings(max_examples=150, deadline=None)
@given(opp=opportunities())
def test_round_trip_through_the_simulator_equals_the_projection(
    store: IcloudreadySimulator, opp: Opportunity
) -> None:
    # given an opportunity written as a create body and stored as the simulator stores it
    record = _stored(icr.to_body(opp, M, create=True, customer="c1"), store)
    # when the stored record is read back
    back = icr.to_canonical(record, M)
    # then it equals the projection on the synced fields, and projecting is idempotent
    projected = icr.project(opp, M)
    for name in icr.SYNCED_FIELDS:
        assert getattr(back, name) == getattr(projected, name), name
    assert icr.project(projected, M) == projected


@settings(max_examples=100, deadline=None)
@given(first=opportunities(), second=opportunities())
def test_round_trip_of_an_update_replaces_every_synced_field(
    store: IcloudreadySimulator, first: Opportunity, second: Opportunity
) -> None:
    # given a record created from one opportunity
    vendor_id = icr.record_id(_stored(icr.to_body(first, M, create=True), store))
    # when it is patched with another
    body = json.loads(json.dumps(icr.to_body(second, M, create=False)))
    record = store.store_changes(vendor_id, body)
    # then nothing of the first survives in the synced fields
    assert record is not None
    back = icr.to_canonical(record, M)
    projected = icr.project(second, M)
    assert {n: getattr(back, n) for n in icr.SYNCED_FIELDS} == {
        n: getattr(projected, n) for n in icr.SYNCED_FIELDS
    }
