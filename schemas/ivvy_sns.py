"""iVvy's change notifications as data: the SNS envelope, the inner message and its body.

VENDORS.md §3.7: an AWS SNS ``Notification`` whose ``Message`` is the JSON text of an iVvy
message carrying ``Subject``, ``SourceType``/``SourceInfo`` and a JSON ``Body``: fat
``{"data": record, "previousData": record}`` for adds and updates, ids only for deletes.
"""

from __future__ import annotations

import json
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields

SUBJECT_ADDED = "OpportunityAdded"
SUBJECT_UPDATED = "OpportunityUpdated"
SUBJECT_DELETED = "OpportunityDeleted"
SOURCE_TYPE_API = 1


class MessageSchema(Schema):
    """The inner iVvy message of an SNS notification (VENDORS.md §3.7)."""

    class Meta:
        unknown = EXCLUDE

    subject = fields.String(data_key="Subject", required=True)
    body = fields.Raw(data_key="Body", required=True)
    timestamp = fields.Raw(data_key="Timestamp", allow_none=True, load_default=None)
    source_type = fields.Integer(data_key="SourceType", allow_none=True, load_default=None)
    source_info = fields.String(data_key="SourceInfo", allow_none=True, load_default=None)


class DeletedBodySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    venue_id = fields.Integer(data_key="venueId", allow_none=True, load_default=None)
    opportunity_id = fields.Integer(data_key="opportunityId", required=True)


def body_json(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        body = json.loads(raw) if isinstance(raw, str | bytes) else None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ValidationError({"Body": ["must be a JSON object (or its JSON text)"]})
    return body


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
        body = body_json(message.get("Body"))
        venue = (body.get("data") or {}).get("venueId", body.get("venueId"))
        return int(venue) if venue not in (None, "") else None
    except (ValidationError, TypeError, ValueError, AttributeError):
        return None
