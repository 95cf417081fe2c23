"""What oppsync keeps per opportunity in Redis: the document, the compact per-vendor hash,
records stored before the document, and the history list."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

from schemas.opportunity import Opportunity, Status, dump
from worker.sandbox.embedded_redis import EmbeddedRedis
from worker.store.deliveries import PENDING_CLAIM_SECONDS, QUEUED_MARK, Claim
from worker.store.history import HISTORY_BYTES, WRITES_KEPT
from worker.store.keys import delivery_key, doc_key, intents_key, lock_name, opp_key, writes_key
from worker.store.packing import joined
from worker.store.records import HandedOver, HeldLock, Record
from worker.store.state import Store
from worker.store.upgrade import upgrade


@pytest.fixture
def store(redis_server: EmbeddedRedis) -> Iterator[Store]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    yield Store(client)
    client.close()


DEAL = Opportunity(name="Warehouse restock", status=Status.OPEN, stage="new")
EVENT = {"vendor": "siro", "vendor_id": "S1", "delivery": "d1", "fields": ["name"]}


def saved(store: Store, key: str = "opp_1") -> Record:
    record = Record(key=key, state=DEAL, times={"name": 1700000000.5}, sources={"name": "siro"})
    store.save_state(
        record, source="siro", source_seen=datetime.now(UTC), source_holds="fp", event=EVENT
    )
    return record


def test_a_saved_record_reads_back_and_its_hash_stays_compact(store: Store) -> None:
    saved(store)
    store.record_write(
        "opp_1",
        "leadway",
        vendor_id="L1",
        fingerprint="a" * 32,
        extra={"contact": "osEbNeI8Oz21OxSbly2G", "contact_fp": "bb3e2134e78e5ac0"},
        history=None,
        new_link=True,
    )
    record = store.load("opp_1")
    assert record.exists and record.state == DEAL
    assert record.times == {"name": 1700000000.5}
    assert record.rule("name") == "last writer wins: from siro"
    assert record.last_change == EVENT and record.last_event == EVENT
    assert record.extra["leadway"] == {
        "contact": "osEbNeI8Oz21OxSbly2G",
        "contact_fp": "bb3e2134e78e5ac0",
    }
    assert record.ids == {"leadway": "L1"} and "leadway" in record.wrote_at
    # the per-vendor hash holds only short values: Redis keeps it in its compact encoding
    assert store.redis.object("encoding", opp_key("opp_1")) in ("listpack", "ziplist")


def test_a_document_and_history_stored_as_plain_json_still_read(store: Store) -> None:
    # given a record saved before documents and history entries were compressed
    plain = {"state": dump(DEAL), "times": {"name": 1700000000.5}, "sources": {"name": "siro"},
             "last_change": EVENT, "last_event": "="}  # fmt: skip
    store.redis.set(doc_key("opp_2"), json.dumps(plain))
    store.redis.hset(opp_key("opp_2"), "written:siro", "fp")
    entry = {"cause": EVENT, "writes": [{"target": "ivvy", "at": "2026-01-01T00:00:02.000"}]}
    store.redis.lpush(writes_key("opp_2"), json.dumps(entry))
    # when the new release's worker starts (the upgrade moves it into today's layout)
    upgrade(store.redis)
    # then it reads as it did, and its next save stores it compressed
    record = store.load("opp_2")
    assert record.state == DEAL and record.last_change == EVENT
    assert store.last_change("opp_2") == EVENT
    assert store.writes("opp_2")[0]["target"] == "ivvy"
    store.save_state(record, source="siro", source_seen=None, source_holds="fp", event=EVENT)
    stored, _ = joined(store.redis.hgetall(opp_key("opp_2")))  # type: ignore[arg-type]
    assert stored is not None and len(stored) < len(json.dumps(plain)) / 2
    assert store.load("opp_2").state == DEAL


def test_history_keeps_an_events_cause_once_and_lists_each_write(store: Store) -> None:
    cause = {"vendor": "siro", "vendor_id": "S1", "delivery": "d1", "fields": ["name"]}
    writes = [
        {"target": "leadway", "at": "2026-01-01T00:00:01.000", "action": "created"},
        {"target": "ivvy", "at": "2026-01-01T00:00:02.000", "action": "created"},
    ]
    store.add_history("opp_1", {"cause": cause, "writes": writes})
    assert len(store.writes("opp_1")) == 2
    listed = store.writes("opp_1")
    assert [w["target"] for w in listed] == ["ivvy", "leadway"]  # newest first
    assert all(w["delivery"] == "d1" and w["vendor"] == "siro" for w in listed)


def test_history_is_cut_back_to_its_cap(store: Store) -> None:
    cause = {"vendor": "siro", "delivery": "d"}
    for n in range(60):
        store.add_history(
            "opp_1", {"cause": cause, "writes": [{"target": "ivvy", "at": f"{n:03}"}]}
        )
    assert store.redis.strlen(writes_key("opp_1")) <= HISTORY_BYTES  # type: ignore[operator]
    assert len(store.writes("opp_1")) == WRITES_KEPT
    assert store.writes("opp_1", count=1)[0]["at"] == "059"


def test_history_is_capped_by_bytes_and_keeps_the_newest_entry(store: Store) -> None:
    # given events whose fan-outs each carry a long, incompressible id
    cause = {"vendor": "siro", "delivery": "d"}
    for n in range(12):
        note = {"target": "ivvy", "at": f"{n:03}", "target_id": secrets.token_hex(300)}
        store.add_history("opp_1", {"cause": cause, "writes": [note]})
    # then the history stays within its bytes, and the newest entry is there even when it
    # alone is larger than the cap
    kept: int = store.redis.strlen(writes_key("opp_1"))  # type: ignore[assignment]
    assert kept <= HISTORY_BYTES
    assert [w["at"] for w in store.writes("opp_1")][:2] == ["011", "010"]
    huge = {"target": "ivvy", "at": "big", "target_id": secrets.token_hex(2 * HISTORY_BYTES)}
    store.add_history("opp_1", {"cause": cause, "writes": [huge]})
    assert [w["at"] for w in store.writes("opp_1")] == ["big"]


def _save_handing_over(store: Store, record: Record, lock: HeldLock) -> HandedOver | None:
    return store.save_state(
        record,
        source="siro",
        source_seen=None,
        source_holds="fp",
        event=EVENT,
        unlock=lock,
        hand_over=("leadway", "ivvy"),
    )


def test_saving_hands_the_targets_locks_and_a_fresh_record_to_the_fan_out(store: Store) -> None:
    saved(store)
    lock, record = store.lock_and_read("opp_1", None, 60) or pytest.fail("lock busy")
    # given a push to iVvy, under its own lock, recorded a write after the ingest had read
    store.record_write(
        "opp_1", "ivvy", vendor_id="I9", fingerprint="f", extra={}, history=None, new_link=True
    )
    handed = _save_handing_over(store, record, lock)
    # then the record lock is free, both vendor locks are the fan-out's, and the record
    # it gets is what Redis holds, iVvy's new link included (no duplicate create)
    assert handed is not None and set(handed.locks) == {"leadway", "ivvy"}
    assert store.redis.get(lock_name("opp_1")) is None
    assert store.lock_and_read("opp_1", "leadway", 60) is None
    assert handed.record == store.load("opp_1") and handed.record.ids["ivvy"] == "I9"
    for held in handed.locks.values():
        store.unlock(held)
    assert store.lock_and_read("opp_1", "leadway", 60) is not None


def test_a_vendor_lock_held_by_another_push_is_not_handed_over(store: Store) -> None:
    saved(store)
    other, _ = store.lock_and_read("opp_1", "leadway", 60) or pytest.fail("lock busy")
    lock, record = store.lock_and_read("opp_1", None, 60) or pytest.fail("lock busy")
    handed = _save_handing_over(store, record, lock)
    # the busy vendor's push takes its own lock later; the other push's lock is untouched
    assert handed is not None and set(handed.locks) == {"ivvy"}
    assert store.redis.get(lock_name("opp_1", "leadway")) == other.token


def test_an_expired_record_lock_hands_nothing_over(store: Store) -> None:
    saved(store)
    lock, record = store.lock_and_read("opp_1", None, 60) or pytest.fail("lock busy")
    store.redis.delete(lock_name("opp_1"))  # expired while we worked; someone else's now
    store.redis.set(lock_name("opp_1"), "another holder")
    assert _save_handing_over(store, record, lock) is None
    assert store.redis.get(lock_name("opp_1")) == "another holder"
    assert store.redis.get(lock_name("opp_1", "leadway")) is None


def test_handing_over_works_on_a_redis_that_lost_its_scripts(store: Store) -> None:
    saved(store)
    lock, record = store.lock_and_read("opp_1", None, 60) or pytest.fail("lock busy")
    store.redis.script_flush()  # a restarted Redis
    handed = _save_handing_over(store, record, lock)
    assert handed is not None and set(handed.locks) == {"leadway", "ivvy"}
    assert store.redis.get(lock_name("opp_1")) is None


def test_a_write_frees_its_lock_and_keeps_its_history_on_a_redis_that_lost_its_scripts(
    store: Store,
) -> None:
    # given a push holding its (record, vendor) lock, and a Redis restarted since
    saved(store)
    lock, _ = store.lock_and_read("opp_1", "ivvy", 60) or pytest.fail("lock busy")
    store.redis.script_flush()
    # when its write is recorded with its history entry
    note = {"target": "ivvy", "at": "2026-01-01T00:00:02.000", "action": "created"}
    store.record_write(
        "opp_1", "ivvy", vendor_id="I1", fingerprint="b" * 32, extra={},
        history={"cause": EVENT, "writes": [note]}, new_link=True, lock=lock,
    )  # fmt: skip
    # then both scripts ran: the lock is free and the entry kept
    assert store.redis.get(lock_name("opp_1", "ivvy")) is None
    assert [w["target"] for w in store.writes("opp_1")] == ["ivvy"]
    assert store.load("opp_1").written["ivvy"] == "b" * 32


def test_the_heartbeat_sweeps_creates_intents_too_old_to_matter(store: Store) -> None:
    now = time.time()
    store.redis.zadd(intents_key("leadway"), {"opp_stale": now - 3600, "opp_fresh": now})
    store.beat()
    assert store.redis.zrange(intents_key("leadway"), 0, -1) == ["opp_fresh"]
    assert store.creates_in_flight("leadway") and store.last_heartbeat()


def test_a_delivery_claim_is_pending_until_confirmed_and_then_remembered(store: Store) -> None:
    # given a delivery id claimed for queueing
    assert store.claim_delivery("siro", "msg_1") is Claim.NEW
    # then while it is not queued a second claim is told to come back later, and the claim
    # lapses on its own within PENDING_CLAIM_SECONDS
    assert store.claim_delivery("siro", "msg_1") is Claim.PENDING
    assert 0 < int(store.redis.ttl(delivery_key("siro", "msg_1"))) <= PENDING_CLAIM_SECONDS  # type: ignore[arg-type]
    # and once confirmed it is a duplicate for as long as asked
    store.confirm_delivery("siro", "msg_1", 3600)
    assert store.claim_delivery("siro", "msg_1") is Claim.QUEUED
    assert int(store.redis.ttl(delivery_key("siro", "msg_1"))) > PENDING_CLAIM_SECONDS  # type: ignore[arg-type]
    # and another vendor's same id is its own delivery
    assert store.claim_delivery("leadway", "msg_1") is Claim.NEW


def test_a_delivery_is_queued_once_and_a_failed_queueing_frees_its_id(store: Store) -> None:
    queued: list[str] = []

    def refuse() -> None:
        raise ConnectionError("broker gone")

    # given a delivery whose first queueing failed
    with pytest.raises(ConnectionError):
        store.queue_once("ivvy", "msg_9", 3600, refuse)
    # then its id is free again: the sender's redelivery is queued, and only once
    assert store.queue_once("ivvy", "msg_9", 3600, lambda: queued.append("msg_9")) is Claim.NEW
    assert store.queue_once("ivvy", "msg_9", 3600, lambda: queued.append("again")) is Claim.QUEUED
    assert queued == ["msg_9"]
    assert store.redis.get(delivery_key("ivvy", "msg_9")) == QUEUED_MARK
