"""The pipeline's decisions — merge, echo, staleness, ownership, deletes — on a real Redis
with in-memory vendor adapters (the adapters are the only stand-ins here)."""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis

from schemas.envelope import InboundEvent
from schemas.mapping import Mapping
from schemas.opportunity import SYNCED_FIELDS, Opportunity, Status, dump, fingerprint, load
from tests.strategies import envelope
from worker.errors import CreateSettling, InvalidPayload, OutcomeUnknown
from worker.runtime import Runtime
from worker.sandbox.embedded_redis import EmbeddedRedis
from worker.settings import from_env
from worker.store.state import Store
from worker.sync import ingest, push
from worker.sync.outcomes import Outcome
from worker.vendors.base import UpsertResult

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 1, 2, tzinfo=UTC)


class MemoryAdapter:
    """A vendor holding records in a dict; ``lossy`` vendors cannot say "abandoned"."""

    def __init__(
        self,
        name: str,
        fields: frozenset[str] = frozenset(SYNCED_FIELDS),
        lossy: bool = False,
        time_resolution: float = 0.0,
    ) -> None:
        self.name = name
        self.synced_fields = fields
        self.lossy = lossy
        self.time_resolution = time_resolution
        self.upserts_by_key = False
        self.records: dict[str, dict[str, Any]] = {}
        self.creates = 0
        self._ids = itertools.count(1)

    def record_id(self, record: dict[str, Any]) -> str:
        return str(record["id"])

    def checked_id(self, raw: object) -> str:
        return str(raw)

    def key_of(self, record: dict[str, Any]) -> str | None:
        return None

    def parse_native(self, payload: dict[str, Any]) -> InboundEvent | None:
        return InboundEvent(vendor_id=payload["id"], deleted=payload.get("deleted", False))

    def to_canonical(self, record: dict[str, Any]) -> Opportunity:
        data = {k: v for k, v in record.items() if k in (*self.synced_fields, "updated_at")}
        return load(data)

    def project(self, opp: Opportunity) -> Opportunity:
        kept = {f: getattr(opp, f) for f in self.synced_fields}
        if self.lossy and kept.get("status") == Status.ABANDONED:
            kept["status"] = Status.LOST
        return Opportunity(**kept)

    def fetch(self, vendor_id: str) -> dict[str, Any] | None:
        return self.records.get(vendor_id)

    def upsert(
        self, opp: Opportunity, *, key: str, vendor_id: str | None, extra: dict[str, str]
    ) -> UpsertResult:
        created = vendor_id is None
        if vendor_id is None:
            self.creates += 1
            vendor_id = f"{self.name}-{next(self._ids)}"
        data = dump(self.project(opp))
        self.records[vendor_id] = {"id": vendor_id, **{k: data[k] for k in self.synced_fields}}
        return UpsertResult(vendor_id, created)

    def requests_for(
        self, opp: Opportunity, *, key: str, vendor_id: str | None, extra: dict[str, str]
    ) -> int:
        return 1

    def find_existing(self, opp: Opportunity, *, key: str, since: datetime) -> str | None:
        return None

    def delete(self, vendor_id: str) -> None:
        self.records.pop(vendor_id, None)

    def list_records(self) -> Iterator[dict[str, Any]]:
        return iter(list(self.records.values()))

    def probe(self) -> str:
        return f"{len(self.records)} records in memory"

    def close(self) -> None:
        pass


@pytest.fixture
def rt(redis_server: EmbeddedRedis) -> Iterator[Runtime]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushdb()
    settings = from_env({"OPPSYNC_VENDORS": "siro,leadway,salescaling"}, check=False)
    runtime = Runtime(settings=settings, redis=client, store=Store(client))
    runtime.adapters = {
        "siro": MemoryAdapter("siro", lossy=True),
        "leadway": MemoryAdapter("leadway"),
        "salescaling": MemoryAdapter("salescaling", frozenset({"name", "amount", "status"})),
    }
    yield runtime
    client.close()


def deliver(rt: Runtime, vendor: str, record: dict[str, Any]) -> Outcome:
    data = {"updated_at": None, **record}
    if isinstance(data["updated_at"], datetime):
        data["updated_at"] = data["updated_at"].isoformat()
    rt.adapters[vendor].records[record["id"]] = data  # type: ignore[attr-defined]
    return ingest.ingest(rt, envelope(vendor, data), patient=False)


def sync(rt: Runtime, outcome: Outcome) -> None:
    for vendor in outcome.targets:
        push.push(rt, outcome.key, vendor, cause={"vendor": "test"})  # type: ignore[arg-type]


def test_ingest_new_record_targets_every_other_vendor(rt: Runtime) -> None:
    # given a deal new to oppsync, when leadway reports it
    outcome = deliver(
        rt,
        "leadway",
        {"id": "L1", "name": "Deal", "amount": "10.00", "status": "open", "updated_at": T0},
    )
    # then it is applied and every other vendor is a target, the source is not
    assert outcome.outcome == "applied"
    assert set(outcome.targets) == {"siro", "salescaling"}


def test_push_twice_creates_once_and_echo_stops(rt: Runtime) -> None:
    outcome = deliver(
        rt, "leadway", {"id": "L1", "name": "Deal", "status": "open", "updated_at": T0}
    )
    sync(rt, outcome)
    sync(rt, outcome)  # a redelivered push
    siro = rt.adapters["siro"]
    assert siro.creates == 1  # type: ignore[attr-defined]
    # when siro echoes back exactly what we wrote, then nothing goes further
    ((_siro_id, record),) = siro.records.items()  # type: ignore[attr-defined]
    echo = deliver(rt, "siro", {**record, "updated_at": T0 + timedelta(seconds=5)})
    assert echo.outcome == "echo" and echo.targets == ()


def test_lossy_vendor_does_not_flip_abandoned_to_lost(rt: Runtime) -> None:
    # given an abandoned deal written to siro, which can only say LOST
    outcome = deliver(
        rt, "leadway", {"id": "L1", "name": "Deal", "status": "abandoned", "updated_at": T0}
    )
    sync(rt, outcome)
    ((_siro_id, record),) = rt.adapters["siro"].records.items()  # type: ignore[attr-defined]
    assert record["status"] == "lost"
    # when siro later reports a name change (still LOST), then status stays abandoned
    changed = deliver(
        rt, "siro", {**record, "name": "Deal 2", "updated_at": T0 + timedelta(minutes=1)}
    )
    assert changed.outcome == "applied"
    key = changed.key
    assert rt.store.load(key).state.status == Status.ABANDONED  # type: ignore[arg-type]
    assert rt.store.load(key).state.name == "Deal 2"  # type: ignore[arg-type]


def test_older_change_never_overwrites_newer(rt: Runtime) -> None:
    outcome = deliver(
        rt,
        "leadway",
        {
            "id": "L1",
            "name": "New name",
            "status": "open",
            "updated_at": T0 + timedelta(minutes=10),
        },
    )
    sync(rt, outcome)
    ((_sid, record),) = rt.adapters["salescaling"].records.items()  # type: ignore[attr-defined]
    # when salescaling reports a change made earlier than leadway's
    late = deliver(rt, "salescaling", {**record, "name": "Old name", "updated_at": T0})
    state = rt.store.load(outcome.key).state  # type: ignore[arg-type]
    # then the newer name stays, and salescaling itself is put back
    assert state.name == "New name"
    assert "salescaling" in late.targets


def test_ownership_keeps_a_field_with_its_owner(rt: Runtime) -> None:
    rt.settings = replace(rt.settings, mapping=Mapping(ownership={"amount": "salescaling"}))
    outcome = deliver(
        rt,
        "salescaling",
        {"id": "S1", "name": "Deal", "amount": "5.00", "status": "open", "updated_at": T0},
    )
    sync(rt, outcome)
    ((_lid, record),) = rt.adapters["leadway"].records.items()  # type: ignore[attr-defined]
    deliver(rt, "leadway", {**record, "amount": "99.00", "updated_at": T0 + timedelta(hours=1)})
    record_state = rt.store.load(outcome.key)  # type: ignore[arg-type]
    assert record_state.state.amount == Decimal("5.00")
    assert "owned by salescaling" in record_state.rules["amount"]


@pytest.mark.parametrize("policy", ["mark-lost", "delete", "ignore"])
def test_delete_follows_the_source_vendors_policy(rt: Runtime, policy: str) -> None:
    rt.settings.vendor["leadway"] = replace(rt.settings.vendor["leadway"], delete_policy=policy)
    outcome = deliver(
        rt, "leadway", {"id": "L1", "name": "Deal", "status": "open", "updated_at": T0}
    )
    sync(rt, outcome)
    deleted = ingest.ingest(rt, envelope("leadway", {"id": "L1", "deleted": True}, "leadway"))
    sync(rt, deleted)
    siro_records = rt.adapters["siro"].records  # type: ignore[attr-defined]
    if policy == "delete":
        assert siro_records == {}
    elif policy == "mark-lost":
        assert [r["status"] for r in siro_records.values()] == ["lost"]
    else:
        assert [r["status"] for r in siro_records.values()] == ["open"]
    # and a late update from the deleted record goes nowhere
    late = deliver(
        rt,
        "leadway",
        {"id": "L1", "name": "Zombie", "status": "open", "updated_at": T0 + timedelta(days=1)},
    )
    assert late.outcome == "late"


def test_ingest_refuses_a_fetch_answered_with_another_record(rt: Runtime) -> None:
    # given Leadway answering a fetch of "L1" with a record whose id is another's (a path
    # that named the collection, say)
    leadway = rt.adapters["leadway"]
    leadway.records["L1"] = {"id": "L2", "name": "Other", "status": "open"}  # type: ignore[attr-defined]
    # when a thin event names "L1" / then it is invalid, and nothing is linked or written
    with pytest.raises(InvalidPayload) as refused:
        ingest.ingest(rt, envelope("leadway", {"id": "L1"}), patient=False)
    assert refused.value.reason == "bad_answer"
    assert rt.store.key_for("leadway", "L1") is None
    assert rt.store.key_for("leadway", "L2") is None


def test_push_after_an_unanswered_create_waits_for_it_to_settle(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a create in leadway that timed out after it was sent (the vendor may commit it)
    outcome = deliver(
        rt, "leadway", {"id": "L1", "name": "Deal", "status": "open", "updated_at": T0}
    )
    salescaling: Any = rt.adapters["salescaling"]
    real_upsert = salescaling.upsert

    def times_out(*args: Any, **kwargs: Any) -> UpsertResult:
        real_upsert(*args, **kwargs)  # committed, but the answer never came
        raise OutcomeUnknown("no answer", vendor="salescaling", reason="no_answer")

    monkeypatch.setattr(salescaling, "upsert", times_out)
    with pytest.raises(OutcomeUnknown) as lost:
        push.push(rt, str(outcome.key), "salescaling", cause={"vendor": "test"})
    # then its retry is asked for no sooner than the settle time after it was sent
    settle = rt.settings.create_settle_seconds
    assert lost.value.retry_after is not None and lost.value.retry_after > settle - 1
    # and a push before then neither creates again nor looks, but waits for that moment
    monkeypatch.setattr(salescaling, "upsert", real_upsert)
    with pytest.raises(CreateSettling) as waiting:
        push.push(rt, str(outcome.key), "salescaling", cause={"vendor": "test"})
    # (times are kept to the millisecond, rounded up: never earlier than the real one)
    assert settle - 1 < (waiting.value.retry_after or 0) <= settle + 0.001
    assert salescaling.creates == 1


def test_unanswered_create_is_found_by_the_name_it_carried_after_a_rename(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a create in salescaling that committed but lost its answer, settled at once here
    rt.settings = dataclasses.replace(rt.settings, create_settle_seconds=0)
    outcome = deliver(
        rt, "leadway", {"id": "L1", "name": "Deal", "status": "open", "updated_at": T0}
    )
    salescaling: Any = rt.adapters["salescaling"]
    real_upsert = salescaling.upsert

    def times_out(*args: Any, **kwargs: Any) -> UpsertResult:
        real_upsert(*args, **kwargs)
        raise OutcomeUnknown("no answer", vendor="salescaling", reason="no_answer")

    def by_name(opp: Opportunity, *, key: str, since: datetime) -> str | None:
        # Salescaling has no place for our key: a look-up matches the exact name
        return next((i for i, r in salescaling.records.items() if r["name"] == opp.name), None)

    monkeypatch.setattr(salescaling, "upsert", times_out)
    monkeypatch.setattr(salescaling, "find_existing", by_name)
    with pytest.raises(OutcomeUnknown):
        push.push(rt, str(outcome.key), "salescaling", cause={"vendor": "test"})
    monkeypatch.setattr(salescaling, "upsert", real_upsert)
    # when the deal is renamed before the retry looks for that create
    deliver(rt, "leadway", {"id": "L1", "name": "Renamed", "status": "open", "updated_at": T1})
    push.push(rt, str(outcome.key), "salescaling", cause={"vendor": "test"})
    # then the record it made is found by the name it carried and updated, not made again
    assert salescaling.creates == 1
    assert [r["name"] for r in salescaling.records.values()] == ["Renamed"]


def test_create_in_a_vendor_that_upserts_by_key_is_repeated_without_a_look_up(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given siro, which upserts by our key (a repeated create updates the same record)
    siro: Any = rt.adapters["siro"]
    siro.upserts_by_key = True
    by_key: dict[str, str] = {}
    looked: list[str] = []

    def upsert_by_key(opp: Opportunity, *, key: str, **_: Any) -> UpsertResult:
        created = key not in by_key
        vendor_id = by_key.setdefault(key, f"siro-{len(by_key) + 1}")
        siro.records[vendor_id] = {"id": vendor_id, "name": opp.name}
        return UpsertResult(vendor_id, created)

    def find_existing(*args: Any, **kwargs: Any) -> str | None:
        looked.append("look")
        return None

    monkeypatch.setattr(siro, "upsert", upsert_by_key)
    monkeypatch.setattr(siro, "find_existing", find_existing)
    outcome = deliver(
        rt, "leadway", {"id": "L1", "name": "Deal", "status": "open", "updated_at": T0}
    )
    key = str(outcome.key)
    # and a worker that died after sending its create there (the intent stays behind)
    wanted = fingerprint(siro.project(rt.store.load(key).state), siro.synced_fields)
    rt.store.before_write(key, "siro", wanted, create=True, name="Deal")
    upsert_by_key(rt.store.load(key).state, key=key)
    # when the redelivered job writes siro again
    push.push(rt, key, "siro", cause={"vendor": "test"})
    # then the write is simply repeated: no look-up (a list call the vendor counts), one record
    assert looked == []
    assert list(siro.records) == ["siro-1"]
    assert rt.store.key_for("siro", "siro-1") == key


def test_second_record_of_a_deal_is_deleted_and_the_linked_one_kept(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a create in salescaling that went unanswered, committed later than we waited
    # (settle time 0 here), after a second create made the record we linked
    rt.settings = dataclasses.replace(rt.settings, create_settle_seconds=0)
    outcome = deliver(
        rt, "leadway", {"id": "L1", "name": "Deal", "status": "open", "updated_at": T0}
    )
    key = str(outcome.key)
    salescaling: Any = rt.adapters["salescaling"]
    real_upsert = salescaling.upsert

    def times_out(*args: Any, **kwargs: Any) -> UpsertResult:
        real_upsert(*args, **kwargs)
        raise OutcomeUnknown("no answer", vendor="salescaling", reason="no_answer")

    monkeypatch.setattr(salescaling, "upsert", times_out)
    with pytest.raises(OutcomeUnknown):
        push.push(rt, key, "salescaling", cause={"vendor": "test"})
    ((late_id, late),) = salescaling.records.items()
    del salescaling.records[late_id]  # not visible yet when we looked again
    monkeypatch.setattr(salescaling, "upsert", real_upsert)
    time.sleep(0.002)  # the intent's time is kept to the millisecond, rounded up
    push.push(rt, key, "salescaling", cause={"vendor": "test"})
    ((kept, _),) = salescaling.records.items()
    # when the late record shows up (an event, a poll)
    second = deliver(rt, "salescaling", late)
    # then it is deleted, the linked record kept, and the deal's history says so
    assert second.outcome == "duplicate"
    assert list(salescaling.records) == [kept]
    assert rt.store.key_for("salescaling", kept) == key
    assert rt.store.writes(key)[0]["action"] == f"duplicate deleted, kept {kept}"
    # and a later event about it goes no further
    assert deliver(rt, "salescaling", late).outcome == "duplicate"


def test_a_persons_deal_holding_the_same_values_is_no_duplicate(rt: Runtime) -> None:
    # given a deal synced to salescaling, every create answered
    outcome = deliver(
        rt, "leadway", {"id": "L1", "name": "Deal", "status": "open", "updated_at": T0}
    )
    sync(rt, outcome)
    salescaling: Any = rt.adapters["salescaling"]
    ((kept, record),) = salescaling.records.items()
    # when a person enters another deal there with the very same values
    theirs = deliver(rt, "salescaling", {**record, "id": "theirs-1"})
    # then it is not deleted as a duplicate
    assert theirs.outcome != "duplicate"
    assert set(salescaling.records) == {kept, "theirs-1"}
