"""Merging a vendor's change into the canonical record, and planning which vendors to write.

Merge rule: a field is taken from the source only when it differs from what the source would
hold for the current state (so lossy vendors don't flip values), the field is not owned by
another vendor (mapping ``[ownership]``), and the source's time is not older than the time
that field was last set (last writer wins). Every vendor whose view of the merged state
differs from what it holds is a target — the source included, when a rule kept a newer value.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from schemas.envelope import Envelope, InboundEvent
from schemas.mapping import VENDORS
from schemas.opportunity import Opportunity, Status, fingerprint
from worker.runtime import Runtime
from worker.store.records import Record

#: ``written:<v>`` value for a vendor whose record was deleted there: never written again.
GONE = "gone"


#: ``written:<v>`` when we cannot tell what the vendor holds: never a fingerprint, so the
#: vendor is a target and gets the merged state again.
UNSURE = "unsure"


def merge(
    rt: Runtime, record: Record, incoming: Opportunity, source: str, event_time: datetime
) -> list[str]:
    """Apply the source's changed fields to ``record`` in place; returns the fields taken.

    Each field's rule is kept in ``record.rules`` and the vendor that set its value in
    ``record.sources`` (``oppsync show`` prints both).
    """
    adapter = rt.adapters[source]
    seen_by_source = adapter.project(record.state)
    taken: list[str] = []
    refused: list[str] = []
    changes: dict[str, Any] = {}
    for name in sorted(adapter.synced_fields):
        value = getattr(incoming, name)
        if name in incoming.unknown or (record.exists and value == getattr(seen_by_source, name)):
            continue
        rule = _refusal(rt, record, name, source, event_time)
        if rule is not None:
            record.rules[name] = rule
            refused.append(name)
            continue
        changes[name] = value
        decided(rt, record, name, source, event_time)
        taken.append(name)
    # A vendor without stages (or whose stage change was refused) still moves the status:
    # the stage follows it, so every vendor that has stages can hold the same status.
    if "status" in changes and ("stage" not in adapter.synced_fields or "stage" in refused):
        stage = stage_agreeing(rt, record.state.stage, changes["status"])
        if stage != record.state.stage:
            changes["stage"] = stage
            decided(rt, record, "stage", source, event_time, rule=f"follows status from {source}")
    if changes or not record.exists:
        record.state = record.state.replace(
            **changes,
            created_at=record.state.created_at or incoming.created_at,
            updated_at=max(filter(None, [record.state.updated_at, event_time])),
        )
    return taken


def _refusal(
    rt: Runtime, record: Record, name: str, source: str, event_time: datetime
) -> str | None:
    """Why the source may not set this field now (the rule, as shown); None: it may."""
    owner = rt.settings.mapping.ownership.get(name)
    if owner is not None and owner != source and record.exists:
        return f"owned by {owner}: {source}'s change ignored"
    set_at, at = field_set_at(record, name), event_time.timestamp()
    origin = record.sources.get(name, "an earlier change")
    if set_at is not None and older(rt, source, at, set_at):
        return f"last writer wins: {source}'s older change ignored, value from {origin}"
    if set_at is not None and at == set_at and origin in VENDORS and origin > source:
        # Two vendors, the same instant: a fixed order picks the same winner whichever
        # event arrives last, so every vendor still ends with one value.
        return f"last writer wins (a tie, broken by name): value from {origin}"
    return None


def older(rt: Runtime, source: str, at: float, set_at: float) -> bool:
    """Whether ``source``'s change, stamped ``at``, was surely made before ``set_at``.
    A vendor that stamps whole seconds (iVvy) made it somewhere within that second: only a
    second that ends by ``set_at`` is older. Within it the order cannot be told, and the
    change that arrives later wins (a delete in iVvy moments after a status change made
    elsewhere in the same second is not taken for an older one)."""
    resolution = rt.adapters[source].time_resolution
    return at + resolution <= set_at if resolution else at < set_at


def decided(
    rt: Runtime,
    record: Record,
    name: str,
    source: str,
    event_time: datetime,
    *,
    rule: str | None = None,
) -> None:
    owner = rt.settings.mapping.ownership.get(name)
    rule = rule or (f"owned by {owner}: from {source}" if owner else None)
    if rule is None:  # the default, "last writer wins: from <source>", is not stored
        record.rules.pop(name, None)
    else:
        record.rules[name] = rule
    record.times[name] = event_time.timestamp()
    record.sources[name] = source


def field_set_at(record: Record, name: str) -> float | None:
    """When field ``name`` was last set (the source's time, epoch seconds)."""
    return record.times.get(name)


def stage_agreeing(rt: Runtime, stage: str | None, status: Status | None) -> str | None:
    """A stage consistent with a status set by a vendor without stages: the current one
    if it has that status, else the mapping's first stage with it."""
    stages = rt.settings.mapping.stages
    current = next((s for s in stages if s.name == stage), None)
    if current is not None and current.status == status:
        return stage
    return next((s.name for s in stages if s.status == status), None)


def as_lost(rt: Runtime, opp: Opportunity) -> Opportunity:
    """``opp`` set to lost, with a stage that agrees (for vendors whose status is a stage)."""
    lost = opp.replace(status=Status.LOST, deleted=False)
    return lost.replace(stage=stage_agreeing(rt, lost.stage, Status.LOST))


def plan(rt: Runtime, record: Record) -> tuple[str, ...]:
    """Enabled vendors whose view of the state differs from what they hold."""
    targets = []
    for vendor in rt.settings.vendors:
        if record.written.get(vendor) == GONE:
            continue
        adapter = rt.adapters[vendor]
        wanted = fingerprint(adapter.project(record.state), adapter.synced_fields)
        if record.written.get(vendor) != wanted:
            targets.append(vendor)
    return tuple(targets)


def event_summary(
    envelope: Envelope, event: InboundEvent, taken: list[str], previous: dict[str, Any] | None
) -> dict[str, Any]:
    """The event as kept with the state (``last_event``; ``last_change`` when it changed
    something). ``applied_at`` and ``after`` (the change before it) let pushes see a burst."""
    return {
        "vendor": envelope.vendor,
        "vendor_id": event.vendor_id,
        "delivery": envelope.delivery_id,
        "scheme": envelope.scheme,
        "correlation_id": envelope.correlation_id,
        "received_at": envelope.received_at,
        "fields": taken,
        "applied_at": time.time(),
        "after": (previous or {}).get("applied_at"),
    }
