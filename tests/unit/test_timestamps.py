"""Every vendor's timestamps are read by one tolerant reader (schemas/timestamps.py): each
form a vendor page shows or allows, for every timestamp field of every vendor record."""

from __future__ import annotations

from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import pytest
from marshmallow import ValidationError

from schemas import icloudready, ivvy, leadway, salescaling, siro
from schemas.mapping import Mapping
from schemas.timestamps import parse_timestamp

TEN = datetime(2024, 3, 1, 10, 0, 0, tzinfo=UTC)

#: (form, what it means) — iVvy's own form with and without its zone word, ISO 8601 with
#: a "T" or a space, "Z", offsets, fractions of any length, and the RFC 1123 header form.
FORMS: list[tuple[str, datetime]] = [
    ("2024-03-01 10:00:00", TEN),
    ("2024-03-01 10:00:00 UTC", TEN),
    ("2024-03-01T10:00:00", TEN),
    ("2024-03-01T10:00:00Z", TEN),
    ("2024-03-01T10:00:00.123Z", TEN.replace(microsecond=123000)),
    ("2024-03-01 10:00:00.692", TEN.replace(microsecond=692000)),
    ("2024-03-01T10:00:00.123456789Z", TEN.replace(microsecond=123456)),
    ("2024-03-01T12:00:00+02:00", TEN),
    ("2024-03-01T05:00:00.5-0500", TEN.replace(microsecond=500000)),
    ("2024-03-01T10:00:00+00:00 ", TEN),
    ("Fri, 01 Mar 2024 10:00:00 UTC", TEN),
    ("Fri, 01 Mar 2024 10:00:00 GMT", TEN),
]

GARBAGE = ["yesterday", "2024-03-01 25:00:00", "2024-13-01T10:00:00Z", "10:00", "Fri, soon"]

#: (schema module, a minimal valid record, its timestamp keys and the canonical field each
#: one lands in).
VENDORS: dict[str, tuple[ModuleType, dict[str, Any], dict[str, str]]] = {
    "siro": (siro, {"id": "u-1"}, {"createdAt": "created_at", "updatedAt": "updated_at"}),
    "leadway": (leadway, {"id": "o-1"}, {"createdAt": "created_at", "updatedAt": "updated_at"}),
    "ivvy": (
        ivvy,
        {"id": 7, "name": "Gala"},
        {"createdDate": "created_at", "modifiedDate": "updated_at"},
    ),
    "salescaling": (
        salescaling,
        {"id": "s-1"},
        {"createdAt": "created_at", "updatedAt": "updated_at"},
    ),
    "icloudready": (
        icloudready,
        {"_id": "i-1"},
        {"createdAt": "created_at", "updatedAt": "updated_at"},
    ),
}

CASES = [
    (vendor, key, form)
    for vendor, (_, _, keys) in VENDORS.items()
    for key in keys
    for form in FORMS
]


@pytest.mark.parametrize(("vendor", "key", "form"), CASES, ids=lambda v: str(v))
def test_to_canonical_reads_every_timestamp_form(
    vendor: str, key: str, form: tuple[str, datetime]
) -> None:
    # given a record of the vendor with one timestamp in one of the forms
    module, base, keys = VENDORS[vendor]
    text, meant = form
    # when it is translated
    opp = module.to_canonical({**base, key: text}, Mapping())
    # then the canonical time is that instant, aware UTC
    value = getattr(opp, keys[key])
    assert value == meant
    assert value.tzinfo is UTC


@pytest.mark.parametrize("garbage", GARBAGE)
@pytest.mark.parametrize(
    ("vendor", "key"), [(v, k) for v, (_, _, keys) in VENDORS.items() for k in keys]
)
def test_to_canonical_refuses_a_garbage_timestamp_naming_the_field(
    vendor: str, key: str, garbage: str
) -> None:
    # given a record whose timestamp is not one
    module, base, _ = VENDORS[vendor]
    # when / then the refusal names that field
    with pytest.raises(ValidationError) as refused:
        module.to_canonical({**base, key: garbage}, Mapping())
    assert key in refused.value.messages


def test_ivvy_notification_reads_a_zone_suffixed_record() -> None:
    # given an OpportunityUpdated message whose record carries " UTC" (the IVVY-Date form)
    record = {
        "id": 7,
        "name": "Gala",
        "createdDate": "2024-03-01 09:00:00 UTC",
        "modifiedDate": "2024-03-01 10:00:00 UTC",
    }
    message = {"Subject": "OpportunityUpdated", "Body": {"data": record, "previousData": record}}
    # when it is parsed
    event = ivvy.parse_native(message)
    # then it is an event about that record, stamped with its modifiedDate
    assert event is not None and event.vendor_id == "7" and event.event_time == TEN


def test_leadway_webhook_reads_its_timestamp_in_any_form() -> None:
    # given a native webhook whose timestamp has an offset and no fraction
    event = leadway.parse_native(
        {"type": "OpportunityUpdate", "id": "o-1", "timestamp": "2024-03-01T12:00:00+02:00"}
    )
    # then the event time is the instant meant
    assert event is not None and event.event_time == TEN


def test_parse_timestamp_keeps_the_instant_of_every_form() -> None:
    for text, meant in FORMS:
        assert parse_timestamp(text) == meant, text
