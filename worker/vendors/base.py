"""The adapter protocol every vendor implements, and what an upsert reports.

The pipeline talks to vendors only through this protocol. Pure translation lives in
``schemas/<vendor>.py``; the HTTP calls live in ``worker/vendors/<vendor>.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from types import ModuleType
from typing import Any, Protocol

from marshmallow import ValidationError

from schemas import vendorids
from schemas.envelope import InboundEvent
from schemas.mapping import Mapping
from schemas.opportunity import Opportunity
from worker.errors import InvalidPayload


@dataclass(frozen=True)
class UpsertResult:
    vendor_id: str
    created: bool
    #: Ids the vendor needed besides the opportunity's own (e.g. Leadway's contact id),
    #: kept with the links so a retry reuses them: ``{"contact": "abc"}``.
    extra: dict[str, str] = field(default_factory=dict)


class VendorAdapter(Protocol):
    name: str
    #: Canonical fields this vendor can hold; only these are read from it or compared.
    synced_fields: frozenset[str]
    #: How finely the vendor stamps its times, in seconds (0: finer than we can tell apart).
    time_resolution: float
    #: Whether a create is an upsert by our key (SIRO ``externalId``): repeating it can
    #: make no second record, so an unanswered one need not settle first.
    upserts_by_key: bool

    # -- pure translation (delegates to schemas/<vendor>.py) --------------------------------
    def record_id(self, record: dict[str, Any]) -> str:
        """The record's id, checked with ``checked_id``; raises ``InvalidPayload``."""
        ...

    def checked_id(self, raw: object) -> str:
        """``raw`` when it is one of the vendor's id forms (``schemas/vendorids.py``), as the
        string we store and send; raises ``InvalidPayload`` otherwise."""
        ...

    def parse_native(self, payload: dict[str, Any]) -> InboundEvent | None:
        """The vendor's own webhook payload; ``None`` when the event is not about an
        opportunity (ignored). Raises ``InvalidPayload``."""
        ...

    def key_of(self, record: dict[str, Any]) -> str | None:
        """Our canonical key as the vendor stores it on the record (SIRO ``externalId``,
        iVvy ``externalUrls[].ref``), or None where the vendor cannot store it."""
        ...

    def to_canonical(self, record: dict[str, Any]) -> Opportunity:
        """A record as the vendor's API returns it; raises ``InvalidPayload``."""
        ...

    def requests_for(
        self, opp: Opportunity, *, key: str, vendor_id: str | None, extra: dict[str, str]
    ) -> int:
        """How many requests ``upsert`` with these arguments will send (the places a write
        keeps in its vendor's quota line when the quota is used up)."""
        ...

    def project(self, opp: Opportunity) -> Opportunity:
        """What this vendor would hold (and give back) if ``opp`` were written to it."""
        ...

    # -- I/O -----------------------------------------------------------------------------
    def fetch(self, vendor_id: str) -> dict[str, Any] | None:
        """The record, or ``None`` when the vendor no longer has it."""
        ...

    def upsert(
        self, opp: Opportunity, *, key: str, vendor_id: str | None, extra: dict[str, str]
    ) -> UpsertResult:
        """Create (``vendor_id`` None) or update with every synced field."""
        ...

    def find_existing(self, opp: Opportunity, *, key: str, since: datetime) -> str | None:
        """After an uncertain create: the id of a record we may already have made."""
        ...

    def delete(self, vendor_id: str) -> None: ...

    def list_records(self) -> Iterator[dict[str, Any]]:
        """Every opportunity record (pages followed), for polling and reconciliation."""
        ...

    def probe(self) -> str:
        """One harmless read; returns a plain sentence about what worked."""
        ...

    def close(self) -> None:
        """Close the pooled HTTP client (a worker keeps it for its whole life; tests close it)."""
        ...


def invalid_payload(vendor: str, what: str, exc: ValidationError) -> InvalidPayload:
    """A schema's refusal as the dead-letterable error naming each bad field."""
    messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
    return InvalidPayload(f"{vendor} {what} is invalid: {', '.join(map(str, messages))}",
                          fields=messages)  # fmt: skip


class SchemaTranslation:
    """The pure half every adapter shares: its ``schemas/<vendor>.py`` module, with
    validation errors turned into ``InvalidPayload``. A schema module provides
    ``record_id``, ``to_canonical``, ``project`` and, where the vendor has them,
    ``key_of`` (our key stored on the record) and ``parse_native`` (its own webhooks)."""

    name: str
    schema: ModuleType
    synced_fields: frozenset[str]
    mapping: Mapping
    time_resolution: float = 0.0
    upserts_by_key: bool = False

    def record_id(self, record: dict[str, Any]) -> str:
        try:
            return self.checked_id(self.schema.record_id(record))
        except ValidationError as exc:
            raise invalid_payload(self.name, "record id", exc) from None

    def checked_id(self, raw: object) -> str:
        try:
            return vendorids.check(self.name, raw)
        except ValidationError as exc:
            raise invalid_payload(self.name, "record id", exc) from None

    def key_of(self, record: dict[str, Any]) -> str | None:
        key_of = getattr(self.schema, "key_of", None)
        return key_of(record) if key_of is not None else None

    def parse_native(self, payload: dict[str, Any]) -> InboundEvent | None:
        parse = getattr(self.schema, "parse_native", None)
        if parse is None:
            return None
        try:
            event: InboundEvent | None = parse(payload)
        except ValidationError as exc:
            raise invalid_payload(self.name, "event", exc) from None
        return event

    def to_canonical(self, record: dict[str, Any]) -> Opportunity:
        try:
            opp: Opportunity = self.schema.to_canonical(record, self.mapping)
        except ValidationError as exc:
            raise invalid_payload(self.name, "record", exc) from None
        return opp

    def requests_for(
        self, opp: Opportunity, *, key: str, vendor_id: str | None, extra: dict[str, str]
    ) -> int:
        """One: most vendors write a record in one request."""
        return 1

    def project(self, opp: Opportunity) -> Opportunity:
        projected: Opportunity = self.schema.project(opp, self.mapping)
        return projected
