"""SIRO translation: records in, sync bodies out, and the round trip through the simulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from marshmallow import ValidationError

from schemas import siro
from schemas.mapping import Mapping
from schemas.opportunity import SYNCED_FIELDS, Contact, Opportunity, Status
from tests.strategies import EXAMPLE_MAPPING, opportunities
from worker.sandbox.simulators.siro import SiroSimulator, validate_sync

M = EXAMPLE_MAPPING


def a_record(**overrides: Any) -> dict[str, Any]:
    """A SIRO opportunity as ``GET /v1/integrations/opportunities/{id}`` answers it."""
    record: dict[str, Any] = {
        "id": "6f1c1f5e-0d7e-4c47-9a53-3b1f0b6b8a11",
        "externalId": "opp-1",
        "createdAt": "2024-03-01T10:00:00.000Z",
        "updatedAt": "2024-03-02T11:30:00.250Z",
        "organizationId": "org-1",
        "name": "Harbour fit-out",
        "amount": 12500.5,
        "closedAt": "2024-06-30T00:00:00.000Z",
        "disposition": "OPEN",
        "recordingId": None,
        "accountId": "acc-1",
        "account": {"id": "acc-1", "externalId": "opp-1:account", "name": "Harbour Pty"},
        "opportunityUsers": [{"externalId": "u-1", "email": "alice@example.com"}],
        "opportunityContacts": [
            {
                "externalId": "contact:bob@example.com",
                "name": "Bob Stone",
                "emailAddresses": ["bob@example.com"],
                "phoneNumbers": ["+61400000000"],
                "isPrimary": True,
            }
        ],
        "deletedAt": None,
        "someFutureField": {"ignored": True},
    }
    record.update(overrides)
    return record


@pytest.fixture(scope="module")
def sim() -> Iterator[SiroSimulator]:
    simulator = SiroSimulator()  # not started: its storage is used directly
    yield simulator
    simulator.stop()


# -- inbound -----------------------------------------------------------------------------------
def test_to_canonical_reads_every_synced_field() -> None:
    # given a full SIRO record
    record = a_record()
    # when it is translated
    opp = siro.to_canonical(record, M)
    # then the synced fields and SIRO's own timestamps are read; the rest stay None
    assert opp == Opportunity(
        name="Harbour fit-out",
        amount=Decimal("12500.50"),
        status=Status.OPEN,
        close_date=date(2024, 6, 30),
        owner="alice@example.com",
        contact=Contact(name="Bob Stone", email="bob@example.com", phone="+61400000000"),
        company="Harbour Pty",
        created_at=datetime(2024, 3, 1, 10, 0, tzinfo=UTC),
        updated_at=datetime(2024, 3, 2, 11, 30, 0, 250000, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("disposition", "status"),
    [("OPEN", Status.OPEN), ("WON", Status.WON), ("LOST", Status.LOST), ("won", Status.WON)],
)
@pytest.mark.parametrize("mapping", [M, Mapping()], ids=["example", "default"])
def test_to_canonical_maps_disposition(disposition: str, status: Status, mapping: Mapping) -> None:
    # given a record with a disposition (the example mapping sends abandoned as LOST too)
    record = a_record(disposition=disposition)
    # when it is translated
    opp = siro.to_canonical(record, mapping)
    # then SIRO's LOST is read as lost, never as abandoned
    assert opp.status is status


def test_to_canonical_tolerates_missing_and_null_fields() -> None:
    # given a record holding only its id
    record = {"id": "abc"}
    # when it is translated
    opp = siro.to_canonical(record, M)
    # then nothing is invented
    assert opp == Opportunity()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2024-03-01T10:00:00Z", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01 10:00:00.500", datetime(2024, 3, 1, 10, 0, 0, 500000, tzinfo=UTC)),
        ("2024-03-01T12:00:00+02:00", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01", datetime(2024, 3, 1, tzinfo=UTC)),
    ],
)
def test_to_canonical_reads_timestamps_tolerantly(raw: str, expected: datetime) -> None:
    # given a record whose updatedAt is in one of the forms SIRO may use
    record = a_record(updatedAt=raw)
    # when it is translated
    opp = siro.to_canonical(record, M)
    # then the time is aware UTC (naive taken as UTC)
    assert opp.updated_at == expected
    assert opp.updated_at is not None and opp.updated_at.tzinfo is UTC


def test_to_canonical_keeps_the_date_of_closed_at_as_written() -> None:
    # given closedAt in the docs' example form and with a zone late in the day
    for raw in ("2024-02-28 20:09:58.692", "2024-02-28T23:30:00-05:00"):
        # when it is translated
        opp = siro.to_canonical(a_record(closedAt=raw), M)
        # then the day is the one written
        assert opp.close_date == date(2024, 2, 28)


def test_to_canonical_picks_the_primary_contact_else_the_first() -> None:
    # given two contacts, the second primary
    first = {"externalId": "c1", "name": "First", "emailAddresses": [], "phoneNumbers": ["+1"]}
    second = {
        "externalId": "c2",
        "name": "Second",
        "emailAddresses": ["s@x.com"],
        "isPrimary": True,
    }
    # when translated with and without a primary flag
    with_primary = siro.to_canonical(a_record(opportunityContacts=[first, second]), M)
    without = siro.to_canonical(
        a_record(opportunityContacts=[first, {**second, "isPrimary": False}]), M
    )
    # then the primary wins, else the first
    assert with_primary.contact == Contact(name="Second", email="s@x.com")
    assert without.contact == Contact(name="First", phone="+1")


def test_to_canonical_reads_owner_from_mapping_when_email_missing() -> None:
    # given a user with only SIRO's externalId, which the mapping knows
    mapping = Mapping(owners={"carol@example.com": {"siro": "u-9"}})
    record = a_record(opportunityUsers=[{"externalId": "u-9"}])
    # when translated
    opp = siro.to_canonical(record, mapping)
    # then the owner is the mapped email
    assert opp.owner == "carol@example.com"


def test_to_canonical_marks_soft_deleted_records() -> None:
    # given a record with deletedAt set
    record = a_record(deletedAt="2024-04-01T00:00:00.000Z")
    # when translated, then it is deleted
    assert siro.to_canonical(record, M).deleted is True


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", None),
        ("id", 42),
        ("amount", "12.50"),
        ("amount", True),
        ("name", 5),
        ("createdAt", 1700000000),
        ("updatedAt", "yesterday"),
        ("closedAt", "soon"),
        ("account", "Harbour Pty"),
        ("opportunityUsers", "alice"),
        ("opportunityContacts", [{"emailAddresses": "bob@example.com"}]),
    ],
)
def test_to_canonical_rejects_wrong_types_naming_the_field(field: str, value: Any) -> None:
    # given a record with one bad field
    record = a_record(**{field: value})
    # when translated, then ValidationError names that field
    with pytest.raises(ValidationError) as info:
        siro.to_canonical(record, M)
    assert field in info.value.messages


def test_to_canonical_rejects_a_record_without_id() -> None:
    # given a record with no id, when translated, then the id is named
    record = a_record()
    del record["id"]
    with pytest.raises(ValidationError) as info:
        siro.to_canonical(record, M)
    assert "id" in info.value.messages


def test_record_id_and_key_of_read_siro_and_our_ids() -> None:
    # given a record, when its ids are read, then SIRO's id and our key come back
    assert siro.record_id(a_record()) == "6f1c1f5e-0d7e-4c47-9a53-3b1f0b6b8a11"
    assert siro.key_of(a_record()) == "opp-1"
    assert siro.key_of(a_record(externalId=None)) is None
    with pytest.raises(ValidationError):
        siro.record_id({"id": ""})


def test_parse_native_reads_fat_thin_and_ignores_recording_events() -> None:
    # given a fat record, a thin id and one of SIRO's recording webhooks
    fat = siro.parse_native(a_record(deletedAt="2024-04-01T00:00:00Z"))
    thin = siro.parse_native({"id": 7})
    recording = siro.parse_native({"eventType": "integrations.recordingLinked", "recordingId": "r"})
    # then the record is carried, the thin one must be fetched, recordings are not ours
    assert fat is not None and fat.record is not None and fat.deleted
    assert fat.vendor_id == "6f1c1f5e-0d7e-4c47-9a53-3b1f0b6b8a11"
    assert thin is not None and thin.vendor_id == "7" and thin.record is None
    assert recording is None


# -- outbound ----------------------------------------------------------------------------------
FULL = Opportunity(
    name="Harbour fit-out",
    amount=Decimal("12500.50"),
    status=Status.ABANDONED,
    stage="proposal",
    close_date=date(2024, 6, 30),
    description="not synced to SIRO",
    probability=Decimal("40"),
    owner="alice@example.com",
    contact=Contact(name="Bob Stone", email="bob@example.com", phone="+61400000000"),
    company="Harbour Pty",
    created_at=datetime(2024, 3, 1, 10, tzinfo=UTC),
    updated_at=datetime(2024, 3, 2, 11, 30, tzinfo=UTC),
)


def test_to_body_carries_every_synced_field() -> None:
    # given a full canonical value, when it becomes a sync body
    body = siro.to_body(FULL, M, key="opp-1")
    # then every field SIRO holds is there, in SIRO's names and formats
    assert body == {
        "externalId": "opp-1",
        "name": "Harbour fit-out",
        "amount": 12500.5,
        "closedAt": "2024-06-30 00:00:00.000",
        "disposition": "LOST",
        "deletedAt": None,
        "remoteCreatedAt": "2024-03-01T10:00:00.000Z",
        "lastActivityAt": "2024-03-02T11:30:00.000Z",
        "account": {"externalId": "opp-1:account", "name": "Harbour Pty"},
        "opportunityContacts": [
            {
                "externalId": "contact:bob@example.com",
                "name": "Bob Stone",
                "emailAddresses": ["bob@example.com"],
                "phoneNumbers": ["+61400000000"],
                "isPrimary": True,
            }
        ],
        "opportunityUsers": [{"externalId": "alice@example.com", "email": "alice@example.com"}],
    }
    assert validate_sync(body) == []


def test_to_body_clears_missing_values_explicitly() -> None:
    # given a value with nothing but a name, when it becomes a body
    body = siro.to_body(Opportunity(name="Bare"), M, key="opp-2")
    # then each cleared field is sent empty, so a replacing or merging SIRO both end right
    assert body["amount"] is None and body["closedAt"] is None and body["disposition"] is None
    assert body["account"] is None
    assert body["opportunityContacts"] == [] and body["opportunityUsers"] == []
    assert "remoteCreatedAt" not in body and "lastActivityAt" not in body


def test_to_body_uses_the_mapped_owner_id_and_contact_fallback_ids() -> None:
    # given an owner SIRO knows by id and contacts with only a phone, or nothing to match on
    mapping = Mapping(owners={"carol@example.com": {"siro": "u-9"}})
    phone_only = FULL.replace(owner="carol@example.com", contact=Contact(phone="+61411111111"))
    name_only = FULL.replace(contact=Contact(name="Dee"))
    # when they become bodies
    body = siro.to_body(phone_only, mapping, key="k")
    other = siro.to_body(name_only, mapping, key="k")
    # then the owner carries its SIRO id and the contacts ids from phone, else our key
    assert body["opportunityUsers"] == [{"externalId": "u-9", "email": "carol@example.com"}]
    assert body["opportunityContacts"][0]["externalId"] == "contact:+61411111111"
    assert other["opportunityContacts"][0]["externalId"] == "contact:k"


def test_to_body_stamps_deleted_at_for_a_deleted_value() -> None:
    # given deleted values with and without their own time
    stamped = siro.to_body(FULL.replace(deleted=True), M, key="k")
    now = datetime(2025, 1, 1, tzinfo=UTC)
    unstamped = siro.to_body(Opportunity(name="x", deleted=True), M, key="k", now=now)
    # then deletedAt is the value's time, else now
    assert stamped["deletedAt"] == "2024-03-02T11:30:00.000Z"
    assert unstamped["deletedAt"] == "2025-01-01T00:00:00.000Z"


def test_project_keeps_only_what_siro_holds() -> None:
    # given a full value, when projected
    projected = siro.project(FULL, M)
    # then unsynced fields and metadata are gone and abandoned became lost
    assert projected == Opportunity(
        name="Harbour fit-out",
        amount=Decimal("12500.50"),
        status=Status.LOST,
        close_date=date(2024, 6, 30),
        owner="alice@example.com",
        contact=FULL.contact,
        company="Harbour Pty",
    )


def test_project_truncates_a_date_time_and_drops_empty_values() -> None:
    # given a close date carrying a time, an empty company and an empty contact
    opp = Opportunity(
        close_date=datetime(2024, 6, 30, 18, 45, tzinfo=UTC), company="", contact=Contact(email="")
    )
    # when projected, then only the day is kept and empty values are absent
    projected = siro.project(opp, M)
    assert projected.close_date == date(2024, 6, 30)
    assert type(projected.close_date) is date
    assert projected.company is None and projected.contact is None


# -- the round trip ----------------------------------------------------------------------------
def _round_trip(sim: SiroSimulator, opp: Opportunity, mapping: Mapping) -> Opportunity:
    body = json.loads(json.dumps(siro.to_body(opp, mapping, key="opp-rt")))
    assert validate_sync(body) == []
    record, _created = sim.apply_sync(body)
    return siro.to_canonical(json.loads(json.dumps(record)), mapping)


@pytest.mark.parametrize("mapping", [M, Mapping()], ids=["example", "default"])
@settings(max_examples=150, deadline=None)
@given(opp=opportunities())
def test_round_trip_through_the_simulator_equals_projection(
    sim: SiroSimulator, mapping: Mapping, opp: Opportunity
) -> None:
    # given any canonical value, when it is written to SIRO and read back
    back = _round_trip(sim, opp, mapping)
    projected = siro.project(opp, mapping)
    # then SIRO holds exactly its projection, and projecting is idempotent
    assert {f: getattr(back, f) for f in SYNCED_FIELDS} == {
        f: getattr(projected, f) for f in SYNCED_FIELDS
    }
    assert siro.project(projected, mapping) == projected


def test_round_trip_carries_a_delete(sim: SiroSimulator) -> None:
    # given a deleted value, when written and read back, then SIRO says it is deleted
    assert _round_trip(sim, FULL.replace(deleted=True), M).deleted is True
    # and writing it again undeleted restores it
    assert _round_trip(sim, FULL, M).deleted is False
