"""A record deleted in one vendor: tombstone, mark lost or ignore, by that vendor's policy."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas.envelope import Envelope, InboundEvent
from schemas.opportunity import Status
from worker.runtime import Runtime
from worker.store.records import Record
from worker.sync.echoes import Sighting
from worker.sync.merge import (
    GONE,
    decided,
    event_summary,
    field_set_at,
    older,
    plan,
    stage_agreeing,
)
from worker.sync.outcomes import IngestOutcome, Outcome


def apply_delete(
    rt: Runtime,
    vendor: str,
    vendor_id: str,
    envelope: Envelope,
    sighting: Sighting,
    *,
    detail: str = "",
) -> Outcome:
    """A record deleted in ``vendor``: act on the others by that vendor's delete policy.

    ``delete`` leaves a tombstone: every later event about the deal is dropped as late.
    ``mark-lost`` sets the status (and a lost stage) as a change made at the delete's time,
    so an older change cannot reopen it. Either way the deleted vendor is never written
    again, so no late event can bring the record back there; and when one of our writes may
    have crossed the delete (SIRO's upsert revives a deleted record), that vendor is
    checked once and the record deleted again if it is back.
    """
    key = rt.store.key_for(vendor, vendor_id)
    if key is None:
        return Outcome(None, IngestOutcome.IGNORED, detail="deleted record was never synced")
    policy = rt.settings.vendor[vendor].delete_policy
    with rt.locked(key) as (record, _):
        if record.deleted or record.written.get(vendor) == GONE:
            return Outcome(key, IngestOutcome.UNCHANGED, detail="delete already applied")
        event_time = sighting.updated_at or datetime.fromtimestamp(envelope.received_at, UTC)
        crossed = sighting.after_our_write(record, vendor) is False
        if policy == "delete":
            record.deleted = True
            record.state = record.state.replace(deleted=True)
        elif policy == "mark-lost":
            _mark_lost(rt, record, vendor, event_time)
        event = InboundEvent(vendor_id=vendor_id, deleted=True)
        rt.store.save_state(
            record,
            source=vendor,
            source_seen=None,
            source_holds=GONE,
            event=event_summary(envelope, event, ["deleted"], record.last_change),
        )
        record.written[vendor] = GONE
        if crossed:
            rt.store.mark_recheck(key, vendor)
    targets = () if policy == "ignore" else _delete_targets(rt, record)
    if crossed:
        targets = (*targets, vendor)
    return Outcome(
        key,
        IngestOutcome.DELETED,
        targets,
        detail=detail or f"policy {policy}",
        vendor_id=vendor_id,
        fields=("deleted",),
    )


def _mark_lost(rt: Runtime, record: Record, vendor: str, event_time: datetime) -> None:
    set_at = field_set_at(record, "status")
    if set_at is not None and older(rt, vendor, event_time.timestamp(), set_at):
        origin = record.sources.get("status", "an earlier change")
        record.rules["status"] = f"deleted in {vendor}, but status set later by {origin}"
        return
    stage = stage_agreeing(rt, record.state.stage, Status.LOST)
    record.state = record.state.replace(status=Status.LOST, stage=stage)
    rule = f"deleted in {vendor}: marked lost"
    for name in ("status", "stage"):
        decided(rt, record, name, vendor, event_time, rule=rule)


def _delete_targets(rt: Runtime, record: Record) -> tuple[str, ...]:
    if record.deleted:
        return tuple(
            v for v in rt.settings.vendors if v in record.ids and record.written.get(v) != GONE
        )
    return plan(rt, record)
