"""Leadway (white-label HighLevel / LeadConnector) opportunities <-> canonical: pure translation.

The record is HighLevel's opportunity object as ``GET /opportunities/{id}`` returns it (the
inner ``opportunity``); the Standard Webhooks body is that same object. Native webhooks
(``OpportunityCreate`` …) are semi-fat: they name the record, the worker fetches it
(VENDORS.md §2.7). HighLevel keeps the company and the person on the opportunity's *contact*,
so both travel through ``POST /contacts/upsert`` (``contact_body``) before the opportunity.

Lossy spots, mirrored exactly by ``project``:

* a stage is read back only when the mapping knows its Leadway id *and* its canonical status
  agrees with the record's ``status``: HighLevel keeps stage and status apart, the canonical
  value pairs them, and a status without a mapped stage leaves the record on the pipeline's
  first (or its previous) stage, which must not read back as a canonical stage;
* a contact needs an email or a phone: without either we upsert a placeholder contact named
  after the company (else the opportunity), which reads back as no contact;
* an owner without a Leadway user id in the mapping cannot be assigned.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from schemas.envelope import InboundEvent
from schemas.mapping import Mapping, Stage
from schemas.opportunity import Contact, Opportunity, json_number, not_carried, to_decimal
from schemas.timestamps import Timestamp

SYNCED_FIELDS: frozenset[str] = frozenset(
    {"name", "amount", "status", "stage", "owner", "contact", "company"}
)
#: The native webhook types about opportunities (VENDORS.md §2.7); every other type is ignored.
OPPORTUNITY_EVENTS: frozenset[str] = frozenset(
    {
        "OpportunityCreate",
        "OpportunityUpdate",
        "OpportunityStatusUpdate",
        "OpportunityStageUpdate",
        "OpportunityMonetaryValueUpdate",
        "OpportunityAssignedToUpdate",
        "OpportunityDelete",
    }
)
#: The record key each synced field is read from: a record without it says nothing about
#: that field. The company lives on the contact (``contact.companyName``).
RECORD_KEYS: dict[str, str] = {
    "name": "name", "amount": "monetaryValue", "status": "status", "stage": "pipelineStageId",
    "owner": "assignedTo", "contact": "contact",
}  # fmt: skip
#: Body fields an error answer may name (for ``Permanent.field``).
BODY_FIELDS: tuple[str, ...] = (
    "pipelineId", "locationId", "contactId", "pipelineStageId", "status", "monetaryValue",
    "assignedTo", "name", "email", "phone", "companyName",
)  # fmt: skip


class _ContactSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    id = fields.String(allow_none=True, load_default=None)
    name = fields.String(allow_none=True, load_default=None)
    company_name = fields.String(data_key="companyName", allow_none=True, load_default=None)
    email = fields.String(allow_none=True, load_default=None)
    phone = fields.String(allow_none=True, load_default=None)


class OpportunityRecordSchema(Schema):
    """An opportunity as ``GET /opportunities/{id}`` and the search return it."""

    class Meta:
        unknown = EXCLUDE

    id = fields.String(required=True, validate=validate.Length(min=1))
    name = fields.String(allow_none=True, load_default=None)
    monetary_value = fields.Decimal(data_key="monetaryValue", allow_none=True, load_default=None)
    pipeline_id = fields.String(data_key="pipelineId", allow_none=True, load_default=None)
    pipeline_stage_id = fields.String(
        data_key="pipelineStageId", allow_none=True, load_default=None
    )
    assigned_to = fields.String(data_key="assignedTo", allow_none=True, load_default=None)
    status = fields.String(allow_none=True, load_default=None)
    contact_id = fields.String(data_key="contactId", allow_none=True, load_default=None)
    contact = fields.Nested(_ContactSchema, allow_none=True, load_default=None)
    created_at = Timestamp(data_key="createdAt", allow_none=True, load_default=None)
    updated_at = Timestamp(data_key="updatedAt", allow_none=True, load_default=None)


class WebhookSchema(Schema):
    """A native opportunity webhook: the core fields plus ``timestamp`` and ``webhookId``."""

    class Meta:
        unknown = EXCLUDE

    type = fields.String(required=True, validate=validate.Length(min=1))
    id = fields.String(required=True, validate=validate.Length(min=1))
    location_id = fields.String(data_key="locationId", allow_none=True, load_default=None)
    pipeline_id = fields.String(data_key="pipelineId", allow_none=True, load_default=None)
    status = fields.String(allow_none=True, load_default=None)
    timestamp = Timestamp(allow_none=True, load_default=None)
    webhook_id = fields.String(data_key="webhookId", allow_none=True, load_default=None)


_RECORD = OpportunityRecordSchema()
_WEBHOOK = WebhookSchema()


def record_id(record: dict[str, Any]) -> str:
    value = record.get("id") if isinstance(record, dict) else None
    if not isinstance(value, str) or not value:
        raise ValidationError({"id": ["Missing data for required field."]})
    return value


def _stage(stage: Stage | None, status: object) -> str | None:
    return stage.name if stage is not None and stage.status == status else None


def to_canonical(record: dict[str, Any], mapping: Mapping) -> Opportunity:
    """The record as canonical values; raises ``ValidationError`` naming bad fields."""
    data = _RECORD.load(record)
    unknown = not_carried(record, RECORD_KEYS)
    person = record.get("contact")
    if "contact" not in record or (isinstance(person, dict) and "companyName" not in person):
        unknown |= {"company"}
    if isinstance(person, dict) and not {"email", "phone"} & person.keys():
        unknown |= {"contact"}  # a contact shown by id and name only
    unmapped: tuple[tuple[str, str], ...] = ()
    status = mapping.status_in("leadway", data["status"])
    if data["status"] is not None and status is None:
        # "all" is a search filter, anything else a value HighLevel added: unknown, reported.
        unknown, unmapped = unknown | {"status", "stage"}, (("status", data["status"]),)
    stage_id = data["pipeline_stage_id"]
    stage = mapping.stage_by_vendor_id("leadway", stage_id)
    if stage is None and stage_id is not None and mapping.maps_stages("leadway"):
        # A pipeline stage added in HighLevel after the mapping was written: not "no stage"
        # (that would move the deal elsewhere), unknown, and reported so it can be mapped.
        unknown |= {"stage"}
        unmapped = (*unmapped, ("pipelineStageId", str(stage_id)))
    contact = data["contact"] or {}
    person = None
    if contact.get("email") or contact.get("phone"):
        person = Contact(name=contact.get("name"), email=contact.get("email"),
                         phone=contact.get("phone"))  # fmt: skip
    return Opportunity(
        name=data["name"],
        amount=to_decimal(data["monetary_value"]),
        status=status,
        stage=_stage(stage, status),
        owner=mapping.owner_email("leadway", data["assigned_to"]),
        contact=person,
        company=contact.get("company_name") or None,
        created_at=data["created_at"],
        updated_at=data["updated_at"],
        unknown=unknown,
        unmapped=unmapped,
    )


def stage_to_send(opp: Opportunity, mapping: Mapping) -> Stage | None:
    """The mapped stage we write: the opportunity's own when it agrees with its status,
    else the first stage the mapping gives that status (None: the vendor's default)."""
    own = mapping.stage_named(opp.stage)
    if own is not None and "leadway" in own.ids and own.status == opp.status:
        return own
    return mapping.stage_for_status("leadway", opp.status)


def project(opp: Opportunity, mapping: Mapping) -> Opportunity:
    """What Leadway holds and gives back after ``opp`` is written to it."""
    status = None
    if opp.status is not None:
        status = mapping.status_in("leadway", mapping.status_out("leadway", opp.status))
    contact = opp.contact if opp.contact and (opp.contact.email or opp.contact.phone) else None
    return Opportunity(
        name=opp.name,
        amount=to_decimal(json_number(opp.amount)),
        status=status,
        stage=_stage(stage_to_send(opp, mapping), status),
        owner=mapping.owner_email("leadway", mapping.owner_id("leadway", opp.owner)),
        contact=contact,
        company=opp.company or None,
    )


def contact_body(opp: Opportunity, *, location_id: str) -> dict[str, Any]:
    """The ``POST /contacts/upsert`` body for the opportunity's contact.

    HighLevel de-duplicates contacts by email, then phone. Without either we name a
    placeholder after the company, else the opportunity (DESIGN.md, "Leadway contacts").
    Every key is sent, nulls included, so a cleared email or company is cleared there too.
    """
    person = opp.contact if opp.contact and (opp.contact.email or opp.contact.phone) else None
    if person is not None:
        name, email, phone = person.name, person.email, person.phone
    else:
        name, email, phone = opp.company or opp.name or "Opportunity", None, None
    return {"locationId": location_id, "name": name, "email": email, "phone": phone,
            "companyName": opp.company or None}  # fmt: skip


def contact_fingerprint(body: dict[str, Any]) -> str:
    """A short hash of the contact fields sent: equal bodies, equal fingerprints."""
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def to_body(
    opp: Opportunity,
    mapping: Mapping,
    *,
    pipeline_id: str,
    location_id: str,
    contact_id: str,
    vendor_id: str | None = None,
    default_stage_id: str | None = None,
) -> dict[str, Any]:
    """The ``POST /opportunities/upsert`` body; with ``vendor_id`` it updates that record.

    ``followers: []`` with ``isRemoveAllFollowers: false`` and ``followersActionType: "add"``
    are spec-required and leave the followers alone (VENDORS.md §2.3). ``default_stage_id``
    (the pipeline's first stage) is used when the mapping names no stage for the status.
    """
    stage = stage_to_send(opp, mapping)
    body: dict[str, Any] = {"id": vendor_id} if vendor_id else {}
    body.update(pipelineId=pipeline_id, locationId=location_id, contactId=contact_id)
    if opp.name is not None:
        body["name"] = opp.name
    if opp.status is not None:
        body["status"] = mapping.status_out("leadway", opp.status)
    stage_id = stage.ids["leadway"] if stage is not None else default_stage_id
    if stage_id is not None:
        body["pipelineStageId"] = stage_id
    body["monetaryValue"] = json_number(opp.amount)
    body["assignedTo"] = mapping.owner_id("leadway", opp.owner)
    body.update(followers=[], isRemoveAllFollowers=False, followersActionType="add")
    return body


def parse_native(payload: dict[str, Any]) -> InboundEvent | None:
    """A native webhook as an event (``record=None``: the worker fetches the record);
    ``None`` for a type that is not about opportunities. Raises ``ValidationError``."""
    if not isinstance(payload, dict):
        raise ValidationError({"_schema": ["Invalid input type."]})
    kind = payload.get("type")
    if isinstance(kind, str) and kind and kind not in OPPORTUNITY_EVENTS:
        return None
    data = _WEBHOOK.load(payload)
    return InboundEvent(
        vendor_id=data["id"],
        deleted=data["type"] == "OpportunityDelete",
        record=None,
        event_time=data["timestamp"],
    )


def native_delivery_id(payload: dict[str, Any]) -> str:
    """The delivery's ``webhookId``: HighLevel's dedup key (VENDORS.md §2.7)."""
    value = payload.get("webhookId") if isinstance(payload, dict) else None
    if not isinstance(value, str) or not value:
        raise ValidationError({"webhookId": ["Missing data for required field."]})
    return value
