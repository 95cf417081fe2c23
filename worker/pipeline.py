"""How one change flows: read the event, validate, identify, merge, plan — then push.

Plain functions over a ``Runtime`` (settings, store, adapters, locks); no Celery here, and
vendor I/O only through the adapters. ``ingest`` decides what an event changes and which
vendors must be written; ``push`` writes one vendor. Both are idempotent: running either
twice for the same input leaves the same state and the same vendor records.

Merge rule: a field is taken from the source only when it differs from what the source would
hold for the current state (so lossy vendors don't flip values), the field is not owned by
another vendor (mapping ``[ownership]``), and the source's time is not older than the time
that field was last set (last writer wins). Every vendor whose view of the merged state
differs from what it holds is a target — the source included, when a rule kept a newer value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from marshmallow import ValidationError

from schemas.envelope import Envelope, InboundEvent, is_thin, thin_event
from schemas.opportunity import Opportunity, Status, fingerprint, validation_errors
from worker.errors import InvalidPayload, Permanent, Transient
from worker.runtime import Runtime
from worker.state import Record, new_key
from worker.vendors.base import VendorAdapter

#: ``written:<v>`` value for a vendor whose record was deleted there: never written again.
GONE = "gone"
#: Retries an unknown record waits for a create in flight in its vendor (our own echo).
ECHO_PATIENCE = 5


@dataclass(frozen=True)
class Outcome:
    key: str | None
    outcome: str  # applied | unchanged | echo | stale | ignored | deleted | late
    targets: tuple[str, ...] = ()
    detail: str = ""


def read_event(envelope: Envelope, adapter: VendorAdapter) -> InboundEvent | None:
    """What the delivery says changed; ``None`` when it is not about an opportunity."""
    payload = envelope.payload
    try:
        if envelope.scheme in ("leadway", "sns"):
            return adapter.parse_native(payload)
        if is_thin(payload):
            return thin_event(payload)
        return InboundEvent(vendor_id=adapter.record_id(payload), record=payload)
    except ValidationError as exc:
        raise InvalidPayload(
            f"{envelope.vendor} event does not validate", fields=_messages(exc)
        ) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidPayload(f"{envelope.vendor} event is malformed: {exc}") from None


def _messages(exc: ValidationError) -> dict[str, Any]:
    messages = exc.messages
    return messages if isinstance(messages, dict) else {"_schema": messages}


def _as_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def canonical_of(adapter: VendorAdapter, record: dict[str, Any]) -> Opportunity:
    """Validate a vendor record into the canonical value; ranges and lengths checked too."""
    incoming = adapter.to_canonical(record)
    problems = validation_errors(incoming)
    if problems:
        raise InvalidPayload(f"{adapter.name} record has invalid values", fields=problems)
    return incoming


def identify(
    rt: Runtime,
    vendor: str,
    vendor_id: str,
    incoming: Opportunity,
    record: dict[str, Any],
    *,
    patient: bool,
) -> str:
    """The canonical key of (vendor, id), linking a new record to a new key.

    A record we do not know may be one we just created whose answer is still on its way
    (the vendor's webhook can beat it): recognise it by the fingerprint of what we wrote,
    or wait briefly while a create in that vendor is in flight.
    """
    known = rt.store.key_for(vendor, vendor_id)
    if known:
        return known
    adapter = rt.adapters[vendor]
    stamped = adapter.key_of(record)
    if stamped and rt.store.exists(stamped):
        return rt.store.link(stamped, vendor, vendor_id)
    ours = rt.store.key_we_wrote(vendor, fingerprint(incoming, adapter.synced_fields))
    if ours:
        return rt.store.link(ours, vendor, vendor_id)
    if patient and rt.store.creates_in_flight(vendor):
        raise Transient(
            f"{vendor} {vendor_id} is unknown while a create there is in flight",
            vendor=vendor,
            retry_after=1.0,
            reason="create_in_flight",
        )
    return rt.store.link(new_key(), vendor, vendor_id)


def merge(
    rt: Runtime, record: Record, incoming: Opportunity, source: str, event_time: datetime
) -> list[str]:
    """Apply the source's changed fields to ``record`` in place; returns the fields taken."""
    adapter = rt.adapters[source]
    seen_by_source = adapter.project(record.state)
    ownership = rt.settings.mapping.ownership
    taken: list[str] = []
    changes: dict[str, Any] = {}
    for name in sorted(adapter.synced_fields):
        value = getattr(incoming, name)
        if record.exists and value == getattr(seen_by_source, name):
            continue
        owner = ownership.get(name)
        if owner is not None and owner != source and record.exists:
            record.rules[name] = f"owned by {owner}: {source}'s change ignored"
            continue
        set_at = _as_time(record.times.get(name))
        if set_at is not None and event_time < set_at:
            record.rules[name] = f"last writer wins: {source}'s older change ignored"
            continue
        changes[name] = value
        record.times[name] = event_time.isoformat()
        record.rules[name] = f"last writer wins: {source}" if owner is None else f"owner {owner}"
        taken.append(name)
    if "status" in changes and "stage" not in adapter.synced_fields:
        changes["stage"] = _stage_agreeing(rt, record.state.stage, changes["status"])
    if changes or not record.exists:
        record.state = record.state.replace(
            **changes,
            created_at=record.state.created_at or incoming.created_at,
            updated_at=max(filter(None, [record.state.updated_at, event_time])),
        )
    return taken


def _stage_agreeing(rt: Runtime, stage: str | None, status: Status | None) -> str | None:
    """A stage consistent with a status set by a vendor without stages: the current one
    if it has that status, else the mapping's first stage with it."""
    stages = rt.settings.mapping.stages
    current = next((s for s in stages if s.name == stage), None)
    if current is not None and current.status == status:
        return stage
    return next((s.name for s in stages if s.status == status), None)


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


def ingest(rt: Runtime, envelope: Envelope, *, patient: bool = True) -> Outcome:
    """Decide what one verified delivery changes. Idempotent: a redelivery is unchanged."""
    vendor = envelope.vendor
    adapter = rt.adapters[vendor]
    event = read_event(envelope, adapter)
    if event is None:
        return Outcome(None, "ignored", detail="not an opportunity event")
    if event.api_author and event.api_author == rt.own_api_key(vendor):
        return Outcome(
            rt.store.key_for(vendor, event.vendor_id),
            "echo",
            detail=f"{vendor} says our API key made this change",
        )
    if event.deleted:
        return apply_delete(rt, vendor, event.vendor_id, envelope)
    record_data = event.record if event.record is not None else adapter.fetch(event.vendor_id)
    if record_data is None:
        return apply_delete(rt, vendor, event.vendor_id, envelope, detail="record is gone")
    incoming = canonical_of(adapter, record_data)
    if incoming.deleted:
        return apply_delete(rt, vendor, event.vendor_id, envelope)
    key = identify(rt, vendor, event.vendor_id, incoming, record_data, patient=patient)
    with rt.lock(key):
        return _apply(rt, key, vendor, incoming, event, envelope)


def _apply(
    rt: Runtime,
    key: str,
    vendor: str,
    incoming: Opportunity,
    event: InboundEvent,
    envelope: Envelope,
) -> Outcome:
    record = rt.store.load(key)
    adapter = rt.adapters[vendor]
    if record.deleted or record.written.get(vendor) == GONE:
        return Outcome(key, "late", detail="the opportunity was deleted; late event dropped")
    holds = fingerprint(incoming, adapter.synced_fields)
    if record.written.get(vendor) == holds or rt.store.key_we_wrote(vendor, holds) == key:
        return Outcome(key, "echo", detail=f"{vendor} holds what we wrote")
    seen = _as_time(record.seen.get(vendor))
    if seen and incoming.updated_at and incoming.updated_at < seen:
        return Outcome(key, "stale", detail=f"older than the last {vendor} change seen")
    event_time = (
        incoming.updated_at or event.event_time or datetime.fromtimestamp(envelope.received_at, UTC)
    )
    taken = merge(rt, record, incoming, vendor, event_time)
    rt.store.save_state(
        record,
        source=vendor,
        source_seen=incoming.updated_at,
        source_holds=holds,
        event=_event_summary(envelope, event, taken),
    )
    record.written[vendor] = holds
    targets = plan(rt, record)
    return Outcome(
        key,
        "applied" if taken else "unchanged",
        targets,
        detail=", ".join(taken) or "no field changed",
    )


def apply_delete(
    rt: Runtime, vendor: str, vendor_id: str, envelope: Envelope, *, detail: str = ""
) -> Outcome:
    """A record deleted in ``vendor``: act on the others by that vendor's delete policy."""
    key = rt.store.key_for(vendor, vendor_id)
    if key is None:
        return Outcome(None, "ignored", detail="deleted record was never synced")
    policy = rt.settings.vendor[vendor].delete_policy
    with rt.lock(key):
        record = rt.store.load(key)
        if record.deleted or record.written.get(vendor) == GONE:
            return Outcome(key, "unchanged", detail="delete already applied")
        event_time = datetime.fromtimestamp(envelope.received_at, UTC)
        if policy == "delete":
            record.deleted = True
            record.state = record.state.replace(deleted=True)
        elif policy == "mark-lost":
            record.state = record.state.replace(status=Status.LOST, stage=None)
            record.times["status"] = record.times["stage"] = event_time.isoformat()
            record.rules["status"] = f"deleted in {vendor}: marked lost"
        event = InboundEvent(vendor_id=vendor_id, deleted=True)
        rt.store.save_state(
            record,
            source=vendor,
            source_seen=None,
            source_holds=GONE,
            event=_event_summary(envelope, event, ["deleted"]),
        )
        record.written[vendor] = GONE
    targets = () if policy == "ignore" else _delete_targets(rt, record)
    return Outcome(key, "deleted", targets, detail=detail or f"policy {policy}")


def _delete_targets(rt: Runtime, record: Record) -> tuple[str, ...]:
    if record.deleted:
        return tuple(
            v for v in rt.settings.vendors if v in record.ids and record.written.get(v) != GONE
        )
    return plan(rt, record)


def _event_summary(envelope: Envelope, event: InboundEvent, taken: list[str]) -> dict[str, Any]:
    return {
        "vendor": envelope.vendor,
        "vendor_id": event.vendor_id,
        "delivery": envelope.delivery_id,
        "scheme": envelope.scheme,
        "correlation_id": envelope.correlation_id,
        "received_at": envelope.received_at,
        "fields": taken,
    }


def push(rt: Runtime, key: str, vendor: str, *, cause: dict[str, Any]) -> str:
    """Make ``vendor`` hold the current state of ``key``; returns what was done.

    Reads the state at push time, so a burst of changes coalesces into the latest one.
    A create whose answer was lost leaves an intent: the next attempt looks the record up
    in the vendor before creating again.
    """
    adapter = rt.adapters[vendor]
    with rt.lock(key, vendor):
        record = rt.store.load(key)
        if record.written.get(vendor) == GONE:
            return "skipped"
        if record.deleted:
            return _push_delete(rt, record, vendor, cause)
        target = adapter.project(record.state)
        wanted = fingerprint(target, adapter.synced_fields)
        if record.written.get(vendor) == wanted:
            return "unchanged"
        vendor_id = record.ids.get(vendor)
        if vendor_id is None and vendor in record.intents:
            since = datetime.fromtimestamp(record.intents[vendor], UTC) - timedelta(minutes=5)
            vendor_id = adapter.find_existing(record.state, key=key, since=since)
        if vendor_id is None:
            rt.store.start_intent(key, vendor)
        result = adapter.upsert(
            record.state, key=key, vendor_id=vendor_id, extra=record.extra.get(vendor, {})
        )
        rt.store.record_write(
            key,
            vendor,
            vendor_id=result.vendor_id,
            fingerprint=wanted,
            extra=result.extra,
            provenance={
                **cause,
                "at": datetime.now(UTC).isoformat(),
                "action": "created" if result.created else "updated",
            },
        )
        return "created" if result.created else "updated"


def _push_delete(rt: Runtime, record: Record, vendor: str, cause: dict[str, Any]) -> str:
    adapter = rt.adapters[vendor]
    vendor_id = record.ids.get(vendor)
    if vendor_id is None:
        rt.store.mark_written(record.key, vendor, GONE)
        return "skipped"
    try:
        adapter.delete(vendor_id)
    except Permanent as exc:
        if exc.reason != "unsupported":
            raise
        # The vendor cannot delete (iVvy has no delete action): the nearest is "lost".
        adapter.upsert(
            record.state.replace(status=Status.LOST, stage=None, deleted=False),
            key=record.key,
            vendor_id=vendor_id,
            extra=record.extra.get(vendor, {}),
        )
    rt.store.mark_written(record.key, vendor, GONE)
    return "deleted"
