"""How one change flows: read the event, validate, identify, merge, plan — then push.

Plain functions over a ``Runtime`` (settings, store, adapters, locks); no Celery here, and
vendor I/O only through the adapters. ``ingest`` decides what an event changes and which
vendors must be written; ``worker/writer.py`` then writes each of them. Both are idempotent:
running either twice for the same input leaves the same state and the same vendor records.

Merge rule: a field is taken from the source only when it differs from what the source would
hold for the current state (so lossy vendors don't flip values), the field is not owned by
another vendor (mapping ``[ownership]``), and the source's time is not older than the time
that field was last set (last writer wins). Every vendor whose view of the merged state
differs from what it holds is a target — the source included, when a rule kept a newer value.

Ordering: ingest holds the record's lock while it merges, so two changes to one deal are never
applied at once; a change older than the newest seen from its vendor is dropped as stale. A
push holds the (record, vendor) lock and reads the state when its turn comes; while one push
waits for its turn, the next ones for that vendor are dropped ("coalesced"): the waiting one
will carry their changes too, so a burst of edits ends in a few writes.

Absent is not empty: a field the record did not carry (``Opportunity.unknown``: its key
absent, or a value the mapping cannot read) keeps what we hold. It is filled in from what the
source would hold for the current state before anything is judged, so the merge takes
nothing from it and an echo is judged on the fields the record carries.

Echoes: an event is ours when the vendor holds what we last wrote there, or something we
wrote there earlier (fingerprints are kept before each write is sent) and the record is not
surely newer than our last write: fetched after it, or stamped by the vendor later than it
plus ``CLOCK_SKEW``. iVvy names the API key behind a change: ours is dropped first. When a
record might predate our last write to its vendor (a snapshot our write has since replaced),
what that vendor holds is "unsure" and it gets the merged state again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from marshmallow import ValidationError

from schemas.envelope import Envelope, InboundEvent, is_thin, thin_event
from schemas.mapping import VENDORS
from schemas.opportunity import Opportunity, Status, fingerprint, validation_errors
from worker import duplicates, metrics
from worker.errors import InvalidPayload, Transient
from worker.logs import log
from worker.runtime import Runtime
from worker.state import HandedOver, HeldLock, Record, new_key
from worker.vendors.base import VendorAdapter

#: ``written:<v>`` value for a vendor whose record was deleted there: never written again.
GONE = "gone"
#: Retries an unknown record waits for a create in flight in its vendor (our own echo).
ECHO_PATIENCE = 5
#: How far a vendor's clock may be ahead of ours: a record time within this of our last write
#: to that vendor cannot be told apart from that write.
CLOCK_SKEW = timedelta(seconds=2)
#: ``written:<v>`` when we cannot tell what the vendor holds: never a fingerprint, so the
#: vendor is a target and gets the merged state again.
UNSURE = "unsure"
#: A write started longer ago than this is no longer in flight (its worker died).
WRITE_IN_FLIGHT = timedelta(seconds=60)
#: Two changes to one deal closer than this are a burst; its pushes wait until the deal has
#: been quiet for ``QUIET``, but no longer than ``SETTLE_MAX``.
BURST_GAP = timedelta(seconds=1)
QUIET = timedelta(milliseconds=300)
SETTLE_MAX = timedelta(seconds=2)


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


def _set_at(record: Record, name: str) -> float | None:
    """When field ``name`` was last set (the source's time, epoch seconds)."""
    return record.times.get(name)


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
        return Outcome(first, "duplicate", detail=f"{vendor} {vendor_id} is a second record")
    carried = duplicates.carried_key(rt, vendor, record, incoming)
    if carried:
        second = second_record(
            rt, vendor, vendor_id, carried=carried, found_by=envelope.delivery_id
        )
        return second or rt.store.link(carried, vendor, vendor_id)
    if patient and rt.store.creates_in_flight(vendor):
        raise Transient(
            f"{vendor} {vendor_id} is unknown while a create there is in flight",
            vendor=vendor,
            retry_after=1.0,
            reason="create_in_flight",
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
    return Outcome(key, "duplicate", detail=f"{vendor} {vendor_id}: {action}", vendor_id=vendor_id)


def as_lost(rt: Runtime, opp: Opportunity) -> Opportunity:
    """``opp`` set to lost, with a stage that agrees (for vendors whose status is a stage)."""
    lost = opp.replace(status=Status.LOST, deleted=False)
    return lost.replace(stage=stage_agreeing(rt, lost.stage, Status.LOST))


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
        _decided(rt, record, name, source, event_time)
        taken.append(name)
    # A vendor without stages (or whose stage change was refused) still moves the status:
    # the stage follows it, so every vendor that has stages can hold the same status.
    if "status" in changes and ("stage" not in adapter.synced_fields or "stage" in refused):
        stage = stage_agreeing(rt, record.state.stage, changes["status"])
        if stage != record.state.stage:
            changes["stage"] = stage
            _decided(rt, record, "stage", source, event_time, rule=f"follows status from {source}")
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
    set_at, at = _set_at(record, name), event_time.timestamp()
    origin = record.sources.get(name, "an earlier change")
    if set_at is not None and _older(rt, source, at, set_at):
        return f"last writer wins: {source}'s older change ignored, value from {origin}"
    if set_at is not None and at == set_at and origin in VENDORS and origin > source:
        # Two vendors, the same instant: a fixed order picks the same winner whichever
        # event arrives last, so every vendor still ends with one value.
        return f"last writer wins (a tie, broken by name): value from {origin}"
    return None


def _older(rt: Runtime, source: str, at: float, set_at: float) -> bool:
    """Whether ``source``'s change, stamped ``at``, was surely made before ``set_at``.
    A vendor that stamps whole seconds (iVvy) made it somewhere within that second: only a
    second that ends by ``set_at`` is older. Within it the order cannot be told, and the
    change that arrives later wins (a delete in iVvy moments after a status change made
    elsewhere in the same second is not taken for an older one)."""
    resolution = rt.adapters[source].time_resolution
    return at + resolution <= set_at if resolution else at < set_at


def _decided(
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


def stage_agreeing(rt: Runtime, stage: str | None, status: Status | None) -> str | None:
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
        return Outcome(None, "ignored", detail="not an opportunity event")
    if event.api_author and event.api_author == rt.own_api_key(vendor):
        return Outcome(
            rt.store.key_for(vendor, event.vendor_id),
            "echo",
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
        return Outcome(key, "late", detail="the opportunity was deleted; late event dropped")
    _report_unmapped(rt, record, vendor, incoming)
    if record.exists:  # what the record did not carry, it holds as far as we know
        incoming = incoming.completed(adapter.project(record.state))
    holds = fingerprint(incoming, adapter.synced_fields)
    after = sighting.after_our_write(record, vendor)
    if record.written.get(vendor) == holds or (
        # We wrote exactly this there once: our echo, unless the vendor's record changed
        # after our last write (then a person put an earlier value back: a change). The
        # time is checked first: a record surely newer needs no Redis lookup.
        after is not True and rt.store.key_we_wrote(vendor, holds) == key
    ):
        # Nothing new from the source; but a redelivered event must still finish what its
        # first run left undone (a push lost with a killed worker), so plan anyway.
        return Outcome(key, "echo", plan(rt, record), detail=f"{vendor} holds what we wrote")
    seen = _as_time(record.seen.get(vendor))
    if seen and incoming.updated_at and incoming.updated_at < seen:
        return Outcome(key, "stale", detail=f"older than the last {vendor} change seen")
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
        event=_event_summary(envelope, event, taken, record.last_change),
        unlock=held,
        hand_over=targets if hand_over else (),
    )
    return Outcome(
        key,
        "applied" if taken else "unchanged",
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


@dataclass(frozen=True)
class Sighting:
    """How new a vendor record an event brought is: the vendor's own time for it, and (for
    a record fetched rather than carried by the event) when our fetch started."""

    updated_at: datetime | None
    fetched_at: float | None = None

    def after_our_write(self, record: Record, vendor: str) -> bool | None:
        """Whether the record is surely newer than our last write to ``vendor`` (True), may
        be older than it or than a write still in flight (False), or cannot say (None)."""
        if _writing(record, vendor):
            return False
        last = record.wrote_at.get(vendor)
        if last is None:
            return True
        if self.fetched_at is not None:  # both times are ours: no skew to allow for
            return self.fetched_at > last
        if self.updated_at is not None:
            return self.updated_at.timestamp() > last + CLOCK_SKEW.total_seconds()
        return None


def _writing(record: Record, vendor: str) -> bool:
    """A write to ``vendor`` started and not yet acknowledged (a dead worker's is old)."""
    started = record.writing.get(vendor)
    return started is not None and time.time() - started < WRITE_IN_FLIGHT.total_seconds()


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
        return Outcome(None, "ignored", detail="deleted record was never synced")
    policy = rt.settings.vendor[vendor].delete_policy
    with rt.locked(key) as (record, _):
        if record.deleted or record.written.get(vendor) == GONE:
            return Outcome(key, "unchanged", detail="delete already applied")
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
            event=_event_summary(envelope, event, ["deleted"], record.last_change),
        )
        record.written[vendor] = GONE
        if crossed:
            rt.store.mark_recheck(key, vendor)
    targets = () if policy == "ignore" else _delete_targets(rt, record)
    if crossed:
        targets = (*targets, vendor)
    return Outcome(
        key,
        "deleted",
        targets,
        detail=detail or f"policy {policy}",
        vendor_id=vendor_id,
        fields=("deleted",),
    )


def _mark_lost(rt: Runtime, record: Record, vendor: str, event_time: datetime) -> None:
    set_at = _set_at(record, "status")
    if set_at is not None and _older(rt, vendor, event_time.timestamp(), set_at):
        origin = record.sources.get("status", "an earlier change")
        record.rules["status"] = f"deleted in {vendor}, but status set later by {origin}"
        return
    stage = stage_agreeing(rt, record.state.stage, Status.LOST)
    record.state = record.state.replace(status=Status.LOST, stage=stage)
    rule = f"deleted in {vendor}: marked lost"
    for name in ("status", "stage"):
        _decided(rt, record, name, vendor, event_time, rule=rule)


def _delete_targets(rt: Runtime, record: Record) -> tuple[str, ...]:
    if record.deleted:
        return tuple(
            v for v in rt.settings.vendors if v in record.ids and record.written.get(v) != GONE
        )
    return plan(rt, record)


def _event_summary(
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
