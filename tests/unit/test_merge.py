"""The pipeline's finer rules on a real Redis with in-memory vendors: ties, which rule decided
a field, stages following statuses, echoes told from a person putting a value back, records
our write may have replaced, deletes crossing our writes, a push crossing its vendor's own
change, coalesced pushes, provenance."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from schemas.envelope import InboundEvent
from schemas.mapping import Mapping, Stage
from schemas.opportunity import SYNCED_FIELDS, Opportunity, Status
from tests.strategies import envelope
from tests.unit.test_pipeline import MemoryAdapter
from worker.errors import Permanent
from worker.runtime import Runtime
from worker.sandbox.embedded_redis import EmbeddedRedis
from worker.settings import from_env
from worker.store.state import Store
from worker.sync import ingest, push
from worker.sync.echoes import CLOCK_SKEW
from worker.sync.merge import GONE, UNSURE
from worker.sync.outcomes import Outcome
from worker.vendors.base import UpsertResult
from worker.vendors.ivvy import IvvyAdapter

STAGES = (
    Stage("new", Status.OPEN),
    Stage("proposal", Status.OPEN),
    Stage("won", Status.WON),
    Stage("lost", Status.LOST),
)
NO_STAGE = frozenset(SYNCED_FIELDS) - {"stage"}


class Vendor(MemoryAdapter):
    """An in-memory vendor whose native events say when they happened (``at``), and whose
    records carry their own ``updated_at`` once written."""

    def parse_native(self, payload: dict[str, Any]) -> InboundEvent | None:
        at = payload.get("at")
        return InboundEvent(
            vendor_id=payload["id"],
            deleted=payload.get("deleted", False),
            event_time=datetime.fromisoformat(at) if at else None,
        )

    def upsert(
        self, opp: Opportunity, *, key: str, vendor_id: str | None, extra: dict[str, str]
    ) -> UpsertResult:
        result = super().upsert(opp, key=key, vendor_id=vendor_id, extra=extra)
        self.records[result.vendor_id]["updated_at"] = datetime.now(UTC).isoformat()
        return result


@pytest.fixture
def rt(redis_server: EmbeddedRedis) -> Iterator[Runtime]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushdb()
    settings = from_env({"OPPSYNC_VENDORS": "siro,leadway,ivvy,salescaling"}, check=False)
    runtime = Runtime(
        settings=replace(settings, mapping=Mapping(stages=STAGES)),
        redis=client,
        store=Store(client),
    )
    runtime.adapters = {
        "siro": Vendor("siro", NO_STAGE),
        "leadway": Vendor("leadway"),
        "ivvy": Vendor("ivvy", time_resolution=IvvyAdapter.time_resolution),
        "salescaling": Vendor("salescaling", frozenset({"name", "amount", "status"})),
    }
    yield runtime
    client.close()


def now(offset: float = 0.0) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=offset)


def deliver(rt: Runtime, vendor: str, record: dict[str, Any], at: datetime) -> Outcome:
    """The vendor's automation posts its record (a snapshot, stamped ``at``)."""
    data = {**record, "updated_at": at.isoformat()}
    rt.adapters[vendor].records[record["id"]] = data  # type: ignore[attr-defined]
    return ingest.ingest(rt, envelope(vendor, data), patient=False)


def announce(rt: Runtime, vendor: str, vendor_id: str, **extra: Any) -> Outcome:
    """The vendor's native event: just the id (the record is fetched), or a delete."""
    payload = {"id": vendor_id, **extra}
    return ingest.ingest(rt, envelope(vendor, payload, "leadway"), patient=False)


def sync(rt: Runtime, outcome: Outcome) -> dict[str, str]:
    return {
        v: push.push(rt, outcome.key, v, cause={"vendor": "test", "delivery": "d"})  # type: ignore[arg-type]
        for v in outcome.targets
    }


def held(rt: Runtime, vendor: str) -> dict[str, Any]:
    ((_, record),) = rt.adapters[vendor].records.items()  # type: ignore[attr-defined]
    return dict(record)


def deal(rt: Runtime, source: str = "leadway", at: datetime | None = None) -> str:
    """A deal in proposal, synced to every vendor; returns its key."""
    record = {"id": f"{source}-1", "name": "Deal", "amount": "10.00", "status": "open"}
    if "stage" in rt.adapters[source].synced_fields:
        record["stage"] = "proposal"
    outcome = deliver(rt, source, record, at or now(-60))
    sync(rt, outcome)
    assert outcome.key
    return outcome.key


# -- conflicts --------------------------------------------------------------------------------
@pytest.mark.parametrize("first", ["leadway", "salescaling"])
def test_merge_a_tie_between_vendors_has_one_winner_whatever_arrives_last(
    rt: Runtime, first: str
) -> None:
    # given a deal, renamed in Leadway and in Salescaling at the very same instant
    key = deal(rt, "siro")
    tie = now(-10)
    order = [first, "salescaling" if first == "leadway" else "leadway"]
    # when both changes arrive, in either order
    for vendor in order:
        record = held(rt, vendor)
        deliver(rt, vendor, {**record, "name": f"From {vendor}"}, tie)
    # then the same one wins both ways, and the rule says why
    stored = rt.store.load(key)
    assert stored.state.name == "From salescaling"
    assert stored.sources["name"] == "salescaling"


def test_merge_an_older_change_is_refused_and_the_rule_names_the_kept_value(rt: Runtime) -> None:
    key = deal(rt, "siro")
    deliver(rt, "salescaling", {**held(rt, "salescaling"), "name": "Newer"}, now(-5))
    # when Leadway's older rename arrives
    outcome = deliver(rt, "leadway", {**held(rt, "leadway"), "name": "Older"}, now(-20))
    # then the newer name stays, the rule says whose it is, and Leadway is put back
    stored = rt.store.load(key)
    assert stored.state.name == "Newer"
    assert stored.rules["name"] == (
        "last writer wins: leadway's older change ignored, value from salescaling"
    )
    assert "leadway" in outcome.targets


def test_merge_stage_follows_a_status_from_a_vendor_without_stages(rt: Runtime) -> None:
    key = deal(rt, "leadway")
    # when Salescaling (no stages) says the deal is won
    deliver(rt, "salescaling", {**held(rt, "salescaling"), "status": "won"}, now())
    # then the stage moves to the mapping's won stage, and says why
    stored = rt.store.load(key)
    assert (stored.state.status, stored.state.stage) == (Status.WON, "won")
    assert stored.rules["stage"] == "follows status from salescaling"


def test_merge_owned_stage_refused_but_a_status_change_still_moves_it(rt: Runtime) -> None:
    rt.settings = replace(
        rt.settings, mapping=Mapping(stages=STAGES, ownership={"stage": "leadway"})
    )
    key = deal(rt, "leadway")
    # when iVvy moves the stage within the same status, it is refused and put back
    moved = deliver(rt, "ivvy", {**held(rt, "ivvy"), "stage": "new"}, now())
    assert rt.store.load(key).state.stage == "proposal"
    assert rt.store.load(key).rules["stage"] == "owned by leadway: ivvy's change ignored"
    assert "ivvy" in moved.targets
    # when iVvy moves it to won (a status change too), the status is taken and the stage
    # follows it, so stage and status agree in every vendor
    deliver(rt, "ivvy", {**held(rt, "ivvy"), "stage": "won", "status": "won"}, now(1))
    stored = rt.store.load(key)
    assert (stored.state.status, stored.state.stage) == (Status.WON, "won")
    assert stored.rules["stage"] == "follows status from ivvy"


# -- echoes -----------------------------------------------------------------------------------
def test_ingest_an_earlier_write_coming_back_is_an_echo(rt: Runtime) -> None:
    key = deal(rt, "leadway")
    first = held(rt, "salescaling")
    sync(rt, deliver(rt, "leadway", {**held(rt, "leadway"), "name": "Second"}, now(-30)))
    # when Salescaling's late notice of our first write arrives
    late = deliver(rt, "salescaling", first, now(-1))
    # then it is our echo
    assert late.outcome == "echo"
    assert rt.store.load(key).state.name == "Second"


def test_ingest_a_person_putting_back_an_earlier_value_is_a_change(rt: Runtime) -> None:
    key = deal(rt, "leadway")
    first = held(rt, "salescaling")
    sync(rt, deliver(rt, "leadway", {**held(rt, "leadway"), "name": "Second"}, now(-30)))
    # when a person in Salescaling puts the first name back, well after our last write
    back = deliver(rt, "salescaling", first, now() + CLOCK_SKEW + timedelta(seconds=1))
    # then it is a change like any other
    assert back.outcome == "applied"
    assert rt.store.load(key).state.name == "Deal"


def test_ingest_a_snapshot_our_write_replaced_leaves_the_vendor_unsure(rt: Runtime) -> None:
    # given a deal written to Salescaling just now
    key = deal(rt, "leadway")
    # when Salescaling's automation posts a person's change made before our write landed
    older = deliver(rt, "salescaling", {**held(rt, "salescaling"), "amount": "99.00"}, now(-30))
    # then the change is merged, but Salescaling may hold our write instead: write it again
    assert rt.store.load(key).state.amount is not None
    assert str(rt.store.load(key).state.amount) == "99.00"
    assert rt.store.load(key).written["salescaling"] == UNSURE
    assert "salescaling" in older.targets


def test_ingest_a_record_fetched_after_our_write_is_what_the_vendor_holds(rt: Runtime) -> None:
    key = deal(rt, "salescaling")
    record = held(rt, "leadway")
    rt.adapters["leadway"].records[record["id"]] = {  # type: ignore[attr-defined]
        **record,
        "name": "Renamed",
        "updated_at": now().isoformat(),
    }
    # when Leadway's event names the record and oppsync fetches it, right after our write
    # (past its millisecond: a fetch within the write's own millisecond is rightly unsure)
    time.sleep(0.002)
    outcome = announce(rt, "leadway", record["id"])
    # then Leadway is known to hold it, and is not written again
    assert outcome.outcome == "applied"
    assert "leadway" not in outcome.targets
    assert rt.store.load(key).written["leadway"] != UNSURE


# -- deletes ----------------------------------------------------------------------------------
def test_delete_mark_lost_does_not_undo_a_later_status_change(rt: Runtime) -> None:
    key = deal(rt, "leadway", at=now(-600))
    deliver(rt, "salescaling", {**held(rt, "salescaling"), "status": "won"}, now(-60))
    # when Leadway's delete, made before the deal was won, arrives
    lid = held(rt, "leadway")["id"]
    outcome = announce(rt, "leadway", lid, deleted=True, at=now(-120).isoformat())
    # then the deal stays won (and Leadway is never written again)
    assert outcome.outcome == "deleted"
    stored = rt.store.load(key)
    assert stored.state.status == Status.WON
    assert stored.written["leadway"] == GONE


def changed_past_a_second(rt: Runtime, source: str, **change: Any) -> tuple[str, datetime]:
    """A deal from ``source``, then changed in Salescaling 0.4 s past a whole second: its key
    and that second."""
    key = deal(rt, source, at=now(-600))
    second = now(-60).replace(microsecond=0)
    deliver(
        rt, "salescaling", {**held(rt, "salescaling"), **change}, second + timedelta(seconds=0.4)
    )
    return key, second


@pytest.mark.parametrize(("stamped", "status"), [(0, Status.LOST), (-1, Status.WON)])
def test_delete_stamped_to_the_second_is_older_only_when_its_whole_second_is(
    rt: Runtime, stamped: int, status: Status
) -> None:
    # given a deal won in Salescaling at 0.4 s past a second
    key, second = changed_past_a_second(rt, "leadway", status="won")
    # when iVvy's delete arrives, stamped (to the second, as iVvy stamps) that same second,
    # or the second before
    iid = held(rt, "ivvy")["id"]
    at = second + timedelta(seconds=stamped)
    announce(rt, "ivvy", iid, deleted=True, at=at.isoformat())
    # then the same second may be after the win (it arrived later): the deal is marked
    # lost; a whole second before the win is surely older: the deal stays won
    assert rt.store.load(key).state.status == status


@pytest.mark.parametrize(("stamped", "name"), [(0, "From ivvy"), (-1, "From salescaling")])
def test_merge_a_change_stamped_to_the_second_is_older_only_when_its_whole_second_is(
    rt: Runtime, stamped: int, name: str
) -> None:
    # given a deal renamed in Salescaling at 0.4 s past a second
    key, second = changed_past_a_second(rt, "siro", name="From salescaling")
    # when iVvy's rename arrives after it, stamped that same second or the second before
    at = second + timedelta(seconds=stamped)
    deliver(rt, "ivvy", {**held(rt, "ivvy"), "name": "From ivvy"}, at)
    # then only the second before is refused as older
    assert rt.store.load(key).state.name == name


def test_delete_crossing_our_write_deletes_a_record_our_write_revived(rt: Runtime) -> None:
    # given a deal written to SIRO just now (SIRO's upsert revives a deleted record)
    key = deal(rt, "leadway")
    sid = held(rt, "siro")["id"]
    # when SIRO's delete, made as our write landed, arrives (policy ignore: no fan-out)
    rt.settings.vendor["siro"] = replace(rt.settings.vendor["siro"], delete_policy="ignore")
    outcome = announce(rt, "siro", sid, deleted=True, at=now().isoformat())
    # then SIRO is checked once more, and the record our write revived is deleted
    assert outcome.targets == ("siro",)
    assert sync(rt, outcome) == {"siro": "deleted"}
    assert rt.adapters["siro"].records == {}  # type: ignore[attr-defined]
    assert "siro" not in rt.store.load(key).rechecks
    assert rt.store.writes(key)[0]["action"] == "deleted again (our write crossed its delete)"


def test_push_to_a_record_deleted_there_meanwhile_vanishes_without_error(rt: Runtime) -> None:
    key = deal(rt, "leadway")

    def gone(*_: Any, **__: Any) -> UpsertResult:
        raise Permanent("not found", vendor="salescaling", status=404, reason="http_404")

    rt.adapters["salescaling"].upsert = gone  # type: ignore[method-assign]
    outcome = deliver(rt, "leadway", {**held(rt, "leadway"), "name": "Renamed"}, now())
    # when the push finds the record deleted there, then it is neither an error nor a retry
    assert sync(rt, outcome)["salescaling"] == "vanished"
    assert "salescaling" not in rt.store.load(key).writing


# -- coalescing and provenance ---------------------------------------------------------------
def test_push_while_another_waits_for_its_turn_is_coalesced(rt: Runtime) -> None:
    key = deal(rt, "leadway")
    deliver(rt, "leadway", {**held(rt, "leadway"), "name": "Renamed"}, now())
    assert rt.store.claim_push(key, "siro")  # another push is waiting for its turn
    assert push.push(rt, key, "siro", cause={}) == "coalesced"
    rt.store.release_push(key, "siro")
    assert push.push(rt, key, "siro", cause={}) == "updated"


def test_push_during_a_burst_waits_and_carries_the_last_change(rt: Runtime) -> None:
    key = deal(rt, "leadway", at=now(-600))
    lead = rt.adapters["leadway"]
    siro_writes_before = len(rt.store.writes(key))
    for i, offset in enumerate((-3, -2)):  # two quick changes: a burst has begun
        deliver(rt, "leadway", {**held(rt, "leadway"), "name": f"Burst {i}"}, now(offset))
    results: list[str] = []
    pusher = threading.Thread(target=lambda: results.append(push.push(rt, key, "siro", cause={})))
    pusher.start()
    time.sleep(push.QUIET.total_seconds() / 3)
    # when the last change of the burst arrives while the push waits for quiet
    deliver(rt, "leadway", {**held(rt, "leadway"), "name": "Burst last"}, now(-1))
    pusher.join()
    # then one write carried it
    assert results == ["updated"]
    assert held(rt, "siro")["name"] == "Burst last"
    assert len(rt.store.writes(key)) == siro_writes_before + 1
    assert lead.name == "leadway"


def test_push_provenance_names_the_event_behind_each_write(rt: Runtime) -> None:
    outcome = deliver(rt, "leadway", {"id": "L9", "name": "Deal", "status": "open"}, now(-60))
    cause = {"vendor": "leadway", "vendor_id": "L9", "delivery": "wh-1", "fields": ["name"]}
    for vendor in outcome.targets:
        push.push(rt, outcome.key, vendor, cause=cause)  # type: ignore[arg-type]
    writes = rt.store.writes(outcome.key)  # type: ignore[arg-type]
    assert sorted(w["target"] for w in writes) == ["ivvy", "salescaling", "siro"]
    assert {(w["vendor"], w["delivery"], w["action"]) for w in writes} == {
        ("leadway", "wh-1", "created")
    }


def test_push_that_crossed_a_change_made_in_its_vendor_writes_the_current_state(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a deal synced from leadway, renamed there (changes far enough apart to be no
    # burst); the push of the rename to salescaling has read the deal (a fan-out's
    # hand-over) and not written yet
    monkeypatch.setattr(push, "BURST_GAP", timedelta(0))
    key = deal(rt, "leadway")
    deliver(rt, "leadway", {**held(rt, "leadway"), "name": "Leadway's name"}, now(-1))
    taken = rt.store.lock_and_read(key, "salescaling", 60)
    # when a person's newer rename in salescaling is applied meanwhile (its ingest writes
    # every vendor but its source), then our push writes
    person = {**held(rt, "salescaling"), "name": "Sc's name"}
    changed = deliver(rt, "salescaling", person, now(CLOCK_SKEW.total_seconds() + 1))
    assert "salescaling" not in changed.targets
    push.push(rt, key, "salescaling", cause={"vendor": "test"}, taken=taken)
    # then salescaling ends holding its own newer name, not the older one we carried over it
    assert held(rt, "salescaling")["name"] == "Sc's name"
    assert rt.store.load(key).state.name == "Sc's name"
