"""Salescaling opportunities <-> canonical: the API record in, the create/update body out.

Pure translation, no I/O. The record is what ``GET /api/v1/opportunities/{id}`` returns
under ``data`` (https://docs.salescaling.com/api/opportunities, copied in
vendor-docs/salescaling-opportunities.txt):
``id`` (UUID), ``name``, ``amount``, ``description``, ``closeDate`` (ISO date-time),
``closeProbability`` (0-100), ``status`` and the read-only ``createdAt``/``updatedAt``.

Salescaling has no stage, owner, contact or company on the opportunity itself (contacts and
companies are separate relationships), so only six canonical fields are synced. Its
``closeDate`` is a date-time; we write midnight UTC and read back the UTC calendar date.
There is no external-id field, so nothing of ours is stamped on the record.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from schemas.envelope import InboundEvent, is_thin, thin_event
from schemas.mapping import Mapping
from schemas.opportunity import Opportunity, json_number, not_carried, to_decimal
from schemas.timestamps import Timestamp, parse_timestamp

VENDOR = "salescaling"

SYNCED_FIELDS: frozenset[str] = frozenset(
    {"name", "amount", "status", "close_date", "description", "probability"}
)

#: The record key each synced field is read from: a record without it says nothing about
#: that field.
RECORD_KEYS: dict[str, str] = {
    "name": "name", "amount": "amount", "status": "status", "close_date": "closeDate",
    "description": "description", "probability": "closeProbability",
}  # fmt: skip

#: Keys of Salescaling's own (non-opportunity) webhooks: meeting and note status events
#: (VENDORS.md §4.7, https://docs.salescaling.com/en/api/webhooks).
NATIVE_EVENT_KEYS: frozenset[str] = frozenset({"meetingId", "meetingNoteId", "signalId"})


class _Number(fields.Field):
    """A JSON number (not a string, not a boolean), loaded as a two-place Decimal."""

    default_error_messages = {"invalid": "Not a valid number."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        try:
            result = to_decimal(value)
        except InvalidOperation:  # NaN, infinity, or too large for two places
            raise self.make_error("invalid") from None
        if result is None or not result.is_finite():
            raise self.make_error("invalid")
        return result


class _CloseDate(fields.Field):
    """``closeDate``: an ISO date-time (its UTC calendar date) or, tolerantly, a bare date."""

    default_error_messages = {"invalid": "Not a valid ISO date-time."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> date:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        try:
            if len(value) == 10:
                return date.fromisoformat(value)
            return parse_timestamp(value).date()
        except ValueError:
            raise self.make_error("invalid") from None


class SalescalingOpportunitySchema(Schema):
    """One opportunity record as the Salescaling API returns it (unknown keys ignored)."""

    class Meta:
        unknown = EXCLUDE

    id = fields.String(required=True, validate=validate.Length(min=1))
    name = fields.String(allow_none=True, load_default=None)
    amount = _Number(allow_none=True, load_default=None)
    description = fields.String(allow_none=True, load_default=None)
    close_date = _CloseDate(data_key="closeDate", allow_none=True, load_default=None)
    probability = _Number(
        data_key="closeProbability",
        allow_none=True,
        load_default=None,
        validate=validate.Range(min=0, max=100),
    )
    status = fields.String(allow_none=True, load_default=None)
    created_at = Timestamp(data_key="createdAt", allow_none=True, load_default=None)
    updated_at = Timestamp(data_key="updatedAt", allow_none=True, load_default=None)


_RECORD = SalescalingOpportunitySchema()


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(UTC)


def _as_date(value: date | None) -> date | None:
    """A date as Salescaling keeps it: a date-time is cut to its (UTC) calendar date."""
    if isinstance(value, datetime):
        return (value.astimezone(UTC) if value.tzinfo else value).date()
    return value


def record_id(record: dict[str, Any]) -> str:
    """The record's Salescaling id (a UUID string)."""
    value = record.get("id") if isinstance(record, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise ValidationError({"id": ["Missing or not a string."]})
    return value.strip()


def to_canonical(record: dict[str, Any], mapping: Mapping) -> Opportunity:
    """The canonical value of one API record; raises ``ValidationError`` naming bad fields."""
    data = _RECORD.load(record)
    unknown = not_carried(record, RECORD_KEYS)
    unmapped: tuple[tuple[str, str], ...] = ()
    status = mapping.status_in(VENDOR, data["status"])
    if data["status"] is not None and status is None:
        # A tenant-specific status we cannot place: unknown, not guessed, and reported (the
        # mapping file's [statuses.salescaling] table is where the operator teaches us).
        unknown, unmapped = unknown | {"status"}, (("status", data["status"]),)
    return Opportunity(
        name=data["name"],
        amount=data["amount"],
        status=status,
        close_date=data["close_date"],
        description=data["description"],
        probability=data["probability"],
        created_at=_utc(data["created_at"]),
        updated_at=_utc(data["updated_at"]),
        unknown=unknown,
        unmapped=unmapped,
    )


def project(opp: Opportunity, mapping: Mapping) -> Opportunity:
    """What Salescaling would hold and give back if ``opp`` were written to it."""
    status = None
    if opp.status is not None:
        status = mapping.status_in(VENDOR, mapping.status_out(VENDOR, opp.status))
    return Opportunity(
        name=opp.name,
        amount=to_decimal(json_number(opp.amount)),
        status=status,
        close_date=_as_date(opp.close_date),
        description=opp.description,
        probability=to_decimal(json_number(opp.probability)),
    )


def close_date_out(value: date | None) -> str | None:
    """``closeDate`` as the docs show it: midnight UTC, milliseconds, ``Z``."""
    day = _as_date(value)
    return None if day is None else f"{day.isoformat()}T00:00:00.000Z"


def to_body(opp: Opportunity, mapping: Mapping) -> dict[str, Any]:
    """The body of ``POST`` (create) and ``PUT /{id}`` (update): every synced field, ``None``
    sent as ``null`` so a replacing ``PUT`` still leaves the right values (DESIGN.md)."""
    return {
        "name": opp.name,
        "amount": json_number(opp.amount),
        "description": opp.description,
        "closeDate": close_date_out(opp.close_date),
        "closeProbability": json_number(opp.probability),
        "status": None if opp.status is None else mapping.status_out(VENDOR, opp.status),
    }


def parse_native(payload: dict[str, Any]) -> InboundEvent | None:
    """A Standard Webhooks delivery from the customer's automation: the record (bare or in
    the API's ``{"statusCode", "data"}`` envelope) or ``{"id": ...}``. Salescaling's own
    meeting/note events are not about opportunities: ``None``. Raises ``ValidationError``."""
    if not isinstance(payload, dict):
        raise ValidationError({"_schema": ["Payload must be a JSON object."]})
    if isinstance(payload.get("data"), dict) and "statusCode" in payload:
        payload = payload["data"]
    if "id" not in payload and NATIVE_EVENT_KEYS & payload.keys():
        return None
    if is_thin(payload):
        return thin_event(payload)
    data = _RECORD.load(payload)
    return InboundEvent(
        vendor_id=data["id"].strip(), record=payload, event_time=_utc(data["updated_at"])
    )
