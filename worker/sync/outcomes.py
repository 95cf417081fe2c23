"""What ingesting one delivery came to: the key, the outcome, the targets to push."""

from __future__ import annotations

from dataclasses import dataclass

from worker.store.records import HandedOver


@dataclass(frozen=True)
class Outcome:
    key: str | None
    outcome: str  # applied | unchanged | echo | stale | ignored | deleted | late | duplicate
    targets: tuple[str, ...] = ()
    detail: str = ""
    #: The record's id in the source vendor, and the fields the event changed (provenance).
    vendor_id: str | None = None
    fields: tuple[str, ...] = ()
    #: The targets' locks taken with the save, and the record read under them.
    handed: HandedOver | None = None
