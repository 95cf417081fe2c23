"""Writing one vendor: make it hold the current state of one opportunity.

The push side of the pipeline (``worker/sync/ingest.py`` decides what must be written). A push
holds the (record, vendor) lock and reads the state when its turn comes (taking the lock and
reading are one step when the lock is free); while one push
waits for its turn, later ones for that vendor are dropped ("coalesced"), and during a burst
of edits it waits for the deal to go quiet, so a burst ends in a few writes carrying the
final state. Creates leave an intent first; a create left without an answer is neither
repeated nor looked for until it can no longer commit (``OPPSYNC_CREATE_SETTLE_SECONDS``
after it was sent), then looked up before creating again. Any write left without an answer
(a create or an update) may still commit: the next write to that vendor waits as long, then
sends the current state, so the last write the vendor commits is ours and current. A change
made in a vendor while we wrote there is followed by another write of the current state.
A write's fingerprint is remembered before it is sent, so the vendor's echo is recognised
even when it beats the answer.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.opportunity import fingerprint
from worker.errors import CreateSettling, OutcomeUnknown, Permanent, VendorError, WriteSettling
from worker.quotaline import plan
from worker.runtime import Runtime
from worker.store.locks import LOCK_TIMEOUT_SECONDS
from worker.store.records import HeldLock, Record
from worker.sync.merge import GONE, as_lost
from worker.sync.outcomes import PushOutcome

#: What a history entry keeps of the event behind a write.
HISTORY_CAUSE = frozenset({"vendor", "vendor_id", "delivery", "correlation_id", "fields"})
#: Two changes to one deal closer than this are a burst; its pushes wait until the deal has
#: been quiet for ``QUIET``, but no longer than ``SETTLE_MAX``.
BURST_GAP = timedelta(seconds=1)
QUIET = timedelta(milliseconds=300)
SETTLE_MAX = timedelta(seconds=2)


def push(
    rt: Runtime,
    key: str,
    vendor: str,
    *,
    cause: dict[str, Any],
    journal: list[dict[str, Any]] | None = None,
    taken: tuple[HeldLock, Record] | None = None,
) -> PushOutcome:
    """Make ``vendor`` hold the current state of ``key``; returns what was done.

    Reads the state when its turn comes, so a burst of changes coalesces into the latest
    one: while a push waits for the (record, vendor) lock, later pushes return ``COALESCED``.
    A create whose answer was lost leaves an intent: the next attempt waits until that
    create can no longer commit, then looks the record up in the vendor before creating
    again. With a ``journal`` (the fan-out's), the write's
    history note is added to it, for one history entry per event, instead of stored here.

    The common case costs three round trips: lock and read at once, mark the write in
    flight, then record it and unlock at once. Waiting for the lock or for a burst to end
    takes the slower path. ``taken``: the lock, already held, and the record read under
    it (the ingest takes them for its fan-out with its own save: one round trip fewer).
    """
    taken = taken or rt.store.lock_and_read(key, vendor, LOCK_TIMEOUT_SECONDS)
    if taken is not None:
        lock, record = taken
        try:
            if not _bursting(record.last_change):
                return _push_now(rt, record, vendor, cause, lock, journal)
            # A burst: wait for quiet as a waiting push would, unless one already waits.
            if not rt.store.claim_push(key, vendor):
                return (
                    PushOutcome.COALESCED
                )  # the waiting push writes after us, with the newer state
            try:
                _settle(rt, key)
            finally:
                rt.store.release_push(key, vendor)
            return _push_now(rt, rt.store.load(key), vendor, cause, lock, journal)
        finally:
            rt.store.unlock(lock)  # a no-op when the write already freed it
    if not rt.store.claim_push(key, vendor):
        return PushOutcome.COALESCED
    try:
        lock, _ = rt.take_lock(key, vendor)
    except BaseException:  # the lock stayed busy: this push is retried later and reads then
        rt.store.release_push(key, vendor)
        raise
    try:
        _settle(rt, key)
        # From here on a newer change needs a push of its own: we may read before it.
        rt.store.release_push(key, vendor)
        return _push_now(rt, rt.store.load(key), vendor, cause, lock, journal)
    finally:
        rt.store.unlock(lock)  # a no-op when the write already freed it


def _bursting(change: dict[str, Any] | None) -> bool:
    """Whether the deal's last two changes came less than ``BURST_GAP`` apart."""
    change = change or {}
    applied, after = change.get("applied_at"), change.get("after")
    return (
        applied is not None and after is not None and applied - after <= BURST_GAP.total_seconds()
    )


def _settle(rt: Runtime, key: str) -> None:
    """While the deal is changing in a burst (its last two changes less than ``BURST_GAP``
    apart), wait until it has been quiet for ``QUIET`` (at most ``SETTLE_MAX``): the changes
    that arrive meanwhile coalesce into this push. A lone change is pushed at once."""
    deadline = time.monotonic() + SETTLE_MAX.total_seconds()
    while True:
        change = rt.store.last_change(key) or {}
        if not _bursting(change):
            return
        wait = min(
            change["applied_at"] + QUIET.total_seconds() - time.time(),
            deadline - time.monotonic(),
        )
        if wait <= 0:
            return
        time.sleep(wait)


def _push_now(
    rt: Runtime,
    record: Record,
    vendor: str,
    cause: dict[str, Any],
    lock: HeldLock,
    journal: list[dict[str, Any]] | None,
) -> PushOutcome:
    key = record.key
    adapter = rt.adapters[vendor]
    if record.written.get(vendor) == GONE:
        if vendor not in record.rechecks:
            return PushOutcome.SKIPPED
        # A write of ours that lost its answer may still commit and bring the record back:
        # look once it can no longer commit.
        _wait_for_unanswered(rt, record, vendor)
        return _recheck(rt, record, vendor, cause)
    if record.deleted:
        return _push_delete(rt, record, vendor, cause)
    target = adapter.project(record.state)
    wanted = fingerprint(target, adapter.synced_fields)
    if record.written.get(vendor) == wanted and not record.unanswered_since_written(vendor):
        return PushOutcome.UNCHANGED
    _wait_for_unanswered(rt, record, vendor)
    known_id = record.ids.get(vendor)
    vendor_id = known_id
    if vendor_id is None and vendor in record.intents and not adapter.upserts_by_key:
        # (A vendor that upserts by our key needs no look-up: the create is just repeated.)
        vendor_id = _find_unanswered_create(rt, record, vendor)
    create = vendor_id is None
    sent = time.time()
    rt.store.before_write(key, vendor, wanted, create=create, name=record.state.name)
    extra = record.extra.get(vendor, {})
    try:
        with plan(adapter.requests_for(record.state, key=key, vendor_id=vendor_id, extra=extra)):
            result = adapter.upsert(record.state, key=key, vendor_id=vendor_id, extra=extra)
        # The id goes into this vendor's URLs from now on: only one of its id forms is kept.
        result = replace(result, vendor_id=adapter.checked_id(result.vendor_id))
    except Permanent as exc:
        rt.store.end_write(key, vendor, lock, not_created=create)
        if vendor_id is not None and (exc.status == 404 or exc.reason == "not_found"):
            # Deleted there while we wrote. Its delete (the vendor's event, the next poll or
            # reconciliation) applies the policy; nothing to retry, no dead letter.
            return PushOutcome.VANISHED
        raise
    except BaseException as exc:
        # A write that may have committed is remembered as unsettled (and a create keeps its
        # intent); it is retried once it has settled (no sooner: the retry would only wait).
        lost = isinstance(exc, OutcomeUnknown)
        uncertain_create = create and lost and not adapter.upserts_by_key
        not_created = create and isinstance(exc, VendorError) and not uncertain_create
        unanswered = (sent, wanted) if lost else None
        rt.store.end_write(key, vendor, lock, not_created=not_created, unanswered=unanswered)
        if isinstance(exc, OutcomeUnknown):
            settled_in = sent + rt.settings.create_settle_seconds - time.time()
            exc.retry_after = max(exc.retry_after or 0.0, settled_in)
        raise
    # The write that first links the deal there is its create, also when it completes a
    # create whose answer was lost (found by look-up, or repeated by our key): the vendor
    # then says "updated", but the record is the one this deal's create made.
    created = result.created or known_id is None
    outcome = PushOutcome.CREATED if created else PushOutcome.UPDATED
    note = _write_note(record, cause, vendor, outcome, result.vendor_id)
    if journal is not None:
        journal.append(note)
    before = rt.store.record_write(
        key,
        vendor,
        vendor_id=result.vendor_id,
        fingerprint=wanted,
        extra=result.extra,
        history=None if journal is not None else history_entry(cause, [note]),
        new_link=result.vendor_id != known_id,
        lock=lock,
        # A create found by look-up has committed: a record there holding what it wrote is
        # no longer our late commit (a person may put those values back).
        settled=known_id is None and vendor_id is not None,
    )
    if before not in (record.written.get(vendor), GONE):
        # A change made in this vendor was applied while we wrote there (read before it, our
        # write may carry older values over it), and its ingest does not write back to its
        # source: write the current state now.
        push(rt, key, vendor, cause=cause, journal=journal)
    return outcome


def _wait_for_unanswered(rt: Runtime, record: Record, vendor: str) -> None:
    """Wait (``WriteSettling``: a scheduled retry, no worker sleeps, no request is spent)
    until the last write to ``vendor`` whose answer was lost can no longer commit
    (``OPPSYNC_CREATE_SETTLE_SECONDS`` after it was sent): sent sooner, a newer write could
    land before it, and the vendor would be left holding the older values."""
    unsettled = record.unsettled.get(vendor)
    if unsettled is None or (vendor not in record.ids and vendor in record.intents):
        return  # a create's intent: its look-up waits as long (``CreateSettling``)
    sent = unsettled[0]
    if (wait := sent + rt.settings.create_settle_seconds - time.time()) > 0:
        raise WriteSettling(
            f"{vendor}: a write sent {time.time() - sent:.1f} s ago got no answer and may "
            "still commit",
            vendor=vendor,
            retry_after=wait,
        )


def _find_unanswered_create(rt: Runtime, record: Record, vendor: str) -> str | None:
    """The record an earlier create without an answer made, if it made one.

    That create may still be under way at the vendor and commit after our timeout: it is
    not looked for, nor repeated, before ``OPPSYNC_CREATE_SETTLE_SECONDS`` after it was
    sent. Until then this push is retried at that moment (``CreateSettling``: the retry
    policy honours its wait, no worker sleeps on it, no request is spent)."""
    sent = record.intents[vendor]
    adapter = rt.adapters[vendor]
    settled_at = sent + rt.settings.create_settle_seconds
    if (wait := settled_at - time.time()) > 0:
        raise CreateSettling(
            f"{vendor}: a create sent {time.time() - sent:.1f} s ago may still commit",
            vendor=vendor,
            retry_after=wait,
        )
    rt.store.note_unanswered(record.key, vendor)  # a second record may yet appear there
    since = datetime.fromtimestamp(sent, UTC) - timedelta(minutes=5)
    # Vendors without a place for our key are searched by name: the name that create
    # carried first (a change since may have renamed the deal), then the current one.
    sent_name = record.intent_names.get(vendor) or None
    for name in dict.fromkeys((sent_name or record.state.name, record.state.name)):
        found = adapter.find_existing(replace(record.state, name=name), key=record.key, since=since)
        if found is not None:
            # The id goes into this vendor's URLs from now on: only one of its forms is kept.
            return adapter.checked_id(found)
    return None


def _write_note(
    record: Record, cause: dict[str, Any], vendor: str, action: str, vendor_id: str | None
) -> dict[str, Any]:
    """One write as the history keeps it beside its cause: where, when, what. When the
    write also carries a later change (coalesced pushes), that change is named as well."""
    note: dict[str, Any] = {
        "target": vendor,
        "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "action": action,
        "target_id": vendor_id,
    }
    change = record.last_change
    if change and change.get("delivery") != cause.get("delivery"):
        note["carries"] = {k: change.get(k) for k in ("vendor", "vendor_id", "delivery", "fields")}
    return note


def history_entry(cause: dict[str, Any], notes: list[dict[str, Any]]) -> dict[str, Any]:
    """One history entry: the event behind some writes (only what ``oppsync show`` tells),
    and those writes. An event's fan-out keeps one, so its cause is stored once."""
    return {"cause": {k: v for k, v in cause.items() if k in HISTORY_CAUSE}, "writes": notes}


def _recheck(rt: Runtime, record: Record, vendor: str, cause: dict[str, Any]) -> PushOutcome:
    """The deal was deleted in ``vendor`` while a write of ours was under way: if that
    write brought the record back, delete it again."""
    adapter = rt.adapters[vendor]
    vendor_id = record.ids.get(vendor)
    found = adapter.fetch(vendor_id) if vendor_id else None
    outcome = PushOutcome.UNCHANGED
    if found is not None and not adapter.to_canonical(found).deleted:
        try:
            adapter.delete(str(vendor_id))
            outcome = PushOutcome.DELETED
        except Permanent as exc:
            if exc.reason != "unsupported":
                raise
        action = "deleted again (our write crossed its delete)"
        note = _write_note(record, cause, vendor, action, vendor_id)
        rt.store.note_write(record.key, vendor, history_entry(cause, [note]))
    rt.store.clear_recheck(record.key, vendor)
    return outcome


def _push_delete(rt: Runtime, record: Record, vendor: str, cause: dict[str, Any]) -> PushOutcome:
    adapter = rt.adapters[vendor]
    vendor_id = record.ids.get(vendor)
    if vendor_id is None:
        rt.store.mark_written(record.key, vendor, GONE)
        return PushOutcome.SKIPPED
    action = "deleted"
    try:
        adapter.delete(vendor_id)
    except Permanent as exc:
        if exc.reason != "unsupported":
            raise
        # The vendor cannot delete (iVvy has no delete action): the nearest is "lost".
        adapter.upsert(
            as_lost(rt, record.state),
            key=record.key,
            vendor_id=vendor_id,
            extra=record.extra.get(vendor, {}),
        )
        action = "marked lost (cannot delete)"
    rt.store.mark_written(record.key, vendor, GONE)
    note = _write_note(record, cause, vendor, action, vendor_id)
    rt.store.note_write(record.key, vendor, history_entry(cause, [note]))
    return PushOutcome.DELETED
