"""What travels from the receiver to the worker, and what a vendor's event says.

``Envelope`` is a verified delivery as the receiver queued it (JSON-ready, no I/O).
``InboundEvent`` is what a vendor's inbound schema makes of an envelope's payload: which
record changed, whether it was deleted, and the record itself when the event carries it
whole (fat); ``record=None`` means the worker must fetch it (thin or semi-fat events).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validates

Scheme = Literal["standard", "leadway", "sns", "poll", "replay"]


@dataclass(frozen=True)
class Envelope:
    vendor: str
    scheme: Scheme
    delivery_id: str
    received_at: float
    correlation_id: str
    payload: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        # Shallow: ``asdict`` deep-copies the payload, ~4 % of a webhook's CPU for nothing
        # (the dict is serialised at once).
        return dict(vars(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Envelope:
        return cls(**data)


@dataclass(frozen=True)
class InboundEvent:
    vendor_id: str
    deleted: bool = False
    record: dict[str, Any] | None = None
    event_time: datetime | None = None
    #: The API key a vendor names as the author of the change (iVvy ``SourceInfo`` when
    #: ``SourceType`` is 1); equal to ours means the change is our own echo.
    api_author: str | None = None


class ThinEventSchema(Schema):
    """``{"id": "<vendor id>"}``: the id as a string or a number (DESIGN.md contract details)."""

    class Meta:
        unknown = EXCLUDE

    id = fields.Raw(required=True)

    @validates("id")
    def id_is_scalar(self, value: Any, **_: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, str | int) or str(value).strip() == "":
            raise ValidationError("must be a non-empty string or an integer")


def is_thin(payload: dict[str, Any]) -> bool:
    """A thin event carries the id and nothing that describes the record."""
    return set(payload) <= {"id", "type", "event", "eventType", "timestamp"} and "id" in payload


def thin_event(payload: dict[str, Any]) -> InboundEvent:
    data = ThinEventSchema().load(payload)
    return InboundEvent(vendor_id=str(data["id"]).strip())
