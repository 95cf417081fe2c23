"""iVvy opportunities in and out: records, SNS notifications and the upsert body, as pure data.

iVvy (VENDORS.md §3, vendor-docs/ivvy-add-or-update-opportunity.txt) has no status field:
an opportunity's state is its tenant-defined stage (§3.4). A stage maps to a canonical stage
through the mapping file; a stage the mapping does not know reads as won/lost when its name
says so ("Won", "Closed - Lost") and as open otherwise (DESIGN.md, contract details).

Records are read with ``crm?action=getOpportunityList`` (§3.5); ``createdDate`` and
``modifiedDate`` are ``yyyy-mm-dd HH:mm:ss[ UTC]`` in UTC (read by ``schemas.timestamps``).
Changes arrive as AWS SNS notifications whose inner iVvy message carries ``Subject`` and a
JSON ``Body`` (§3.7): fat
``{"data": record, "previousData": record}`` for adds and updates, ids only for deletes.
We write with ``venue?action=addOrUpdateOpportunity`` and stamp our key in ``externalUrls``
(iVvy has no external id on opportunities, §3.3) so a lost create can be found again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, pre_load

from schemas.envelope import InboundEvent
from schemas.mapping import Mapping
from schemas.opportunity import Contact, Opportunity, Status, not_carried
from schemas.timestamps import Timestamp, read_timestamp

VENDOR = "ivvy"

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
SUBJECT_ADDED = "OpportunityAdded"
SUBJECT_UPDATED = "OpportunityUpdated"
SUBJECT_DELETED = "OpportunityDeleted"
SOURCE_TYPE_API = 1


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


class _MessageSchema(Schema):
    """The inner iVvy message of an SNS notification (VENDORS.md §3.7)."""

    class Meta:
        unknown = EXCLUDE

    subject = fields.String(data_key="Subject", required=True)
    body = fields.Raw(data_key="Body", required=True)
    timestamp = fields.Raw(data_key="Timestamp", allow_none=True, load_default=None)
    source_type = fields.Integer(data_key="SourceType", allow_none=True, load_default=None)
    source_info = fields.String(data_key="SourceInfo", allow_none=True, load_default=None)


class _DeletedBodySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    venue_id = fields.Integer(data_key="venueId", allow_none=True, load_default=None)
    opportunity_id = fields.Integer(data_key="opportunityId", required=True)


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


# -- stages and status -----------------------------------------------------------------------
def status_from_stage_name(name: str | None) -> Status:
    """A stage the mapping does not know: "won"/"lost" in its name decide, else open."""
    lowered = (name or "").lower()
    if "won" in lowered:
        return Status.WON
    if "lost" in lowered:
        return Status.LOST
    return Status.OPEN


def _effective_status(opp: Opportunity, mapping: Mapping) -> Status:
    """The status we can write: abandoned becomes lost unless a stage holds it."""
    status = opp.status or Status.OPEN
    if status is Status.ABANDONED and mapping.stage_for_status(VENDOR, status) is None:
        return Status.LOST
    return status


def mapped_stage_id(opp: Opportunity, mapping: Mapping) -> int | None:
    """The iVvy stage the mapping gives ``opp``: its stage's id, else one for its status."""
    explicit = mapping.stage_id(VENDOR, opp.stage)
    if explicit is not None:
        return int(explicit)
    by_status = mapping.stage_for_status(VENDOR, _effective_status(opp, mapping))
    return int(by_status.ids[VENDOR]) if by_status is not None else None


def choose_stage(
    opp: Opportunity, mapping: Mapping, stages: Iterable[dict[str, Any]], default: int | None
) -> int | None:
    """The stage id to write: the mapping's, else one from the tenant's ``getLeadStageList``
    whose name reads as the status, else (open) ``default`` or the first open-named stage.
    ``None`` when won/lost cannot be expressed in this tenant."""
    mapped = mapped_stage_id(opp, mapping)
    if mapped is not None:
        return mapped
    status = _effective_status(opp, mapping)
    listed = [s for s in stages if isinstance(s, dict) and s.get("id") is not None]
    if status is Status.OPEN and default is not None:
        return default
    for stage in listed:
        if status_from_stage_name(stage.get("name")) is status:
            return int(stage["id"])
    if status is Status.OPEN and listed:
        return int(listed[0]["id"])
    return None


def _stage_and_status(
    stage_id: object, stage_name: str | None, mapping: Mapping
) -> tuple[str | None, Status]:
    stage = mapping.stage_by_vendor_id(VENDOR, stage_id)
    if stage is not None:
        return stage.name, stage.status
    return None, status_from_stage_name(stage_name)


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
    stage, status = _stage_and_status(data["stage_id"], data["stage_name"], mapping)
    if stage is None and data["stage_id"] is not None and _maps_stages(mapping):
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


def _maps_stages(mapping: Mapping) -> bool:
    """Whether the mapping names iVvy stages (else every stage is read by its name)."""
    return any(VENDOR in stage.ids for stage in mapping.stages)


def _body_json(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        body = json.loads(raw) if isinstance(raw, str | bytes) else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ValidationError({"Body": ["must be a JSON object (or its JSON text)"]})
    return body


def parse_native(message: dict[str, Any]) -> InboundEvent | None:
    """The inner iVvy message of an SNS notification; ``None`` for non-opportunity subjects.

    ``api_author`` is ``SourceInfo`` (the API key) when ``SourceType`` is 1 (§3.7).
    """
    meta = _MessageSchema().load(message)
    subject = meta["subject"]
    if subject not in (SUBJECT_ADDED, SUBJECT_UPDATED, SUBJECT_DELETED):
        return None
    body = _body_json(meta["body"])
    author = meta["source_info"] if meta["source_type"] == SOURCE_TYPE_API else None
    sent_at = read_timestamp(meta["timestamp"])
    if subject == SUBJECT_DELETED:
        try:
            ids = _DeletedBodySchema().load(body)
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


def unwrap_sns(payload: dict[str, Any]) -> dict[str, Any]:
    """The inner iVvy message: an SNS ``Notification``'s ``Message`` parsed, else ``payload``."""
    if isinstance(payload, dict) and payload.get("Type") == "Notification":
        try:
            inner = json.loads(payload.get("Message") or "")
        except (TypeError, ValueError):
            raise ValidationError(
                {"Message": ["must be the JSON text of an iVvy message"]}
            ) from None
        if not isinstance(inner, dict):
            raise ValidationError({"Message": ["must be the JSON text of an iVvy message"]})
        return inner
    return payload


def message_venue(message: dict[str, Any]) -> int | None:
    """The venue a (valid) notification is about, when it says."""
    try:
        body = _body_json(message.get("Body"))
        venue = (body.get("data") or {}).get("venueId", body.get("venueId"))
        return int(venue) if venue not in (None, "") else None
    except (ValidationError, TypeError, ValueError, AttributeError):
        return None


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
        stage, status = _stage_and_status(stage_id, None, mapping)
    else:
        # Written by the tenant's stage list: only its name speaks, so no canonical stage.
        stage, status = None, _effective_status(opp, mapping)
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
