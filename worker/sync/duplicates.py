"""Second records: one deal held twice in one vendor, noticed and reduced to the linked one.

An unanswered create is not repeated before it settles (``OPPSYNC_CREATE_SETTLE_SECONDS``,
``worker/sync/push.py``), but a vendor slower than any bound can still commit it after our
second create made the record we linked. Such a record carries the deal (our key stored on
it, or exactly what we wrote there) under an id other than the linked one; an event about
it, a poll or a reconciliation that meets it hands it here. The linked record is kept; the
other is deleted where the vendor can delete (Leadway, Salescaling, iCloudReady), else
marked (iVvy has no delete action, VENDORS.md §3.3-§3.5: it is set to lost and named a
duplicate). Its id is remembered, so its own later events (the echo of the marking) are
dropped; the deal's history says what was done (``oppsync show``), and
``oppsync_duplicates_resolved_total{vendor}`` counts it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from schemas.opportunity import Opportunity, fingerprint
from worker.errors import Permanent
from worker.logs import log
from worker.runtime import Runtime
from worker.store import metrics


def carried_key(
    rt: Runtime, vendor: str, record: dict[str, Any], incoming: Opportunity
) -> str | None:
    """The deal a record we do not know carries: our key stored on it, or exactly what we
    wrote there (recently). ``None``: a record of its own."""
    adapter = rt.adapters[vendor]
    stamped = adapter.key_of(record)
    if stamped and rt.store.exists(stamped):
        return stamped
    return rt.store.key_we_wrote(vendor, fingerprint(incoming, adapter.synced_fields))


def linked_other(rt: Runtime, key: str, vendor: str, vendor_id: str) -> str | None:
    """The id ``key`` is linked to in ``vendor`` when that is not ``vendor_id`` and a create
    of ``key`` there once went unanswered: only such a create can have made a second
    record. (A person's own deal that happens to hold the same values is no duplicate.)"""
    linked = rt.store.linked_after_unanswered(key, vendor)
    return linked if linked is not None and linked != vendor_id else None


def resolve(
    rt: Runtime,
    key: str,
    vendor: str,
    *,
    kept: str,
    duplicate: str,
    marked: Opportunity,
    found_by: str,
) -> str:
    """Keep ``kept``; delete ``duplicate``, or where the vendor cannot delete, write it as
    ``marked`` (the deal set to lost) under a name saying whose duplicate it is. Returns
    what was done."""
    adapter = rt.adapters[vendor]
    rt.store.mark_duplicate(vendor, duplicate, key)  # first: its echo must find it marked
    try:
        adapter.delete(duplicate)
        action = "duplicate deleted"
    except Permanent as exc:
        if exc.reason != "unsupported":
            raise
        name = f"DUPLICATE of {kept}: {marked.name or ''}".strip()
        extra = rt.store.load(key).extra.get(vendor, {})
        adapter.upsert(marked.replace(name=name), key=key, vendor_id=duplicate, extra=extra)
        action = "duplicate marked lost (cannot delete)"
    note = {
        "target": vendor,
        "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "action": f"{action}, kept {kept}",
        "target_id": duplicate,
    }
    cause = {"vendor": vendor, "vendor_id": duplicate, "delivery": found_by}
    rt.store.add_history(key, {"cause": cause, "writes": [note]})
    metrics.count(rt.redis, "oppsync_duplicates_resolved_total", vendor=vendor)
    log.warning(
        "duplicate.resolved", key=key, vendor=vendor, kept=kept, duplicate=duplicate, action=action
    )
    return action
