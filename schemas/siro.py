"""SIRO opportunities translated to and from the canonical ``Opportunity`` (pure, no I/O).

SIRO mirrors an upstream CRM: its opportunity is keyed by the CRM's id (``externalId``, which
for us is the canonical key) and written with one idempotent upsert,
``PUT /v1/integrations/sync/opportunities`` (VENDORS.md §1.3,
vendor-docs/siro-sync-opportunity.txt).
It has no stages, description or probability; status is ``disposition`` OPEN/WON/LOST, so
"abandoned" comes back as "lost". The read shape (``GET /v1/integrations/opportunities/{id}``)
is the sync response's ``data``: ``id`` (SIRO's UUID), ``externalId``, ``createdAt``,
``updatedAt``, ``name``, ``amount``, ``closedAt``, ``disposition``, ``account``,
``opportunityUsers`` — plus ``opportunityContacts`` and ``deletedAt``, which the docs do not
list in the answer [?] but which we need for contacts and soft deletes to round-trip.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from schemas.envelope import InboundEvent, is_thin, thin_event
from schemas.mapping import Mapping
from schemas.opportunity import Contact, Opportunity, json_number, not_carried, to_decimal
from schemas.timestamps import Timestamp, parse_timestamp

VENDOR = "siro"

SYNCED_FIELDS: frozenset[str] = frozenset(
    {"name", "amount", "status", "close_date", "owner", "contact", "company"}
)

#: The record key each synced field is read from: a record without it says nothing about
#: that field (the sync answer's documented ``data`` has no ``opportunityContacts``).
RECORD_KEYS: dict[str, str] = {
    "name": "name", "amount": "amount", "status": "disposition", "close_date": "closedAt",
    "owner": "opportunityUsers", "contact": "opportunityContacts", "company": "account",
}  # fmt: skip

#: Top-level fields of the sync body, containers first so an error about
#: ``account.externalId`` is attributed to ``account`` (see ``VendorHTTP.body_fields``).
BODY_FIELDS: tuple[str, ...] = (
    "opportunityContacts", "opportunityUsers", "account", "closedAt", "remoteCreatedAt",
    "lastActivityAt", "deletedAt", "disposition", "amount", "name", "externalId",
)  # fmt: skip


def format_timestamp(value: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a "Z", the form SIRO's own timestamps take."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _ParsedString(fields.Field):
    """A string that must parse (``_parse`` raises ``ValueError`` when it does not)."""

    default_error_messages = {"type": "Not a valid string.", "invalid": "Not a valid date-time."}

    def _parse(self, value: str) -> Any:
        raise NotImplementedError

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, str):
            raise self.make_error("type")
        try:
            return self._parse(value)
        except ValueError:
            raise self.make_error("invalid") from None


class _DatePart(_ParsedString):
    """``closedAt``: a date-time string of which only the date is kept, as written (the
    docs' example is "2024-02-28 20:09:58.692"; converting the zone could move the day)."""

    def _parse(self, value: str) -> date:
        if len(value.strip()) > 10:
            parse_timestamp(value)  # the time must read too, though only the day is kept
        return date.fromisoformat(value.strip()[:10])


class _Number(fields.Field):
    """A JSON number only: no numeric strings, no booleans, nothing non-finite."""

    default_error_messages = {"invalid": "Not a valid number."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        if isinstance(value, float) and not math.isfinite(value):
            raise self.make_error("invalid")
        return value


def _text(**kwargs: Any) -> fields.String:
    return fields.String(allow_none=True, load_default=None, **kwargs)


def _strings(key: str) -> fields.List:
    return fields.List(fields.String(), data_key=key, allow_none=True, load_default=list)


class _Tolerant(Schema):
    """SIRO may add fields at any time: unknown ones are dropped, known ones type-checked."""

    class Meta:
        unknown = EXCLUDE


class AccountSchema(_Tolerant):
    id = _text()
    external_id = _text(data_key="externalId")
    name = _text()


class OpportunityContactSchema(_Tolerant):
    external_id = _text(data_key="externalId")
    name = _text()
    email_addresses = _strings("emailAddresses")
    phone_numbers = _strings("phoneNumbers")
    is_primary = fields.Boolean(data_key="isPrimary", allow_none=True, load_default=False)


class OpportunityUserSchema(_Tolerant):
    external_id = _text(data_key="externalId")
    email = _text()
    name = _text()
    deleted_at = Timestamp(data_key="deletedAt", allow_none=True, load_default=None)


class SiroOpportunitySchema(_Tolerant):
    """A SIRO opportunity as its API returns it (the read shape; see the module docstring)."""

    id = fields.String(
        required=True, validate=validate.Regexp(r"\s*\S", error="Must not be blank.")
    )
    external_id = _text(data_key="externalId")
    created_at = Timestamp(data_key="createdAt", allow_none=True, load_default=None)
    updated_at = Timestamp(data_key="updatedAt", allow_none=True, load_default=None)
    deleted_at = Timestamp(data_key="deletedAt", allow_none=True, load_default=None)
    name = _text()
    amount = _Number(allow_none=True, load_default=None)
    closed_at = _DatePart(data_key="closedAt", allow_none=True, load_default=None)
    disposition = _text()
    account_id = _text(data_key="accountId")
    account = fields.Nested(AccountSchema, allow_none=True, load_default=None)
    opportunity_users = fields.List(
        fields.Nested(OpportunityUserSchema),
        data_key="opportunityUsers",
        allow_none=True,
        load_default=list,
    )
    opportunity_contacts = fields.List(
        fields.Nested(OpportunityContactSchema),
        data_key="opportunityContacts",
        allow_none=True,
        load_default=list,
    )


_RECORD = SiroOpportunitySchema()


def _load(record: Any) -> dict[str, Any]:
    if not isinstance(record, dict):
        raise ValidationError({"_schema": ["A SIRO opportunity must be a JSON object."]})
    return _RECORD.load(record)


# -- inbound ---------------------------------------------------------------------------------
def record_id(record: dict[str, Any]) -> str:
    """SIRO's own id (``id``, a UUID) of a record; raises ``ValidationError``."""
    value = record.get("id") if isinstance(record, dict) else None
    if not isinstance(value, str) or not value.strip():
        raise ValidationError({"id": ["Missing or not a non-empty string."]})
    return value.strip()


def key_of(record: dict[str, Any]) -> str | None:
    """Our canonical key as SIRO stores it (``externalId``): records we wrote carry it."""
    value = record.get("externalId") if isinstance(record, dict) else None
    return value if isinstance(value, str) and value else None


def _owner(users: list[dict[str, Any]], mapping: Mapping) -> str | None:
    for user in users or []:
        if user["deleted_at"] is not None:
            continue
        email = user["email"] or mapping.owner_email(VENDOR, user["external_id"])
        if email:
            return email
    return None


def _contact(entries: list[dict[str, Any]]) -> Contact | None:
    entries = entries or []
    primary = next((c for c in entries if c["is_primary"]), entries[0] if entries else None)
    if primary is None:
        return None
    emails = primary["email_addresses"] or []
    phones = primary["phone_numbers"] or []
    contact = Contact(
        name=primary["name"],
        email=emails[0] if emails else None,
        phone=phones[0] if phones else None,
    )
    return None if contact == Contact() else contact


def to_canonical(record: dict[str, Any], mapping: Mapping) -> Opportunity:
    """The canonical value of a SIRO record; raises ``ValidationError`` naming bad fields."""
    data = _load(record)
    unknown = not_carried(record, RECORD_KEYS)
    unmapped: tuple[tuple[str, str], ...] = ()
    status = mapping.status_in(VENDOR, data["disposition"])
    if data["disposition"] is not None and status is None:
        unknown, unmapped = unknown | {"status"}, (("disposition", data["disposition"]),)
    account = data["account"]
    return Opportunity(
        name=data["name"],
        amount=to_decimal(data["amount"]),
        status=status,
        close_date=data["closed_at"],
        owner=_owner(data["opportunity_users"], mapping),
        contact=_contact(data["opportunity_contacts"]),
        company=(account["name"] or None) if account else None,
        created_at=data["created_at"],
        updated_at=data["updated_at"],
        deleted=data["deleted_at"] is not None,
        unknown=unknown,
        unmapped=unmapped,
    )


def parse_native(payload: dict[str, Any]) -> InboundEvent | None:
    """An event about a SIRO opportunity: SIRO's own webhooks are only about recordings
    (VENDORS.md §1.7) and are ignored; a customer's automation sends the record or
    ``{"id": …}`` (Standard Webhooks). Raises ``ValidationError``."""
    if str(payload.get("eventType", "")).startswith("integrations.recording"):
        return None
    if is_thin(payload):
        return thin_event(payload)
    data = _load(payload)
    return InboundEvent(
        vendor_id=record_id(payload),
        deleted=data["deleted_at"] is not None,
        record=payload,
        event_time=data["updated_at"],
    )


# -- outbound --------------------------------------------------------------------------------
def _close_date(value: date | None) -> date | None:
    # A datetime is a date too; SIRO keeps only the day we send.
    return value.date() if isinstance(value, datetime) else value


def project(opp: Opportunity, mapping: Mapping) -> Opportunity:
    """What SIRO holds and gives back after ``opp`` is written to it."""
    contact = opp.contact
    if contact is not None:
        contact = Contact(
            name=contact.name, email=contact.email or None, phone=contact.phone or None
        )
        contact = None if contact == Contact() else contact
    status = None
    if opp.status is not None:
        status = mapping.status_in(VENDOR, mapping.status_out(VENDOR, opp.status))
    return Opportunity(
        name=opp.name,
        amount=to_decimal(json_number(opp.amount)),
        status=status,
        close_date=_close_date(opp.close_date),
        owner=opp.owner or None,
        contact=contact,
        company=opp.company or None,
    )


def _contacts(opp: Opportunity, key: str) -> list[dict[str, Any]]:
    contact = opp.contact
    if contact is None:
        return []
    return [
        {
            # Contacts are matched across vendors by email, else phone (schemas/opportunity.py).
            "externalId": "contact:" + (contact.email or contact.phone or key),
            "name": contact.name,
            "emailAddresses": [contact.email] if contact.email else [],
            "phoneNumbers": [contact.phone] if contact.phone else [],
            "isPrimary": True,
        }
    ]


def to_body(
    opp: Opportunity, mapping: Mapping, *, key: str, now: datetime | None = None
) -> dict[str, Any]:
    """The sync body for ``opp`` under ``externalId`` = ``key``, every synced field included.

    Cleared values are sent as ``null`` / ``[]``: whether SIRO keeps omitted fields is not
    documented (VENDORS.md §1.3), so nothing is left to chance. ``now`` stamps ``deletedAt``
    when a deleted value carries no timestamp of its own.
    """
    close_date = _close_date(opp.close_date)
    body: dict[str, Any] = {
        "externalId": key,
        "name": opp.name,
        "amount": json_number(opp.amount),
        # The docs' format is "2024-02-28 20:09:58.692"; only the date is ours to give.
        "closedAt": f"{close_date.isoformat()} 00:00:00.000" if close_date else None,
        "disposition": mapping.status_out(VENDOR, opp.status) if opp.status else None,
        "deletedAt": None,
        "account": {"externalId": f"{key}:account", "name": opp.company} if opp.company else None,
        "opportunityContacts": _contacts(opp, key),
        "opportunityUsers": (
            [{"externalId": mapping.owner_id(VENDOR, opp.owner) or opp.owner, "email": opp.owner}]
            if opp.owner
            else []
        ),
    }
    if opp.created_at is not None:
        body["remoteCreatedAt"] = format_timestamp(opp.created_at)
    if opp.updated_at is not None:
        body["lastActivityAt"] = format_timestamp(opp.updated_at)
    if opp.deleted:
        body["deletedAt"] = format_timestamp(opp.updated_at or now or datetime.now(UTC))
    return body
