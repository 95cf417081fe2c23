"""iCloudReady opportunity records to and from the canonical value: pure translation, no I/O.

The API page (https://www.icloud-ready.com/docs/api/opportunities/, VENDORS.md §5) lists
request fields but answers "No response schema" everywhere, so answers are read tolerantly
(DESIGN.md "iCloudReady fields"): a record's id from ``_id`` or ``id``, at the top level or
under ``data``; a list as a bare array or under ``data``. The name lives in
``opportunityInformation.name``, the description in ``opportunityDescription``, the amount in
``revenue``; ``probability`` is a fraction 0-1 there (canonical: a percentage 0-100);
``stage`` is a tenant sales-stage id and ``opportunityOwner`` a user id, both mapped through
the mapping file. iCloudReady holds no contact or company on the opportunity (it references
a ``customer`` record, fixed at create), so those are not synced.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from schemas.mapping import Mapping
from schemas.opportunity import Opportunity, json_number, not_carried, to_decimal
from schemas.timestamps import Timestamp, parse_timestamp

VENDOR = "icloudready"

SYNCED_FIELDS: frozenset[str] = frozenset(
    {"name", "amount", "status", "stage", "close_date", "description", "probability", "owner"}
)

#: The record key each synced field is read from: a record without it says nothing about
#: that field (the name is ``opportunityInformation.name``, checked on its own).
RECORD_KEYS: dict[str, str] = {
    "description": "opportunityDescription", "amount": "revenue", "probability": "probability",
    "close_date": "closeDate", "status": "status", "stage": "stage", "owner": "opportunityOwner",
}  # fmt: skip

#: The keys ``to_body`` writes (``VendorHTTP`` looks for them in a 400 answer).
BODY_KEYS: tuple[str, ...] = (
    "opportunityInformation",
    "opportunityDescription",
    "revenue",
    "probability",
    "closeDate",
    "status",
    "stage",
    "opportunityOwner",
    "customer",
)

_HUNDRED = Decimal(100)


class VendorDate(fields.Field):
    """``closeDate``: ``YYYY-MM-DD`` as sent; a stored date-time (``2023-06-30T00:00:00.000Z``,
    as a MongoDB Date would come back) keeps its calendar date."""

    default_error_messages = {"invalid": "Not a valid date (YYYY-MM-DD)."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> date:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        try:
            if len(value) == 10:
                return date.fromisoformat(value)
            parse_timestamp(value)  # the time must read too, though only the day is kept
            return date.fromisoformat(value.strip()[:10])
        except ValueError:
            raise self.make_error("invalid") from None


class Reference(fields.Field):
    """A reference to another record: its id, or the record itself when the API populates it
    (``{"_id": …, "name": …}``); loads as the id string."""

    default_error_messages = {"invalid": "Not a valid id or record reference."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, dict):
            value = value.get("_id", value.get("id"))
        if isinstance(value, bool) or not isinstance(value, str | int) or str(value) == "":
            raise self.make_error("invalid")
        return str(value)


class InformationSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    name = fields.String(allow_none=True, load_default=None)


class OpportunityRecordSchema(Schema):
    """One opportunity as ``GET /api/v2/opportunities/:id`` returns it."""

    class Meta:
        unknown = EXCLUDE

    information = fields.Nested(
        InformationSchema, data_key="opportunityInformation", allow_none=True, load_default=None
    )
    description = fields.String(
        data_key="opportunityDescription", allow_none=True, load_default=None
    )
    revenue = fields.Decimal(allow_none=True, load_default=None, validate=validate.Range(min=0))
    probability = fields.Decimal(
        allow_none=True, load_default=None, validate=validate.Range(min=0, max=1)
    )
    close_date = VendorDate(data_key="closeDate", allow_none=True, load_default=None)
    status = fields.String(allow_none=True, load_default=None)
    stage = Reference(allow_none=True, load_default=None)
    owner = Reference(data_key="opportunityOwner", allow_none=True, load_default=None)
    created_at = Timestamp(data_key="createdAt", allow_none=True, load_default=None)
    updated_at = Timestamp(data_key="updatedAt", allow_none=True, load_default=None)
    # Soft-delete flags, should the API (or an automation) hand back a deleted record.
    is_deleted = fields.Boolean(data_key="isDeleted", allow_none=True, load_default=False)
    deleted = fields.Boolean(allow_none=True, load_default=False)


_RECORD = OpportunityRecordSchema()


def unwrap_record(answer: Any) -> dict[str, Any]:
    """The record in an answer: the answer itself, or its ``data`` object."""
    if not isinstance(answer, dict):
        raise ValidationError({"_schema": ["expected a JSON object"]})
    inner = answer.get("data")
    if isinstance(inner, dict) and "_id" not in answer and "id" not in answer:
        return inner
    return answer


def unwrap_list(answer: Any) -> list[dict[str, Any]]:
    """The records in a list answer: a bare array, or the array under ``data``."""
    items = answer.get("data") if isinstance(answer, dict) else answer
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ValidationError({"data": ["expected an array of records, bare or under 'data'"]})
    return items


def record_id(record: dict[str, Any]) -> str:
    """The record's id: ``_id`` or ``id``, at the top level or under ``data``."""
    inner = unwrap_record(record)
    for candidate in (inner, record):
        for key in ("_id", "id"):
            value = candidate.get(key)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
                return str(value)
    raise ValidationError({"_id": ["the record has no '_id' or 'id'"]})


def to_canonical(record: dict[str, Any], mapping: Mapping) -> Opportunity:
    """The canonical value of a record (bare or under ``data``); raises ``ValidationError``."""
    inner = unwrap_record(record)
    data = _RECORD.load(inner)
    unknown = not_carried(inner, RECORD_KEYS)
    information = inner.get("opportunityInformation")
    if not isinstance(information, dict) or "name" not in information:
        unknown |= {"name"}
    unmapped: list[tuple[str, str]] = []
    status = mapping.status_in(VENDOR, data["status"])
    if data["status"] is not None and status is None:
        # An unmapped status must not read as "no status" (that would clear it elsewhere):
        # it is unknown, and reported so the operator can map it in [statuses.icloudready].
        unknown |= {"status"}
        unmapped.append(("status", data["status"]))
    stage = mapping.stage_by_vendor_id(VENDOR, data["stage"])
    if stage is None and data["stage"] is not None and mapping.maps_stages(VENDOR):
        unknown |= {"stage"}
        unmapped.append(("stage", data["stage"]))
    probability = data["probability"]
    return Opportunity(
        name=(data["information"] or {}).get("name"),
        amount=to_decimal(data["revenue"]),
        status=status,
        stage=stage.name if stage else None,
        close_date=data["close_date"],
        description=data["description"],
        probability=None if probability is None else to_decimal(probability * _HUNDRED),
        owner=mapping.owner_email(VENDOR, data["owner"]),
        created_at=_utc(data["created_at"]),
        updated_at=_utc(data["updated_at"]),
        deleted=bool(data["is_deleted"] or data["deleted"]),
        unknown=unknown,
        unmapped=tuple(unmapped),
    )


def project(opp: Opportunity, mapping: Mapping) -> Opportunity:
    """What iCloudReady holds and gives back after ``opp`` is written to it."""
    stage = mapping.stage_by_vendor_id(VENDOR, _stage_id(opp, mapping))
    status = None
    if opp.status is not None:
        status = mapping.status_in(VENDOR, mapping.status_out(VENDOR, opp.status))
    fraction = _fraction(opp.probability)
    return Opportunity(
        name=opp.name,
        amount=to_decimal(json_number(opp.amount)),
        status=status,
        stage=stage.name if stage else None,
        close_date=_day(opp.close_date),
        description=opp.description,
        probability=None if fraction is None else to_decimal(Decimal(str(fraction)) * _HUNDRED),
        owner=mapping.owner_email(VENDOR, mapping.owner_id(VENDOR, opp.owner)),
    )


def to_body(
    opp: Opportunity, mapping: Mapping, *, create: bool, customer: str | None = None
) -> dict[str, Any]:
    """The ``POST`` (``create``) or ``PATCH`` body. A PATCH carries every synced field, null
    for ``None``, because it changes only the keys it is given; a create leaves out what is
    unknown and names the ``customer`` the opportunity belongs to."""
    close_date = _day(opp.close_date)
    body: dict[str, Any] = {
        "opportunityInformation": {"name": opp.name},
        "opportunityDescription": opp.description,
        "revenue": json_number(opp.amount),
        "probability": _fraction(opp.probability),
        "closeDate": close_date.isoformat() if close_date else None,
        "status": mapping.status_out(VENDOR, opp.status) if opp.status is not None else None,
        "stage": _stage_id(opp, mapping),
        "opportunityOwner": mapping.owner_id(VENDOR, opp.owner),
    }
    if not create:
        return body
    body = {key: value for key, value in body.items() if value is not None}
    if customer:
        body["customer"] = customer
    return body


def _stage_id(opp: Opportunity, mapping: Mapping) -> str | None:
    """The stage's iCloudReady id, else the first stage of the status that has one."""
    stage_id = mapping.stage_id(VENDOR, opp.stage)
    if stage_id is None and opp.status is not None:
        fallback = mapping.stage_for_status(VENDOR, opp.status)
        stage_id = fallback.ids[VENDOR] if fallback else None
    return stage_id


def _fraction(percentage: Decimal | None) -> int | float | None:
    return None if percentage is None else json_number(percentage / _HUNDRED)


def _day(value: date | None) -> date | None:
    """A date (a date-time keeps only its calendar date, as ``closeDate`` does)."""
    if value is None:
        return None
    return date(value.year, value.month, value.day)


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)
