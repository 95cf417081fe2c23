"""Polling's change detection: which listed records are news, when a scan may stop at the
high-water mark, and when a missing record is a delete. On a real Redis, with in-memory
vendors (the adapters are the only stand-ins here)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from marshmallow import ValidationError

from schemas.envelope import Envelope, is_thin
from schemas.opportunity import Opportunity, Status, fingerprint, load
from worker.errors import InvalidPayload, Transient
from worker.runtime import Runtime
from worker.sandbox.embedded_redis import EmbeddedRedis
from worker.settings import from_env
from worker.store.records import Linked
from worker.store.state import Store
from worker.upkeep import polling
from worker.upkeep.polling import Change, classify

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FIELDS = frozenset({"name", "amount", "status"})


class ListedVendor:
    """A vendor whose list answers newest ``updated_at`` first; ``fail_after`` makes the
    listing fail after that many records (a page that did not load)."""

    synced_fields = FIELDS

    def __init__(self, name: str) -> None:
        self.name = name
        self.records: dict[str, dict[str, Any]] = {}
        self.fail_after: int | None = None
        self.listed = 0

    def record_id(self, record: dict[str, Any]) -> str:
        if "id" not in record:
            raise InvalidPayload("no id")
        return str(record["id"])

    def to_canonical(self, record: dict[str, Any]) -> Opportunity:
        try:
            return load({k: v for k, v in record.items() if k in (*FIELDS, "updated_at")})
        except ValidationError as exc:
            raise InvalidPayload("invalid", fields=exc.normalized_messages()) from None

    def fetch(self, vendor_id: str) -> dict[str, Any] | None:
        return self.records.get(vendor_id)

    def list_records(self) -> Iterator[dict[str, Any]]:
        ordered = sorted(self.records.values(), key=lambda r: r["updated_at"], reverse=True)
        for n, record in enumerate(ordered):
            if self.fail_after is not None and n >= self.fail_after:
                raise Transient("page 2 failed", vendor=self.name)
            self.listed += 1
            yield record

    def put(self, vendor_id: str, name: str, at: datetime, **more: Any) -> dict[str, Any]:
        record = {"id": vendor_id, "name": name, "status": "open", "updated_at": at.isoformat()}
        self.records[vendor_id] = {**record, **more}
        return self.records[vendor_id]

    def holds(self, vendor_id: str) -> str:
        return fingerprint(self.to_canonical(self.records[vendor_id]), FIELDS)


@pytest.fixture
def rt(redis_server: EmbeddedRedis) -> Iterator[Runtime]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushdb()
    settings = from_env({"OPPSYNC_VENDORS": "salescaling,icloudready"}, check=False)
    runtime = Runtime(settings=settings, redis=client, store=Store(client))
    runtime.adapters = {
        "salescaling": ListedVendor("salescaling"),  # type: ignore[dict-item]
        "icloudready": ListedVendor("icloudready"),  # type: ignore[dict-item]
    }
    yield runtime
    client.close()


def vendor(rt: Runtime, name: str = "salescaling") -> ListedVendor:
    return rt.adapters[name]  # type: ignore[return-value]


def poll(rt: Runtime, name: str = "salescaling", *, full: bool = False) -> list[Envelope]:
    queued: list[Envelope] = []
    polling.poll(rt, name, queued.append, full=full)
    return queued


def synced(rt: Runtime, name: str, vendor_id: str, *, key: str = "opp_1") -> None:
    """As if the pipeline had merged the record: linked, and its fingerprint stored."""
    rt.store.link(key, name, vendor_id)
    rt.store.mark_written(key, name, vendor(rt, name).holds(vendor_id))


# -- the decision --------------------------------------------------------------------------
OPP = Opportunity(name="Deal", amount=None, status=Status.OPEN, updated_at=T0)
HOLDS = fingerprint(OPP, FIELDS)


@pytest.mark.parametrize(
    ("opp", "linked", "expected"),
    [
        (OPP, None, Change.NEW),
        (OPP, "listed-before", Change.UNADOPTED),
        (OPP.replace(deleted=True), None, Change.IGNORED),
        (OPP, Linked("k", written=HOLDS), Change.UNCHANGED),
        (OPP, Linked("k", written="0" * 32), Change.CHANGED),
        (OPP, Linked("k", written=None), Change.CHANGED),
        (OPP, Linked("k", written="gone"), Change.GONE),
        (OPP.replace(deleted=True), Linked("k", written=HOLDS), Change.DELETED),
        (
            OPP,
            Linked("k", written="0" * 32, seen=(T0 + timedelta(seconds=1)).isoformat()),
            Change.STALE,
        ),
        (OPP, Linked("k", written="0" * 32, seen=T0.isoformat()), Change.CHANGED),
    ],
    ids=[
        "unlinked-is-new",
        "unlinked-listed-before-is-unadopted",
        "unlinked-deleted-is-ignored",
        "holds-what-we-know",
        "holds-something-else",
        "nothing-known-held",
        "deleted-there-before",
        "marked-deleted",
        "older-than-seen",
        "as-old-as-seen",
    ],
)
def test_classify_decides_from_the_link_and_the_fingerprint(
    opp: Opportunity, linked: Linked | str | None, expected: Change
) -> None:
    before = linked == "listed-before"
    link = linked if isinstance(linked, Linked) else None
    assert classify(opp, fingerprint(OPP, FIELDS), link, listed_before=before) == expected


@pytest.mark.parametrize(
    ("name", "mark", "full_at", "expected"),
    [
        ("icloudready", T0, 1000.0, True),
        ("icloudready", T0, 1000.0 - polling.FULL_SCAN_SECONDS, False),
        ("icloudready", None, 1000.0, False),
        ("icloudready", T0, None, False),
        ("salescaling", T0, 1000.0, False),
    ],
    ids=["recent-full-scan", "full-scan-due", "no-mark", "never-fully-scanned", "unsorted-api"],
)
def test_incremental_only_for_a_newest_first_list_between_full_scans(
    name: str, mark: datetime | None, full_at: float | None, expected: bool
) -> None:
    assert polling.incremental(name, mark, full_at, now=1001.0) == expected


# -- polls ---------------------------------------------------------------------------------
def test_poll_feeds_new_and_changed_records_and_skips_known_ones(rt: Runtime) -> None:
    # given a vendor polled before, then one record oppsync holds, one it held before a
    # person changed it, and a new one
    poll(rt)
    sc = vendor(rt)
    sc.put("known", "Known", T0)
    synced(rt, "salescaling", "known", key="opp_known")
    sc.put("edited", "Edited", T0)
    synced(rt, "salescaling", "edited", key="opp_edited")
    sc.put("edited", "Edited again", T0 + timedelta(minutes=1))
    sc.put("new", "New", T0)
    # when the vendor is polled
    queued = poll(rt)
    # then the changed and the new record are fed, as the vendor's own records
    assert sorted(e.payload["id"] for e in queued) == ["edited", "new"]
    envelope = next(e for e in queued if e.payload["id"] == "edited")
    assert envelope.scheme == "poll" and envelope.vendor == "salescaling"
    assert envelope.delivery_id == f"poll:salescaling:edited:{sc.holds('edited')}"
    assert envelope.payload == sc.records["edited"]


def test_poll_feeds_a_linked_record_gone_from_a_complete_scan_as_a_delete(rt: Runtime) -> None:
    # given two linked records seen by a full scan
    sc = vendor(rt)
    for vendor_id in ("a", "b"):
        sc.put(vendor_id, vendor_id.upper(), T0)
        synced(rt, "salescaling", vendor_id, key=f"opp_{vendor_id}")
    assert poll(rt) == []
    # when one is deleted in the vendor and the next scan completes
    del sc.records["b"]
    queued = poll(rt)
    # then that one is fed as a delete: a thin event the pipeline confirms by fetching
    assert [e.payload for e in queued] == [polling.deleted_payload("b")]
    assert is_thin(queued[0].payload)


def test_poll_infers_no_delete_from_a_scan_that_failed_part_way(rt: Runtime) -> None:
    # given three linked records seen by a full scan, one of them since deleted
    sc = vendor(rt)
    for n, vendor_id in enumerate(("a", "b", "c")):
        sc.put(vendor_id, vendor_id, T0 + timedelta(minutes=n))
        synced(rt, "salescaling", vendor_id, key=f"opp_{vendor_id}")
    poll(rt)
    del sc.records["a"]
    # when the listing fails after the first record
    sc.fail_after = 1
    queued: list[Envelope] = []
    with pytest.raises(Transient):
        polling.poll(rt, "salescaling", queued.append)
    # then nothing was fed, and the next complete scan still sees the delete
    assert queued == []
    sc.fail_after = None
    assert [e.payload for e in poll(rt)] == [polling.deleted_payload("a")]


def test_poll_takes_a_missing_record_the_vendor_still_has_for_no_delete(rt: Runtime) -> None:
    # given a linked record seen by a full scan
    sc = vendor(rt)
    sc.put("a", "A", T0)
    synced(rt, "salescaling", "a")
    poll(rt)
    # when the next listing skips it (it moved between pages) but the vendor still has it
    hidden = sc.records.pop("a")
    original_fetch = sc.fetch
    sc.fetch = lambda vendor_id: hidden if vendor_id == "a" else original_fetch(vendor_id)  # type: ignore[method-assign]
    # then it is not a delete, and it stays a candidate for the next scan
    assert poll(rt) == []
    assert rt.store.poll_ids("salescaling") == {"a"}


def test_poll_between_full_scans_stops_at_the_high_water_mark(rt: Runtime) -> None:
    # given a newest-first vendor fully scanned once, with 50 old records
    icr = vendor(rt, "icloudready")
    for n in range(50):
        icr.put(f"old{n}", f"Old {n}", T0 - timedelta(days=1, minutes=n))
        synced(rt, "icloudready", f"old{n}", key=f"opp_{n}")
    icr.put("recent", "Recent", T0)
    synced(rt, "icloudready", "recent", key="opp_recent")
    poll(rt, "icloudready")
    # when one old record is edited and the vendor is polled again soon after
    icr.put("old7", "Old 7, renamed", T0 + timedelta(minutes=1))
    icr.listed = 0
    queued = poll(rt, "icloudready")
    # then the edit is fed, and the walk stopped at the mark instead of reading every record
    assert [e.payload["id"] for e in queued] == ["old7"]
    assert icr.listed == 3  # old7, recent, then the first record below the mark
    # and a full scan asked for reads them all
    icr.listed = 0
    poll(rt, "icloudready", full=True)
    assert icr.listed == 51


def test_poll_dead_letters_an_invalid_record_once_not_every_poll(rt: Runtime) -> None:
    # given a record made after the baseline, whose status the canonical schema refuses
    poll(rt)
    sc = vendor(rt)
    sc.put("bad", "Bad", T0, status="maybe")
    # when the vendor is polled twice
    first, second = poll(rt), poll(rt)
    # then it is fed once (the pipeline dead-letters it with the reason), not once per poll
    assert [e.payload["id"] for e in first] == ["bad"]
    assert second == []


def test_poll_records_the_newest_time_seen_as_the_mark(rt: Runtime) -> None:
    sc = vendor(rt, "icloudready")
    sc.put("a", "A", T0)
    sc.put("b", "B", T0 + timedelta(hours=2))
    before = time.time()
    poll(rt, "icloudready")
    mark = rt.store.poll_mark("icloudready")
    assert mark.mark == T0 + timedelta(hours=2)
    assert mark.full_at is not None and mark.full_at >= before


def test_poll_baseline_leaves_records_that_predate_oppsync_to_backfill(rt: Runtime) -> None:
    # given records made before oppsync ever looked (they may exist in the others too)
    sc = vendor(rt)
    sc.put("old", "Old", T0)
    sc.put("old-bad", "Old bad", T0, status="maybe")
    # when the vendor is polled for the first time, and again after a person edits one
    queued: list[Envelope] = []
    first = polling.poll(rt, "salescaling", queued.append)
    sc.put("old", "Old, renamed", T0 + timedelta(minutes=1))
    again = poll(rt)
    # then neither is fed (creating them elsewhere could duplicate them): they wait for
    # backfill, and the poll says so
    assert queued == [] and again == []
    assert first.decided == {"unadopted": 1}
    assert "oppsync backfill --from salescaling" in first.summary()
    # while a record made after the baseline is fed
    sc.put("fresh", "Fresh", T0 + timedelta(minutes=2))
    assert [e.payload["id"] for e in poll(rt)] == ["fresh"]
