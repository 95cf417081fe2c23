"""Reconciliation: what every vendor really holds against what oppsync believes; drift repaired.

For each linked opportunity and each vendor in scope, three things are compared: what the
vendor really holds (its record, read back), what the store says it holds (``written:<v>``)
and what it should hold (the canonical state, as that vendor would hold it). Then:

* the vendor holds something the store does not know of (a missed webhook, a manual edit):
  the record is fed to the pipeline as a change from that vendor, so last writer wins decides
  as for any change, and the pipeline writes the others;
* the vendor's record is gone, or marked deleted: fed as a delete from that vendor;
* a record no deal is linked to carries one linked to another record there (a create the
  vendor committed after we made another): reduced to the linked one
  (``worker/sync/duplicates.py``);
* the vendor should hold something else (an earlier write failed, the vendor was enabled
  later, or the pipeline dropped its change as an echo or a stale one): it gets a push.

Each vendor is listed once (cheap: pages, not one read per record); a record whose listed
form disagrees with the store, or is missing from the list, is read by id before anything is
done about it, so the list's shape or a record moving between pages never causes a repair.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.exceptions import LockError

from schemas.envelope import Envelope
from schemas.opportunity import Opportunity, fingerprint
from worker.errors import InvalidPayload, VendorError
from worker.logs import log
from worker.runtime import Runtime
from worker.store.keys import RECONCILE_LOCK
from worker.store.records import Record
from worker.sync import duplicates
from worker.sync.ingest import fetch_record, second_record
from worker.sync.merge import GONE
from worker.upkeep.polling import deleted_payload, poll_envelope

#: How long the reconciliation lock lives without being renewed (a crashed run frees it).
LOCK_SECONDS = 900
#: Outcomes of a fed change by which the pipeline kept the deal as it was. Only then is a
#: vendor still holding something else written over; a change queued for a retry is not.
KEPT = frozenset({"echo", "stale", "unchanged"})

#: Runs the pipeline now for one envelope (ingest, then the fan-out); returns its outcome.
Feed = Callable[[Envelope], str]
#: Makes one vendor hold the current state of one opportunity: (key, vendor, cause) -> outcome.
Push = Callable[[str, str, dict[str, Any]], str]


@dataclass(frozen=True)
class Repair:
    key: str
    vendor: str
    action: str  # change | delete | push | duplicate | error
    outcome: str
    vendor_id: str | None = None

    def line(self) -> str:
        where = f"{self.vendor}:{self.vendor_id}" if self.vendor_id else self.vendor
        return f"{self.key}  {where}  {self.action} -> {self.outcome}"


@dataclass
class ReconcileReport:
    vendors: tuple[str, ...]
    opportunities: int = 0
    compared: int = 0
    as_expected: int = 0
    repairs: list[Repair] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Repair]:
        return [r for r in self.repairs if r.action == "error"]

    def summary(self) -> str:
        """What was compared and what was changed, in plain text."""
        actions = Counter(r.action for r in self.repairs)
        pushes = Counter(r.outcome for r in self.repairs if r.action == "push")
        deals = "opportunity" if self.opportunities == 1 else "opportunities"
        lines = [
            f"Reconciled {self.opportunities} {deals} in {', '.join(self.vendors)}: "
            f"{self.compared} vendor records compared, {self.as_expected} as expected.",
            f"Changed behind oppsync's back (fed to the pipeline): {actions['change']}",
            f"Gone or deleted in a vendor (fed as deletes): {actions['delete']}",
            f"Second records of a deal (deleted or marked): {actions['duplicate']}",
            f"Pushed: {actions['push']}"
            + (f" ({', '.join(f'{n} {o}' for o, n in sorted(pushes.items()))})" if pushes else ""),
            f"Errors: {actions['error']}",
        ]
        lines += [f"  {r.line()}" for r in self.repairs]
        lines += [f"Note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Drift:
    vendor: str
    vendor_id: str
    record: dict[str, Any] | None  # None: the vendor no longer has it
    opp: Opportunity | None
    holds: str

    @property
    def when(self) -> datetime:
        return (self.opp.updated_at if self.opp else None) or datetime.min.replace(tzinfo=UTC)


@contextmanager
def exclusive(rt: Runtime) -> Iterator[Callable[[], None] | None]:
    """One reconciliation at a time: yields a keep-alive, or ``None`` when one is running."""
    lock = rt.redis.lock(RECONCILE_LOCK, timeout=LOCK_SECONDS)
    if not lock.acquire(blocking=False):
        yield None
        return
    try:
        yield lambda: lock.extend(LOCK_SECONDS, replace_ttl=True)
    finally:
        try:
            lock.release()
        except LockError:
            pass  # expired while held: nobody else can be relying on it


class Reconciler:
    """One reconciliation run: ``list_vendor`` each vendor in ``vendors``, then
    ``reconcile`` each key of ``keys()`` (the CLI drives both with progress bars)."""

    def __init__(
        self,
        rt: Runtime,
        *,
        feed: Feed,
        push: Push,
        vendor: str | None = None,
        keep_alive: Callable[[], None] | None = None,
    ) -> None:
        self.rt = rt
        self.feed = feed
        self.push = push
        self.keep_alive = keep_alive or (lambda: None)
        self.vendors = tuple(v for v in rt.settings.vendors if vendor in (None, v))
        self.listed: dict[str, dict[str, dict[str, Any]]] = {}
        self.report = ReconcileReport(self.vendors)
        self.run_id = uuid.uuid4().hex

    def keys(self) -> list[str]:
        return self.rt.store.all_keys()

    def list_vendor(self, vendor: str) -> None:
        """Read the vendor's records in pages. When listing fails, each record is read by
        id instead (slower, same result)."""
        adapter = self.rt.adapters[vendor]
        records: dict[str, dict[str, Any]] = {}
        try:
            for record in adapter.list_records():
                try:
                    records[adapter.record_id(record)] = record
                except InvalidPayload:
                    continue
        except VendorError as exc:
            self.report.notes.append(f"{vendor} could not be listed ({exc}); read by id")
            return
        self.listed[vendor] = records
        self.second_records(vendor, records)

    def second_records(self, vendor: str, records: dict[str, dict[str, Any]]) -> None:
        """Records no deal is linked to that carry a deal linked to another record there
        (a create committed after we made another): each reduced to the linked one."""
        store, linked = self.rt.store, self.rt.store.linked(vendor, list(records))
        adapter = self.rt.adapters[vendor]
        for vendor_id, raw in records.items():
            if vendor_id in linked or store.duplicate_of(vendor, vendor_id):
                continue
            try:
                carried = duplicates.carried_key(self.rt, vendor, raw, adapter.to_canonical(raw))
            except InvalidPayload:
                continue  # not a record oppsync can read, so none it wrote
            if carried is None:
                continue
            try:
                found = second_record(
                    self.rt, vendor, vendor_id, carried=carried, found_by=f"reconcile:{self.run_id}"
                )
            except VendorError as exc:
                self.report.repairs.append(Repair("-", vendor, "error", str(exc), vendor_id))
                continue
            if found is not None and found.key is not None:
                self.report.repairs.append(
                    Repair(found.key, vendor, "duplicate", found.detail, vendor_id)
                )

    def run(self) -> ReconcileReport:
        for vendor in self.vendors:
            self.list_vendor(vendor)
        for key in self.keys():
            self.reconcile(key)
        return self.report

    # -- one opportunity -------------------------------------------------------------------
    def reconcile(self, key: str) -> list[Repair]:
        """Compare and repair one opportunity; returns what was done."""
        self.keep_alive()
        record = self.rt.store.load(key)
        self.report.opportunities += 1
        if not record.exists:
            return []  # linked but not merged yet: a backfill or first event under way
        done: list[Repair] = []
        drifts = {} if record.deleted else self._drifts(record, done)
        kept: dict[str, _Drift] = {}
        for drift in sorted(drifts.values(), key=lambda d: d.when):
            repair = self._feed(key, drift)
            done.append(repair)
            if repair.outcome in KEPT:
                kept[drift.vendor] = drift
        record = self.rt.store.load(key)
        cause = {
            "vendor": "reconcile",
            "delivery": f"reconcile:{self.run_id}",
            "correlation_id": self.run_id,
            "received_at": time.time(),
        }
        for vendor in self.vendors:
            if self._needs_push(record, vendor, kept.get(vendor)):
                done.append(self._push(key, vendor, cause))
        self.report.repairs += done
        for repair in done:
            log.info("reconcile.repair", **asdict(repair))
        return done

    def _drifts(self, record: Record, done: list[Repair]) -> dict[str, _Drift]:
        drifts: dict[str, _Drift] = {}
        for vendor in self.vendors:
            vendor_id = record.ids.get(vendor)
            written = record.written.get(vendor)
            if vendor_id is None or written == GONE:
                continue
            self.report.compared += 1
            try:
                drift = self._compare(vendor, vendor_id, written)
            except (VendorError, InvalidPayload) as exc:  # a fetch answered with another record
                done.append(Repair(record.key, vendor, "error", exc.reason, vendor_id))
                continue
            if drift is None:
                self.report.as_expected += 1
            else:
                drifts[vendor] = drift
        return drifts

    def _compare(self, vendor: str, vendor_id: str, written: str | None) -> _Drift | None:
        """``None`` when the vendor holds what the store says; else what it really holds."""
        adapter = self.rt.adapters[vendor]
        listed = self.listed.get(vendor, {}).get(vendor_id)
        if listed is not None:
            opp, holds = self._read(vendor, listed)
            if holds == written and not (opp and opp.deleted):
                return None
        record = fetch_record(adapter, vendor_id)
        if record is None:
            return _Drift(vendor, vendor_id, None, None, "deleted")
        opp, holds = self._read(vendor, record)
        if holds == written and not (opp and opp.deleted):
            return None
        return _Drift(vendor, vendor_id, record, opp, holds)

    def _read(self, vendor: str, record: dict[str, Any]) -> tuple[Opportunity | None, str]:
        adapter = self.rt.adapters[vendor]
        try:
            opp = adapter.to_canonical(record)
        except InvalidPayload:
            return None, "invalid"  # fed anyway: the pipeline dead-letters it with the reason
        return opp, fingerprint(opp, adapter.synced_fields)

    def _feed(self, key: str, drift: _Drift) -> Repair:
        gone = drift.record is None or (drift.opp is not None and drift.opp.deleted)
        payload = deleted_payload(drift.vendor_id) if drift.record is None else drift.record
        envelope = poll_envelope(
            drift.vendor, drift.vendor_id, payload, drift.holds, via="reconcile"
        )
        action = "delete" if gone else "change"
        try:
            outcome = self.feed(envelope)
        except Exception as exc:  # noqa: BLE001 - reported; the next run tries again
            return Repair(key, drift.vendor, "error", f"{action}: {exc}", drift.vendor_id)
        return Repair(key, drift.vendor, action, outcome, drift.vendor_id)

    def _needs_push(self, record: Record, vendor: str, kept: _Drift | None) -> bool:
        """Whether ``vendor`` must be written: the store knows it holds something else than
        the deal, or it was read holding something else and the pipeline ``kept`` the deal."""
        if record.written.get(vendor) == GONE:
            return False
        if record.deleted:
            return vendor in record.ids
        adapter = self.rt.adapters[vendor]
        wanted = fingerprint(adapter.project(record.state), adapter.synced_fields)
        if record.written.get(vendor) != wanted:
            return True
        if kept is None or kept.opp is None:
            return False
        # What the record did not carry, the vendor holds as far as we know.
        holds = fingerprint(
            kept.opp.completed(adapter.project(record.state)), adapter.synced_fields
        )
        if holds != wanted:
            # The pipeline kept the deal as it was (the change was an echo, or older than one
            # seen), yet the vendor holds something else: correct the store's belief so that
            # the push really writes.
            self.rt.store.mark_written(record.key, vendor, holds)
            return True
        return False

    def _push(self, key: str, vendor: str, cause: dict[str, Any]) -> Repair:
        try:
            outcome = self.push(key, vendor, cause)
        except Exception as exc:  # noqa: BLE001 - reported; the next run tries again
            return Repair(key, vendor, "error", f"push: {exc}")
        return Repair(key, vendor, "push", outcome)
