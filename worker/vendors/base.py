"""The adapter protocol every vendor implements, and what an upsert reports.

The pipeline talks to vendors only through this protocol. Pure translation lives in
``schemas/<vendor>.py``; the HTTP calls live in ``worker/vendors/<vendor>.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from schemas.envelope import InboundEvent
from schemas.opportunity import Opportunity


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

    # -- pure translation (delegates to schemas/<vendor>.py) --------------------------------
    def record_id(self, record: dict[str, Any]) -> str: ...

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
