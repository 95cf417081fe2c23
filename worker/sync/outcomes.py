"""What a job came to: ingest and push outcomes, one spelling each, and an ingest's ``Outcome``.

Both enums are ``StrEnum``: the value is what logs, metrics labels and the status page show."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from worker.store.records import HandedOver


class IngestOutcome(StrEnum):
    """What one delivery changed (``oppsync_events_processed_total{outcome}``)."""

    APPLIED = "applied"  # fields taken: the targets are pushed
    UNCHANGED = "unchanged"  # nothing new to take (or a delete already applied)
    ECHO = "echo"  # our own write coming back
    STALE = "stale"  # older than a change already seen from that vendor
    IGNORED = "ignored"  # not about an opportunity, or a delete of one never synced
    DELETED = "deleted"  # deleted in the source: its delete policy applied
    LATE = "late"  # about a deal already deleted
    DUPLICATE = "duplicate"  # a second record of a linked deal, reduced to the linked one
    # How the job itself ended, when it did not get as far as a decision:
    WAITING = "waiting"  # before its ``not_before``: waits on
    RETRYING = "retrying"  # retried later on its queue
    DEAD_LETTER = "dead_letter"  # given up: a dead letter holds it


class PushOutcome(StrEnum):
    """What one push to one vendor did (``oppsync_upserts_total{outcome}``)."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"
    UNCHANGED = "unchanged"  # the vendor holds the state already
    SKIPPED = "skipped"  # nothing to write there (deleted there, or never linked)
    COALESCED = "coalesced"  # a waiting push writes the newer state instead
    VANISHED = "vanished"  # deleted there while we wrote: its delete applies the policy
    WAITING = "waiting"
    RETRYING = "retrying"
    DEAD_LETTER = "dead_letter"
    # Still writing when its event's task moved on: it ends on its own (counted then).
    HANDED_OVER = "handed_over"


#: Outcomes in which the vendor accepted a write.
WRITES = frozenset({PushOutcome.CREATED, PushOutcome.UPDATED, PushOutcome.DELETED})


@dataclass(frozen=True)
class Outcome:
    key: str | None
    outcome: IngestOutcome
    targets: tuple[str, ...] = ()
    detail: str = ""
    #: The record's id in the source vendor, and the fields the event changed (provenance).
    vendor_id: str | None = None
    fields: tuple[str, ...] = ()
    #: The targets' locks taken with the save, and the record read under them.
    handed: HandedOver | None = None
