"""iVvy opportunities in and out: records, SNS notifications and the upsert body, as pure data.

iVvy (VENDORS.md §3, vendor-docs/ivvy-add-or-update-opportunity.txt) has no status field: an
opportunity's state is its tenant-defined stage (§3.4), read and chosen in ``ivvy_stages``.
Records are read with ``crm?action=getOpportunityList`` (§3.5); ``createdDate`` and
``modifiedDate`` are ``yyyy-mm-dd HH:mm:ss[ UTC]`` in UTC (read by ``schemas.timestamps``).
Changes arrive as AWS SNS notifications (§3.7, their shapes in ``ivvy_sns``) read into events
here. We write with ``venue?action=addOrUpdateOpportunity`` and stamp our key in
``externalUrls`` (iVvy has no external id on opportunities, §3.3) so a lost create can be found
again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, pre_load

from schemas.envelope import InboundEvent
from schemas.ivvy_sns import (
    SOURCE_TYPE_API,
    SUBJECT_ADDED,
    SUBJECT_DELETED,
    SUBJECT_UPDATED,
    DeletedBodySchema,
    MessageSchema,
    body_json,
)
from schemas.ivvy_sns import message_venue as message_venue
from schemas.ivvy_sns import unwrap_sns as unwrap_sns
from schemas.ivvy_stages import (
    VENDOR,
    effective_status,
    mapped_stage_id,
    stage_and_status,
    status_from_stage_name,
)
from schemas.ivvy_stages import choose_stage as choose_stage
from schemas.mapping import Mapping
from schemas.opportunity import Contact, Opportunity, Status, not_carried
from schemas.timestamps import Timestamp, read_timestamp

SYNCED_FIELDS: frozenset[str] = frozenset(
    {"name", "status", "stage", "close_date", "description", "owner", "contact", "company"}
)

#: Body fields whose names a refusal may mention (``VendorHTTP`` reports the first it finds).
BODY_FIELDS: tuple[str, ...] = (
    "venueId", "typeId", "sourceId", "stageId", "ownerUserId", "closedDate", "externalUrls",
    "contact", "company", "name", "description", "id",
)  # fmt: skip

#: The record key(s) each synced field is read from: a record without them says nothing
#: about that field (status and stage both come from the stage).
RECORD_KEYS: dict[str, tuple[str, ...]] = {
    "name": ("name",), "description": ("description",), "stage": ("stageId", "stageName"),
    "status": ("stageId", "stageName"), "close_date": ("closedDate",),
    "owner": ("ownerUser",), "contact": ("contact",), "company": ("company",),
}  # fmt: skip

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
EXTERNAL_URL_LABEL = "oppsync"


# -- record schema ---------------------------------------------------------------------------
class _Tolerant(Schema):
    """iVvy answers ``""`` where it means "no value"; read that as ``None``."""

    class Meta:
        unknown = EXCLUDE

    @pre_load
    def blanks_are_none(self, data: Any, **_: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {k: (None if v == "" else v) for k, v in data.items()}


class _PersonSchema(_Tolerant):
    id = fields.Integer(allow_none=True, load_default=None)
    first_name = fields.String(data_key="firstName", allow_none=True, load_default=None)
    last_name = fields.String(data_key="lastName", allow_none=True, load_default=None)
    email = fields.String(allow_none=True, load_default=None)
    phone = fields.String(allow_none=True, load_default=None)


class _CompanySchema(_Tolerant):
    id = fields.Integer(allow_none=True, load_default=None)
    business_name = fields.String(data_key="businessName", allow_none=True, load_default=None)


class _ExternalUrlSchema(_Tolerant):
    ref = fields.String(required=True)
    url = fields.String(allow_none=True, load_default=None)
    label = fields.String(allow_none=True, load_default=None)


_NULLABLE: dict[str, Any] = {"allow_none": True, "load_default": None}


class OpportunityRecordSchema(_Tolerant):
    """One ``getOpportunityList`` result (also the ``data`` of an SNS notification)."""

    id = fields.Integer(required=True)
    venue_id = fields.Integer(data_key="venueId", **_NULLABLE)
    name = fields.String(**_NULLABLE)
    description = fields.String(**_NULLABLE)
    owner_user = fields.Nested(_PersonSchema, data_key="ownerUser", **_NULLABLE)
    contact = fields.Nested(_PersonSchema, **_NULLABLE)
    company = fields.Nested(_CompanySchema, **_NULLABLE)
    stage_id = fields.Integer(data_key="stageId", **_NULLABLE)
    stage_name = fields.String(data_key="stageName", **_NULLABLE)
    type_id = fields.Integer(data_key="typeId", **_NULLABLE)
    source_id = fields.Integer(data_key="sourceId", **_NULLABLE)
    closed_date = fields.Date(data_key="closedDate", format="%Y-%m-%d", **_NULLABLE)
    created_date = Timestamp(data_key="createdDate", **_NULLABLE)
    modified_date = Timestamp(data_key="modifiedDate", **_NULLABLE)
    external_urls = fields.List(
        fields.Nested(_ExternalUrlSchema), data_key="externalUrls", **_NULLABLE
    )


_RECORD = OpportunityRecordSchema()


def load_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record validated (raises ``ValidationError`` naming each bad field)."""
    return _RECORD.load(record)


def record_id(record: dict[str, Any]) -> str:
    value = record.get("id") if isinstance(record, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit():
        raise ValidationError({"id": ["must be an integer id"]})
    return str(int(value))


def key_of(record: dict[str, Any]) -> str | None:
    """Our canonical key, when we created the record (kept as an ``externalUrls`` ref)."""
    for link in record.get("externalUrls") or []:
        if isinstance(link, dict) and link.get("label") == EXTERNAL_URL_LABEL:
            return str(link.get("ref"))
    return None


def has_ref(record: dict[str, Any], key: str) -> bool:
    return any(
        isinstance(link, dict) and link.get("ref") == key
        for link in record.get("externalUrls") or []
    )


def format_timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


# -- contacts --------------------------------------------------------------------------------
def split_name(name: str | None) -> tuple[str, str]:
    """``"Ada Lovelace King"`` -> ``("Ada", "Lovelace King")``: iVvy keeps first and last."""
    first, _, last = (name or "").partition(" ")
    return first, last


def join_name(first: str | None, last: str | None) -> str | None:
    return " ".join(part for part in (first, last) if part) or None


def _contact(
    first: str | None, last: str | None, email: str | None, phone: str | None
) -> Contact | None:
    contact = Contact(name=join_name(first, last), email=email or None, phone=phone or None)
    return None if contact == Contact() else contact


def _project_contact(contact: Contact | None) -> Contact | None:
    if contact is None:
        return None
    return _contact(*split_name(contact.name), contact.email, contact.phone)


# -- inbound ---------------------------------------------------------------------------------
def _owner(user: dict[str, Any] | None, mapping: Mapping) -> str | None:
    """The mapping's email for the iVvy user id wins (it is what we write by); else the
    email iVvy shows."""
    if not user:
        return None
    email = mapping.owner_email(VENDOR, user.get("id")) or user.get("email")
    return email.lower() if email else None


def to_canonical(record: dict[str, Any], mapping: Mapping) -> Opportunity:
    data = load_record(record)
    unknown = not_carried(record, RECORD_KEYS)
    unmapped: tuple[tuple[str, str], ...] = ()
    stage, status = stage_and_status(data["stage_id"], data["stage_name"], mapping)
    if stage is None and data["stage_id"] is not None and mapping.maps_stages(VENDOR):
        # A stage the mapping does not list: no canonical stage to give, and unless its name
        # says won or lost, no status either (it could be any): both unknown, reported.
        unmapped = (("stageId", f"{data['stage_id']} ({data['stage_name'] or 'unnamed'})"),)
        unknown |= {"stage"}
        if status_from_stage_name(data["stage_name"]) is Status.OPEN:
            unknown |= {"status"}
    person = data["contact"] or {}
    company = data["company"] or {}
    return Opportunity(
        name=data["name"],
        status=status,
        stage=stage,
        close_date=data["closed_date"],
        description=data["description"],
        owner=_owner(data["owner_user"], mapping),
        contact=_contact(
            person.get("first_name"),
            person.get("last_name"),
            person.get("email"),
            person.get("phone"),
        ),
        company=company.get("business_name"),
        created_at=data["created_date"],
        updated_at=data["modified_date"],
        unknown=unknown,
        unmapped=unmapped,
    )


def parse_native(message: dict[str, Any]) -> InboundEvent | None:
    """The inner iVvy message of an SNS notification; ``None`` for non-opportunity subjects.

    ``api_author`` is ``SourceInfo`` (the API key) when ``SourceType`` is 1 (§3.7).
    """
    meta = MessageSchema().load(message)
    subject = meta["subject"]
    if subject not in (SUBJECT_ADDED, SUBJECT_UPDATED, SUBJECT_DELETED):
        return None
    body = body_json(meta["body"])
    author = meta["source_info"] if meta["source_type"] == SOURCE_TYPE_API else None
    sent_at = read_timestamp(meta["timestamp"])
    if subject == SUBJECT_DELETED:
        try:
            ids = DeletedBodySchema().load(body)
        except ValidationError as exc:
            raise ValidationError({"Body": exc.messages}) from None
        return InboundEvent(
            vendor_id=str(ids["opportunity_id"]),
            deleted=True,
            event_time=sent_at,
            api_author=author,
        )
    record = body.get("data")
    if not isinstance(record, dict):
        raise ValidationError({"Body": {"data": ["must be an opportunity record"]}})
    try:
        data = load_record(record)
    except ValidationError as exc:
        raise ValidationError({"Body": {"data": exc.messages}}) from None
    return InboundEvent(
        vendor_id=str(data["id"]),
        record=record,
        event_time=data["modified_date"] or sent_at,
        api_author=author,
    )


# -- outbound --------------------------------------------------------------------------------
def project(opp: Opportunity, mapping: Mapping) -> Opportunity:
    stage_id = mapped_stage_id(opp, mapping)
    stage: str | None
    status: Status | None
    if opp.status is None and mapping.stage_id(VENDOR, opp.stage) is None:
        # Nothing says where the deal stands; iVvy would get a default stage, but claiming
        # "open" here would pass for a value the deal never had.
        stage, status = None, None
    elif stage_id is not None:
        stage, status = stage_and_status(stage_id, None, mapping)
    else:
        # Written by the tenant's stage list: only its name speaks, so no canonical stage.
        stage, status = None, effective_status(opp, mapping)
    # iVvy takes an owner only as a user id: an owner the mapping cannot name is dropped.
    owner = opp.owner.lower() if opp.owner and mapping.owner_id(VENDOR, opp.owner) else None
    return Opportunity(
        name=opp.name,
        status=status,
        stage=stage,
        close_date=opp.close_date,
        description=opp.description or None,
        owner=owner,
        contact=_project_contact(opp.contact),
        company=opp.company or None,
    )


def external_urls(key: str) -> list[dict[str, str]]:
    return [{"ref": key, "url": f"urn:oppsync:{key}", "label": EXTERNAL_URL_LABEL}]


def to_body(
    opp: Opportunity,
    mapping: Mapping,
    *,
    venue_id: int,
    key: str,
    stage_id: int,
    vendor_id: str | None = None,
    type_id: int | None = None,
    source_id: int | None = None,
) -> dict[str, Any]:
    """The ``addOrUpdateOpportunity`` body. ``stage_id`` comes from ``choose_stage``;
    ``type_id``/``source_id`` are the create defaults (the written stage's mapping entries
    win). An update sends every synced field, ``null`` clearing what ``opp`` lacks; a create
    leaves those out and stamps our key in ``externalUrls``."""
    shown = project(opp, mapping)
    owner_id = mapping.owner_id(VENDOR, shown.owner)
    body: dict[str, Any] = {
        "venueId": venue_id,
        "name": shown.name,
        "description": shown.description,
        "stageId": stage_id,
        "closedDate": shown.close_date.isoformat() if shown.close_date else None,
        "ownerUserId": int(owner_id) if owner_id is not None else None,
    }
    if shown.contact is not None:
        first, last = split_name(shown.contact.name)
        body["contact"] = {
            "firstName": first,
            "lastName": last,
            "email": shown.contact.email,
            "phone": shown.contact.phone,
            "updateIfExists": True,
        }
    if shown.company is not None:
        body["company"] = {"businessName": shown.company, "updateIfExists": True}
    if vendor_id is not None:
        return {"id": int(vendor_id), **body}
    stage = mapping.stage_by_vendor_id(VENDOR, stage_id)
    body = {k: v for k, v in body.items() if v is not None}
    body["typeId"] = int(stage.ivvy_type_id) if stage and stage.ivvy_type_id else type_id
    body["sourceId"] = int(stage.ivvy_source_id) if stage and stage.ivvy_source_id else source_id
    body["externalUrls"] = external_urls(key)
    return body
