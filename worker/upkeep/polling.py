"""Polling vendors without opportunity webhooks (SIRO, Salescaling, iCloudReady) for changes.

Each poll lists the vendor's records and decides, per record and without a vendor call, whether
oppsync has already seen that version (``classify``): a record not linked and never listed
before is new; a linked one changed when the fingerprint of its canonical value differs from
what the store says the vendor holds (``written:<v>``). What changed goes into the same
pipeline as a webhook would (``ingest_change`` with an ``Envelope`` of scheme ``poll``), so
echoes, staleness and last writer wins are decided there, once.

The first complete scan of a vendor is its baseline: the records it finds existed before
oppsync looked, and may already exist in the other vendors too, so they are not fed (that
would create them a second time there) but left for ``oppsync backfill``, which matches
before it creates. They are counted as ``unadopted`` until then.

iCloudReady lists newest ``updatedAt`` first (VENDORS.md §5), so between full scans its poll
stops at the high-water mark (minus ``OVERLAP``, so a record edited while the previous walk
was under way is not skipped). SIRO and Salescaling offer no such order or filter (VENDORS.md
§1, §4): every poll is a full scan diffed against the stored fingerprints.

Deletes are seen only by a complete full scan: an id seen before (``oppsync:poll:<v>:ids``)
that is linked and missing now, and that the vendor confirms is gone (``fetch`` answers
nothing). A scan that fails part-way raises before any of that, so a page that failed to load
never looks like deleted records. SIRO's soft deletes (``deletedAt``) are records like any
other: the pipeline reads them as deletes.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import Any

from schemas.envelope import Envelope
from schemas.opportunity import Opportunity, fingerprint
from worker.errors import InvalidPayload
from worker.logs import log
from worker.runtime import Runtime
from worker.store.deliveries import Claim
from worker.store.records import Linked
from worker.sync.merge import GONE
from worker.vendors.base import VendorAdapter

#: Vendors whose list answers newest ``updatedAt`` first, so a poll may stop at the mark.
NEWEST_FIRST: frozenset[str] = frozenset({"icloudready"})
#: How far below the high-water mark an incremental poll still reads: longer than one walk
#: of the list takes, so an edit made during the previous walk is read by this one.
OVERLAP = timedelta(minutes=5)
#: How often a vendor polled incrementally still gets a full scan (deletes are seen only there).
FULL_SCAN_SECONDS = 600.0
#: Records decided per store round trip.
BATCH = 200

Enqueue = Callable[[Envelope], None]


class Change(StrEnum):
    NEW = "new"  # not linked, and not there at an earlier scan: a record made in the vendor
    UNADOPTED = "unadopted"  # not linked, there before oppsync looked: for backfill
    CHANGED = "changed"  # linked, and it holds something other than what oppsync knows
    DELETED = "deleted"  # linked, and the vendor marks it deleted (SIRO ``deletedAt``)
    UNCHANGED = "unchanged"  # the vendor holds what oppsync knows it holds
    STALE = "stale"  # older than a change already seen from this vendor
    GONE = "gone"  # deleted there before: a late sighting never revives it
    IGNORED = "ignored"  # deleted and never synced


#: What is fed to the pipeline.
FED: frozenset[Change] = frozenset({Change.NEW, Change.CHANGED, Change.DELETED})


def classify(
    opp: Opportunity, holds: str, linked: Linked | None, *, listed_before: bool = False
) -> Change:
    """Whether one listed record is news to oppsync, from what the store says about it.

    ``holds`` is the fingerprint of ``opp`` over the vendor's synced fields; ``linked`` is
    ``None`` for a record not in the link map; ``listed_before`` says an earlier scan (or the
    baseline) already listed it.
    """
    if linked is None:
        if opp.deleted:
            return Change.IGNORED
        return Change.UNADOPTED if listed_before else Change.NEW
    if linked.written == GONE:
        return Change.GONE
    if opp.deleted:
        return Change.DELETED
    if linked.written == holds:
        return Change.UNCHANGED
    seen = datetime.fromisoformat(linked.seen) if linked.seen else None
    if seen is not None and opp.updated_at is not None and opp.updated_at < seen:
        return Change.STALE
    return Change.CHANGED


def incremental(vendor: str, mark: datetime | None, full_at: float | None, now: float) -> bool:
    """Whether this poll may stop at the high-water mark instead of scanning everything."""
    if vendor not in NEWEST_FIRST or mark is None or full_at is None:
        return False
    return now - full_at < FULL_SCAN_SECONDS


@dataclass
class PollReport:
    vendor: str
    full: bool
    listed: int = 0
    decided: Counter[str] = field(default_factory=Counter)
    queued: int = 0
    deletes: int = 0
    invalid: int = 0

    def summary(self) -> str:
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.decided.items())) or "none"
        scan = "full scan" if self.full else "since the high-water mark"
        text = (
            f"{self.vendor}: {self.listed} listed ({scan}): {kinds}; "
            f"{self.queued} queued, {self.deletes} deletes, {self.invalid} invalid"
        )
        if self.decided[Change.UNADOPTED]:
            text += f"; run `oppsync backfill --from {self.vendor}` to adopt the unadopted"
        return text


@dataclass(frozen=True)
class Listed:
    vendor_id: str
    record: dict[str, Any]
    opp: Opportunity | None  # None: the record does not validate
    holds: str


def poll_envelope(
    vendor: str, vendor_id: str, payload: dict[str, Any], holds: str, *, via: str = "poll"
) -> Envelope:
    """The delivery a poll (or reconciliation, or backfill: ``via``) makes of one record or
    one delete; its id names the version (the fingerprint of what the vendor holds)."""
    return Envelope(
        vendor=vendor,
        scheme="poll",
        delivery_id=f"{via}:{vendor}:{vendor_id}:{holds}",
        received_at=time.time(),
        correlation_id=uuid.uuid4().hex,
        payload=payload,
    )


def deleted_payload(vendor_id: str) -> dict[str, Any]:
    """What a poll sends for a record gone from the vendor. A thin event (``is_thin``): the
    pipeline fetches it, finds nothing and applies the delete (``record is gone``), so a
    record that came back meanwhile is not deleted; ``event`` says why it was sent."""
    return {"id": vendor_id, "event": "deleted"}


def poll(rt: Runtime, vendor: str, enqueue: Enqueue, *, full: bool = False) -> PollReport:
    """List ``vendor``'s records and feed every change to the pipeline through ``enqueue``.

    Idempotent: a record already fed holds what the store says it holds once the pipeline
    has run, and feeding one twice merges nothing new. Raises when the listing fails (the
    next poll tries again); deletes and the mark are recorded only after a complete scan.
    """
    adapter = rt.adapters[vendor]
    state = rt.store.poll_mark(vendor)
    partial = not full and incremental(vendor, state.mark, state.full_at, time.time())
    # Without a complete scan before, every record listed now predates oppsync (baseline).
    before: set[str] | None = None if state.full_at is None else rt.store.poll_ids(vendor)
    floor = state.mark - OVERLAP if partial and state.mark else None
    report = PollReport(vendor, full=not partial)
    ids: set[str] = set()
    newest = state.mark
    batch: list[Listed] = []
    for raw in adapter.list_records():
        report.listed += 1
        item = _read(adapter, raw, report)
        if item is None:
            continue
        updated = item.opp.updated_at if item.opp else None
        if floor is not None and updated is not None and updated < floor:
            break
        ids.add(item.vendor_id)
        if updated is not None and (newest is None or updated > newest):
            newest = updated
        batch.append(item)
        if len(batch) >= BATCH:
            _feed(rt, vendor, batch, before, enqueue, report)
            batch = []
    _feed(rt, vendor, batch, before, enqueue, report)
    if not partial and before is not None:
        _feed_deletes(rt, vendor, adapter, before - ids, enqueue, report, ids)
    rt.store.finish_poll(vendor, mark=newest, ids=ids, full=not partial)
    return report


def _read(adapter: VendorAdapter, raw: dict[str, Any], report: PollReport) -> Listed | None:
    try:
        vendor_id = adapter.record_id(raw)
    except InvalidPayload as exc:
        report.invalid += 1
        log.warning("poll.record_without_id", vendor=adapter.name, error=str(exc))
        return None
    try:
        opp = adapter.to_canonical(raw)
    except InvalidPayload:
        # Fed once per content: the pipeline dead-letters it with the fields at fault.
        blob = json.dumps(raw, sort_keys=True, default=str).encode()
        return Listed(vendor_id, raw, None, "invalid-" + hashlib.sha256(blob).hexdigest()[:16])
    return Listed(vendor_id, raw, opp, fingerprint(opp, adapter.synced_fields))


def _feed(
    rt: Runtime,
    vendor: str,
    batch: list[Listed],
    before: set[str] | None,
    enqueue: Enqueue,
    report: PollReport,
) -> None:
    """Decide on a batch of listed records and feed what is news; ``before`` holds the ids
    earlier scans listed (``None``: this is the baseline)."""
    if not batch:
        return
    known = rt.store.linked(vendor, [item.vendor_id for item in batch])
    for item in batch:
        linked = known.get(item.vendor_id)
        listed_before = before is None or item.vendor_id in before
        if item.opp is None:
            report.invalid += 1
            if linked is None and listed_before:
                continue  # not oppsync's (yet): backfill reports it
            envelope = poll_envelope(vendor, item.vendor_id, item.record, item.holds)
            # A record that stays invalid is dead-lettered once, not once per poll.
            ttl = rt.settings.dedup_ttl_seconds
            queued = rt.store.queue_once(
                vendor, envelope.delivery_id, ttl, partial(enqueue, envelope)
            )
            if queued is Claim.NEW:
                report.queued += 1
            continue
        holds = item.holds
        if item.opp.unknown and linked is not None and linked.written not in (None, GONE):
            # Fields the record did not carry hold what we hold, as far as we know: compare
            # with that, or a vendor that never sends some key would be fed at every poll.
            adapter = rt.adapters[vendor]
            held = adapter.project(rt.store.load(linked.key).state)
            holds = fingerprint(item.opp.completed(held), adapter.synced_fields)
        change = classify(item.opp, holds, linked, listed_before=listed_before)
        report.decided[change.value] += 1
        if change in FED:
            enqueue(poll_envelope(vendor, item.vendor_id, item.record, item.holds))
            report.queued += 1


def _feed_deletes(
    rt: Runtime,
    vendor: str,
    adapter: VendorAdapter,
    missing: Iterable[str],
    enqueue: Enqueue,
    report: PollReport,
    ids: set[str],
) -> None:
    """Ids seen before and missing from this complete scan: deletes, once the vendor
    confirms the record is gone (a list can skip a record that moved between pages)."""
    candidates = sorted(missing)
    known = rt.store.linked(vendor, candidates)
    for vendor_id in candidates:
        linked = known.get(vendor_id)
        if linked is None or linked.written == GONE:
            continue
        if adapter.fetch(vendor_id) is not None:
            ids.add(vendor_id)  # still there: the walk missed it; the next scan decides
            continue
        enqueue(poll_envelope(vendor, vendor_id, deleted_payload(vendor_id), "deleted"))
        report.deletes += 1
        report.queued += 1
