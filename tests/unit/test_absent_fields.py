"""A key a vendor record leaves out is unknown, never cleared; a value the mapping does not
know leaves its field unknown and is reported. Every vendor, every synced field."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from schemas import icloudready, ivvy, leadway, salescaling, siro
from schemas.opportunity import Opportunity, Status
from tests.strategies import EXAMPLE_MAPPING as M

#: A record of each vendor carrying every synced field (the read shape of its API).
FULL: dict[str, dict[str, Any]] = {
    "siro": {
        "id": "u-1", "externalId": "opp_1", "name": "Gala", "amount": 100,
        "closedAt": "2027-03-15 00:00:00.000", "disposition": "OPEN",
        "account": {"id": "a", "externalId": "opp_1:account", "name": "Harbour Events"},
        "opportunityUsers": [{"externalId": "u", "email": "alice@example.com"}],
        "opportunityContacts": [{"externalId": "c", "name": "Dana Smith",
                                 "emailAddresses": ["dana@x.example"], "phoneNumbers": [],
                                 "isPrimary": True}],
    },
    "leadway": {
        "id": "o-1", "name": "Gala", "monetaryValue": 100, "status": "open",
        "pipelineStageId": "e93ba61a-53b3-45e7-985a-c7732dbcdb69",
        "assignedTo": "bNl8QNGXhIQJLv8eeASQ",
        "contact": {"id": "c", "name": "Dana Smith", "email": "dana@x.example", "phone": None,
                    "companyName": "Harbour Events"},
    },
    "ivvy": {
        "id": 7, "name": "Gala", "description": "Three days", "stageId": 70,
        "stageName": "Proposal", "closedDate": "2027-03-15",
        "ownerUser": {"id": 12, "email": "alice@example.com"},
        "contact": {"id": 3, "firstName": "Dana", "lastName": "Smith",
                    "email": "dana@x.example"},
        "company": {"id": 4, "businessName": "Harbour Events"},
    },
    "salescaling": {
        "id": "s-1", "name": "Gala", "amount": 100, "description": "Three days",
        "closeDate": "2027-03-15T00:00:00.000Z", "closeProbability": 60, "status": "open",
    },
    "icloudready": {
        "_id": "i-1", "opportunityInformation": {"name": "Gala"},
        "opportunityDescription": "Three days", "revenue": 100, "probability": 0.6,
        "closeDate": "2027-03-15", "status": "active", "stage": "stage2",
        "opportunityOwner": "609a8f85c2834915d0a5a5e2",
    },
}  # fmt: skip

SCHEMAS: dict[str, ModuleType] = {
    "siro": siro, "leadway": leadway, "ivvy": ivvy, "salescaling": salescaling,
    "icloudready": icloudready,
}  # fmt: skip

#: The record keys that carry each synced field (removing them all leaves it out).
KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    "siro": {"name": ("name",), "amount": ("amount",), "status": ("disposition",),
             "close_date": ("closedAt",), "owner": ("opportunityUsers",),
             "contact": ("opportunityContacts",), "company": ("account",)},
    "leadway": {"name": ("name",), "amount": ("monetaryValue",),
                "status": ("status",), "stage": ("pipelineStageId",),
                "owner": ("assignedTo",), "contact": ("contact",), "company": ("contact",)},
    "ivvy": {"name": ("name",), "description": ("description",),
             "stage": ("stageId", "stageName"), "status": ("stageId", "stageName"),
             "close_date": ("closedDate",), "owner": ("ownerUser",), "contact": ("contact",),
             "company": ("company",)},
    "salescaling": {"name": ("name",), "amount": ("amount",), "status": ("status",),
                    "close_date": ("closeDate",), "description": ("description",),
                    "probability": ("closeProbability",)},
    "icloudready": {"name": ("opportunityInformation",),
                    "description": ("opportunityDescription",), "amount": ("revenue",),
                    "probability": ("probability",), "close_date": ("closeDate",),
                    "status": ("status",), "stage": ("stage",),
                    "owner": ("opportunityOwner",)},
}  # fmt: skip

CASES = [(vendor, name) for vendor, module in SCHEMAS.items() for name in module.SYNCED_FIELDS]

#: A value each vendor's enumerated fields may take that the example mapping does not know.
UNKNOWN_VALUES: dict[str, tuple[str, Any, str]] = {
    "siro": ("disposition", "PENDING", "status"),
    "leadway": ("status", "all", "status"),
    "ivvy": ("stageId", 99, "stage"),
    "salescaling": ("status", "on-hold", "status"),
    "icloudready": ("status", "pending-review", "status"),
}


def read(vendor: str, record: dict[str, Any]) -> Opportunity:
    opp: Opportunity = SCHEMAS[vendor].to_canonical(record, M)
    return opp


def test_every_synced_field_has_its_record_keys_listed() -> None:
    for vendor, module in SCHEMAS.items():
        assert set(KEYS[vendor]) == set(module.SYNCED_FIELDS), vendor


@pytest.mark.parametrize(("vendor", "name"), CASES)
def test_full_record_carries_every_synced_field(vendor: str, name: str) -> None:
    # given a record with every key / when read / then no field is unknown and each is set
    opp = read(vendor, FULL[vendor])
    assert name not in opp.unknown
    assert getattr(opp, name) is not None


@pytest.mark.parametrize(("vendor", "name"), CASES)
def test_absent_key_leaves_its_field_unknown_not_cleared(vendor: str, name: str) -> None:
    # given the record without the key(s) of one synced field
    record = {k: v for k, v in FULL[vendor].items() if k not in KEYS[vendor][name]}
    # when it is read
    opp = read(vendor, record)
    # then that field is unknown, and the fields it still carries are known
    assert name in opp.unknown
    carried = {n for n, keys in KEYS[vendor].items() if not set(keys) & set(KEYS[vendor][name])}
    assert not carried & opp.unknown
    # and filled in from what we hold, the value is what we hold, not a cleared one
    held = read(vendor, FULL[vendor])
    assert getattr(opp.completed(held), name) == getattr(held, name)


@pytest.mark.parametrize(
    ("vendor", "key"),
    [("siro", "amount"), ("siro", "opportunityContacts"), ("leadway", "monetaryValue"),
     ("ivvy", "description"), ("salescaling", "amount"), ("icloudready", "revenue")],
)  # fmt: skip
def test_explicit_null_clears_its_field(vendor: str, key: str) -> None:
    # given a record whose key is there and null
    opp = read(vendor, {**FULL[vendor], key: None})
    # then the field is known, and empty
    (name,) = [n for n, keys in KEYS[vendor].items() if keys == (key,)]
    assert name not in opp.unknown and getattr(opp, name) is None


@pytest.mark.parametrize("vendor", list(UNKNOWN_VALUES))
def test_unmapped_value_leaves_only_its_field_unknown_and_is_reported(vendor: str) -> None:
    # given a record whose enumerated value the mapping does not know
    key, value, name = UNKNOWN_VALUES[vendor]
    # when it is read (no refusal)
    opp = read(vendor, {**FULL[vendor], key: value})
    # then that field is unknown, the value is reported, and the rest of the record reads
    assert name in opp.unknown
    assert [k for k, _ in opp.unmapped] == [key] and str(value) in opp.unmapped[0][1]
    assert opp.name == "Gala"


def test_ivvy_unmapped_stage_named_won_still_reads_won() -> None:
    # given a stage the mapping lacks whose name says won (DESIGN.md: iVvy status by name)
    opp = read("ivvy", {**FULL["ivvy"], "stageId": 99, "stageName": "Won - Deposit Paid"})
    # then the status is won and only the stage is unknown
    assert opp.status is Status.WON and "status" not in opp.unknown and "stage" in opp.unknown
