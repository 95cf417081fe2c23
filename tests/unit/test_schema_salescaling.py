"""Salescaling translation: API record -> canonical, canonical -> body, and the round trip."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from marshmallow import ValidationError

from schemas import salescaling
from schemas.mapping import Mapping, parse_mapping
from schemas.opportunity import SYNCED_FIELDS, Contact, Opportunity, Status
from tests.strategies import EXAMPLE_MAPPING, opportunities
from worker.sandbox.simulators.salescaling import SalescalingSimulator

M = EXAMPLE_MAPPING
#: A tenant whose statuses differ: no "abandoned" of its own, "closed_won" for won. (Lost is
#: listed too: ``Mapping.status_in`` prefers the file's entries, so without it "lost" would
#: read back as abandoned.)
TENANT = parse_mapping(
    {"statuses": {"salescaling": {"won": "closed_won", "lost": "lost", "abandoned": "lost"}}}
)

DOC_RECORD: dict[str, Any] = {  # the example answer on the vendor page
    "id": "5516cd47-2bd0-4f4f-adc2-22524e54ba4d",
    "name": "Enterprise Software License",
    "amount": 50000,
    "finalAmount": 45000,
    "risk": "Low",
    "priority": "High",
    "description": "Enterprise software license for 500 users",
    "featuredNotes": "Key decision maker is the CTO",
    "nextStep": "FollowUp",
    "closeDate": "2024-03-10T00:00:00.000Z",
    "closeProbability": 75,
    "status": "open",
    "createdAt": "2024-01-15T10:00:00.000Z",
    "updatedAt": "2024-01-15T10:00:00.000Z",
}


@pytest.fixture(scope="module")
def sim() -> Iterator[SalescalingSimulator]:
    simulator = SalescalingSimulator(statuses=("open", "won", "lost", "abandoned", "closed_won"))
    yield simulator
    simulator.stop()


def stored_record(sim: SalescalingSimulator, opp: Opportunity, mapping: Mapping) -> dict[str, Any]:
    """What the simulator keeps for a create with ``to_body(opp)``, through JSON both ways."""
    body = json.loads(json.dumps(salescaling.to_body(opp, mapping)))
    assert sim.check_body(body, creating=True) is None
    return json.loads(json.dumps(sim.write(body)))


def synced(opp: Opportunity) -> dict[str, Any]:
    return {name: getattr(opp, name) for name in SYNCED_FIELDS}


# -- inbound -------------------------------------------------------------------------------


def test_to_canonical_reads_the_documented_record() -> None:
    # given the example record of the vendor page
    # when it is translated
    opp = salescaling.to_canonical(DOC_RECORD, M)
    # then the six synced fields and the timestamps are set, the rest is None
    assert opp == Opportunity(
        name="Enterprise Software License",
        amount=Decimal("50000.00"),
        status=Status.OPEN,
        close_date=date(2024, 3, 10),
        description="Enterprise software license for 500 users",
        probability=Decimal("75.00"),
        created_at=datetime(2024, 1, 15, 10, tzinfo=UTC),
        updated_at=datetime(2024, 1, 15, 10, tzinfo=UTC),
    )


def test_to_canonical_missing_fields_are_none() -> None:
    # given a record that carries only its id
    # when it is translated
    opp = salescaling.to_canonical({"id": "abc"}, M)
    # then every field is None and it is not deleted
    assert opp == Opportunity()


def test_to_canonical_nulls_are_none() -> None:
    # given a record whose fields are all null
    record = {
        "id": "abc",
        **dict.fromkeys(
            ["name", "amount", "description", "closeDate", "closeProbability", "status"]
        ),
    }
    # when / then
    assert salescaling.to_canonical(record, M) == Opportunity()


def test_to_canonical_missing_id_raises_naming_id() -> None:
    # given a record without an id
    record = {k: v for k, v in DOC_RECORD.items() if k != "id"}
    # when / then
    with pytest.raises(ValidationError) as caught:
        salescaling.to_canonical(record, M)
    assert "id" in caught.value.messages


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amount", "50000"),
        ("amount", True),
        ("closeProbability", "75"),
        ("closeProbability", 101),
        ("closeProbability", -1),
        ("name", 5),
        ("description", ["x"]),
        ("closeDate", "next week"),
        ("closeDate", 20240310),
        ("status", 3),
        ("createdAt", "yesterday"),
        ("updatedAt", "2024-01-15T25:00:00Z"),  # no such hour
        ("id", 42),
    ],
)
def test_to_canonical_wrong_types_raise_naming_the_field(field: str, value: Any) -> None:
    # given the documented record with one field of the wrong type or range
    record = {**DOC_RECORD, field: value}
    # when / then the error names that field
    with pytest.raises(ValidationError) as caught:
        salescaling.to_canonical(record, M)
    assert field in caught.value.messages


def test_to_canonical_status_follows_the_mapping_file() -> None:
    # given a tenant whose "won" is "closed_won"
    # when its record is translated
    opp = salescaling.to_canonical({**DOC_RECORD, "status": "closed_won"}, TENANT)
    # then the canonical status is won
    assert opp.status is Status.WON


def test_to_canonical_close_date_is_the_utc_date_and_times_are_utc() -> None:
    # given a close date and timestamps written with an offset
    record = {
        **DOC_RECORD,
        "closeDate": "2024-03-10T23:30:00.000-02:00",
        "updatedAt": "2024-01-15T12:00:00.000+02:00",
    }
    # when it is translated
    opp = salescaling.to_canonical(record, M)
    # then the close date is the UTC calendar date and the times are UTC
    assert opp.close_date == date(2024, 3, 11)
    assert opp.updated_at == datetime(2024, 1, 15, 10, tzinfo=UTC)
    assert opp.updated_at.tzinfo is UTC


def test_to_canonical_accepts_a_bare_close_date() -> None:
    # given a close date without a time
    # when / then it is read as that date
    opp = salescaling.to_canonical({**DOC_RECORD, "closeDate": "2024-03-10"}, M)
    assert opp.close_date == date(2024, 3, 10)


def test_record_id_reads_the_uuid_and_refuses_a_missing_one() -> None:
    # given records with and without an id
    # when / then
    assert salescaling.record_id(DOC_RECORD) == DOC_RECORD["id"]
    with pytest.raises(ValidationError):
        salescaling.record_id({"name": "x"})


# -- outbound ------------------------------------------------------------------------------


def test_to_body_carries_every_synced_field_with_nulls() -> None:
    # given an opportunity with only a name
    # when its body is built
    body = salescaling.to_body(Opportunity(name="Deal"), M)
    # then every writable synced field is present, empty ones as None
    assert body == {
        "name": "Deal",
        "amount": None,
        "description": None,
        "closeDate": None,
        "closeProbability": None,
        "status": None,
    }


def test_to_body_formats_numbers_dates_and_status() -> None:
    # given a full opportunity, including fields Salescaling cannot hold
    opp = Opportunity(
        name="Deal",
        amount=Decimal("1200.50"),
        status=Status.WON,
        close_date=date(2024, 3, 10),
        description="d",
        probability=Decimal("75"),
        stage="won",
        owner="alice@example.com",
        contact=Contact(name="Ann"),
        company="Acme",
    )
    # when its body is built
    body = salescaling.to_body(opp, M)
    # then numbers are JSON numbers, the date is midnight UTC, unsynced fields are absent
    assert body == {
        "name": "Deal",
        "amount": 1200.5,
        "description": "d",
        "closeDate": "2024-03-10T00:00:00.000Z",
        "closeProbability": 75,
        "status": "won",
    }
    assert isinstance(body["closeProbability"], int)


def test_to_body_status_follows_the_mapping_file() -> None:
    # given a tenant that calls won "closed_won"
    # when / then
    assert salescaling.to_body(Opportunity(status=Status.WON), TENANT)["status"] == "closed_won"


def test_project_keeps_only_synced_fields_and_metadata_is_reset() -> None:
    # given an opportunity with every field and metadata set
    opp = Opportunity(
        name="Deal",
        amount=Decimal("10"),
        status=Status.OPEN,
        stage="new",
        close_date=date(2024, 1, 2),
        description="d",
        probability=Decimal("5"),
        owner="alice@example.com",
        contact=Contact(email="a@b.c"),
        company="Acme",
        created_at=datetime(2024, 1, 1, tzinfo=UTC),
        updated_at=datetime(2024, 1, 1, tzinfo=UTC),
        deleted=True,
    )
    # when it is projected
    projected = salescaling.project(opp, M)
    # then only the six synced fields survive
    assert projected == Opportunity(
        name="Deal",
        amount=Decimal("10.00"),
        status=Status.OPEN,
        close_date=date(2024, 1, 2),
        description="d",
        probability=Decimal("5.00"),
    )


def test_project_collapses_a_status_the_tenant_lacks() -> None:
    # given a tenant where abandoned is written as lost
    # when an abandoned deal is projected
    # then Salescaling gives it back as lost
    assert salescaling.project(Opportunity(status=Status.ABANDONED), TENANT).status is Status.LOST


def test_project_truncates_a_datetime_close_date() -> None:
    # given a close date that is a date-time late in the UTC day
    opp = Opportunity(close_date=datetime(2024, 3, 10, 23, 59, tzinfo=UTC))
    # when / then only the date is kept, and the body says midnight of it
    assert salescaling.project(opp, M).close_date == date(2024, 3, 10)
    assert salescaling.to_body(opp, M)["closeDate"] == "2024-03-10T00:00:00.000Z"


# -- events (Standard Webhooks from the customer's automation) -------------------------------


def test_parse_native_reads_thin_fat_and_enveloped_payloads() -> None:
    # given the three shapes an automation may send
    # when / then each names the record, and the fat ones carry it
    thin = salescaling.parse_native({"id": DOC_RECORD["id"]})
    assert thin is not None and thin.vendor_id == DOC_RECORD["id"] and thin.record is None
    fat = salescaling.parse_native(DOC_RECORD)
    assert fat is not None and fat.record == DOC_RECORD
    assert fat.event_time == datetime(2024, 1, 15, 10, tzinfo=UTC)
    wrapped = salescaling.parse_native(
        {"statusCode": 200, "count": 1, "error": None, "data": DOC_RECORD}
    )
    assert wrapped is not None and wrapped.record == DOC_RECORD


def test_parse_native_ignores_meeting_events_and_refuses_garbage() -> None:
    # given a native meeting event and a payload that is neither record nor id
    # when / then the meeting event is ignored and the other is invalid
    assert salescaling.parse_native({"meetingId": "m1", "status": "meeting_created"}) is None
    with pytest.raises(ValidationError) as caught:
        salescaling.parse_native({"name": "no id"})
    assert "id" in caught.value.messages


# -- the round trip ------------------------------------------------------------------------


@given(opp=opportunities())
def test_round_trip_stored_record_reads_back_as_the_projection(
    sim: SalescalingSimulator, opp: Opportunity
) -> None:
    # given any canonical opportunity, written as the simulator stores a create
    for mapping in (M, TENANT):
        record = stored_record(sim, opp, mapping)
        # when the stored record is read back
        back = salescaling.to_canonical(record, mapping)
        # then it equals the projection on the synced fields, and projecting is idempotent
        projected = salescaling.project(opp, mapping)
        assert synced(back) == synced(projected)
        assert salescaling.project(projected, mapping) == projected
