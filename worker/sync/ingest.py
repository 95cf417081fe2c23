"""Ingesting one delivery: read the event, validate, identify, merge (``merge.py``), plan.

Plain functions over a ``Runtime`` (settings, store, adapters, locks); no Celery here, and
vendor I/O only through the adapters. ``ingest`` decides what an event changes and which
vendors must be written; ``push.py`` then writes each of them. Both are idempotent:
running either twice for the same input leaves the same state and the same vendor records.

Ordering: ingest holds the record's lock while it merges, so two changes to one deal are never
applied at once; a change older than the newest seen from its vendor is dropped as stale. A
push holds the (record, vendor) lock and reads the state when its turn comes; while one push
waits for its turn, the next ones for that vendor are dropped ("coalesced"): the waiting one
will carry their changes too, so a burst of edits ends in a few writes.

Absent is not empty: a field the record did not carry (``Opportunity.unknown``: its key
absent, or a value the mapping cannot read) keeps what we hold. It is filled in from what the
source would hold for the current state before anything is judged, so the merge takes
nothing from it and an echo is judged on the fields the record carries.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from marshmallow import ValidationError

from schemas.envelope import Envelope, InboundEvent, is_thin, thin_event
from schemas.opportunity import Opportunity, fingerprint, validation_errors
from worker.errors import CreateInFlight, InvalidPayload
from worker.logs import log
from worker.runtime import Runtime
from worker.store import metrics
from worker.store.records import HeldLock, Record, new_key
from worker.sync import duplicates
from worker.sync.deletes import apply_delete
from worker.sync.echoes import Sighting, late_commit
from worker.sync.merge import GONE, UNSURE, as_lost, event_summary, merge, plan
from worker.sync.outcomes import IngestOutcome, Outcome
from worker.vendors.base import VendorAdapter


def read_event(envelope: Envelope, adapter: VendorAdapter) -> InboundEvent | None:
    """What the delivery says changed; ``None`` when it is not about an opportunity."""
    payload = envelope.payload
    try:
        if envelope.scheme in ("leadway", "sns"):
            event = adapter.parse_native(payload)
        elif is_thin(payload):
            event = thin_event(payload)
        else:
            return InboundEvent(vendor_id=adapter.record_id(payload), record=payload)
    except ValidationError as exc:
        raise InvalidPayload(
            f"{envelope.vendor} event does not validate", fields=_messages(exc)
        ) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidPayload(f"{envelope.vendor} event is malformed: {exc}") from None
    # The id goes into the vendor's URL: only one of that vendor's id forms goes further.
    return None if event is None else replace(event, vendor_id=adapter.checked_id(event.vendor_id))


def fetch_record(adapter: VendorAdapter, vendor_id: str) -> dict[str, Any] | None:
    """The record ``vendor_id`` names, fetched; an answer about another record (or none we
    can read an id from) is refused rather than taken for this one."""
    record = adapter.fetch(vendor_id)
    # Case aside: a vendor may spell a UUID in capitals where the event did not.
    if record is not None and adapter.record_id(record).lower() != vendor_id.lower():
        raise InvalidPayload(
            f"{adapter.name} answered a fetch of {vendor_id!r} with another record",
            reason="bad_answer",
        )
    return record


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
    envelope: Envelope,
) -> str | Outcome:
    """The canonical key of (vendor, id), linking a new record to a new key.

    A record we do not know may be one we just created whose answer is still on its way
    (the vendor's webhook can beat it): recognise it by the fingerprint of what we wrote,
    or wait briefly while a create in that vendor is in flight. When the deal it carries
    is linked to another record there, it is a second record: the outcome of reducing it
    (``second_record``), or of one reduced before, is returned instead of a key.
    """
    known = rt.store.key_for(vendor, vendor_id)
    if known:
        return known
    if (first := rt.store.duplicate_of(vendor, vendor_id)) is not None:
        return Outcome(
            first, IngestOutcome.DUPLICATE, detail=f"{vendor} {vendor_id} is a second record"
        )
    carried = duplicates.carried_key(rt, vendor, record, incoming)
    if carried:
        second = second_record(
            rt, vendor, vendor_id, carried=carried, found_by=envelope.delivery_id
        )
        return second or rt.store.link(carried, vendor, vendor_id)
    if patient and rt.store.creates_in_flight(vendor):
        raise CreateInFlight(
            f"{vendor} {vendor_id} is unknown while a create there is in flight",
            vendor=vendor,
            retry_after=1.0,
        )
    return rt.store.link(new_key(), vendor, vendor_id)


def second_record(
    rt: Runtime, vendor: str, vendor_id: str, *, carried: str, found_by: str
) -> Outcome | None:
    """An unlinked record that carries deal ``carried`` (``duplicates.carried_key``) while
    that deal is linked to another record in ``vendor`` (a create the vendor committed after
    we made another): reduced to the linked one. ``None`` when it is not one."""
    key = carried
    kept = duplicates.linked_other(rt, key, vendor, vendor_id)
    if kept is None:
        return None
    state = rt.store.load(key).state
    action = duplicates.resolve(
        rt,
        key,
        vendor,
        kept=kept,
        duplicate=vendor_id,
        marked=as_lost(rt, state),
        found_by=found_by,
    )
    return Outcome(
        key, IngestOutcome.DUPLICATE, detail=f"{vendor} {vendor_id}: {action}", vendor_id=vendor_id
    )


def ingest(
    rt: Runtime, envelope: Envelope, *, patient: bool = True, hand_over: bool = False
) -> Outcome:
    """Decide what one verified delivery changes. Idempotent: a redelivery is unchanged.

    With ``hand_over``, an applied change also takes its targets' (record, vendor) locks
    (``Outcome.handed``): the caller pushes with them and must free what is left of them."""
    vendor = envelope.vendor
    adapter = rt.adapters[vendor]
    event = read_event(envelope, adapter)
    if event is None:
        return Outcome(None, IngestOutcome.IGNORED, detail="not an opportunity event")
    if event.api_author and event.api_author == rt.own_api_key(vendor):
        return Outcome(
            rt.store.key_for(vendor, event.vendor_id),
            IngestOutcome.ECHO,
            detail=f"{vendor} says our API key made this change",
        )
    if event.deleted:
        return apply_delete(rt, vendor, event.vendor_id, envelope, Sighting(event.event_time))
    fetched_at = None if event.record is not None else time.time()
    record_data = (
        event.record if event.record is not None else fetch_record(adapter, event.vendor_id)
    )
    if record_data is None:
        gone = Sighting(None, fetched_at)
        return apply_delete(rt, vendor, event.vendor_id, envelope, gone, detail="record is gone")
    incoming = canonical_of(adapter, record_data)
    if incoming.deleted:
        deleted = Sighting(incoming.updated_at, fetched_at)
        return apply_delete(rt, vendor, event.vendor_id, envelope, deleted)
    key = identify(
        rt, vendor, event.vendor_id, incoming, record_data, patient=patient, envelope=envelope
    )
    if isinstance(key, Outcome):  # a second record of a deal, reduced to the linked one
        return key
    sighting = Sighting(incoming.updated_at, fetched_at)
    with rt.locked(key) as (record, held):
        return _apply(rt, record, held, vendor, incoming, event, envelope, sighting, hand_over)


def _apply(
    rt: Runtime,
    record: Record,
    held: HeldLock,
    vendor: str,
    incoming: Opportunity,
    event: InboundEvent,
    envelope: Envelope,
    sighting: Sighting,
    hand_over: bool,
) -> Outcome:
    key = record.key
    adapter = rt.adapters[vendor]
    if record.deleted or record.written.get(vendor) == GONE:
        return Outcome(
            key, IngestOutcome.LATE, detail="the opportunity was deleted; late event dropped"
        )
    _report_unmapped(rt, record, vendor, incoming)
    if record.exists:  # what the record did not carry, it holds as far as we know
        incoming = incoming.completed(adapter.project(record.state))
    holds = fingerprint(incoming, adapter.synced_fields)
    if late_commit(record, vendor, holds):
        # Our write whose answer was lost, committed late (maybe after a newer one of ours):
        # nothing to merge, but the vendor holds it now, so it is written again (the plan).
        record.written[vendor] = holds
        rt.store.late_commit_seen(key, vendor, holds)
        return Outcome(
            key,
            IngestOutcome.ECHO,
            plan(rt, record),
            detail=f"{vendor} committed a write of ours late",
        )
    after = sighting.after_our_write(record, vendor)
    if record.written.get(vendor) == holds or (
        # We wrote exactly this there once: our echo, unless the vendor's record changed
        # after our last write (then a person put an earlier value back: a change). The
        # time is checked first: a record surely newer needs no Redis lookup.
        after is not True and rt.store.key_we_wrote(vendor, holds) == key
    ):
        # Nothing new from the source; but a redelivered event must still finish what its
        # first run left undone (a push lost with a killed worker), so plan anyway.
        return Outcome(
            key, IngestOutcome.ECHO, plan(rt, record), detail=f"{vendor} holds what we wrote"
        )
    seen = _as_time(record.seen.get(vendor))
    if seen and incoming.updated_at and incoming.updated_at < seen:
        return Outcome(key, IngestOutcome.STALE, detail=f"older than the last {vendor} change seen")
    event_time = (
        incoming.updated_at or event.event_time or datetime.fromtimestamp(envelope.received_at, UTC)
    )
    taken = merge(rt, record, incoming, vendor, event_time)
    # A record our later write may have replaced is not surely what the vendor holds.
    holds_now = UNSURE if after is False else holds
    record.written[vendor] = holds_now
    targets = plan(rt, record)  # from the merged record, not from Redis
    handed = rt.store.save_state(
        record,
        source=vendor,
        source_seen=incoming.updated_at,
        source_holds=holds_now,
        event=event_summary(envelope, event, taken, record.last_change),
        unlock=held,
        hand_over=targets if hand_over else (),
    )
    return Outcome(
        key,
        IngestOutcome.APPLIED if taken else IngestOutcome.UNCHANGED,
        targets,
        detail=", ".join(taken) or "no field changed",
        vendor_id=event.vendor_id,
        fields=tuple(taken),
        handed=handed,
    )


def _report_unmapped(rt: Runtime, record: Record, vendor: str, incoming: Opportunity) -> None:
    """Values the mapping does not know: a warning and ``oppsync_unmapped_values_total``
    each time one is read, and kept with the record (``oppsync show``) until the vendor
    sends a value the mapping knows."""
    for field, value in incoming.unmapped:
        log.warning("ingest.unmapped_value", key=record.key, vendor=vendor, field=field,
                    value=value, hint=f"add it to the mapping file for {vendor}")  # fmt: skip
        metrics.count(rt.redis, "oppsync_unmapped_values_total", vendor=vendor, field=field)
    if incoming.unmapped:
        record.unmapped[vendor] = dict(incoming.unmapped)
    else:
        record.unmapped.pop(vendor, None)
