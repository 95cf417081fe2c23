"""Soak: random edits and deletes hitting random vendors at once, every vendor echoing what it
can, for ``OPPSYNC_SOAK_SECONDS`` (default 60). Afterwards every vendor that still holds a
deal holds the same values, and no vendor holds any deal twice.

Not in the default run: ``pytest -m soak tests/integration/test_soak.py``; also
``OPPSYNC_SOAK_PEOPLE`` (default 4) and ``OPPSYNC_SOAK_SEED``.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from tests.integration.drive import DEAL, announce, person_creates, person_edits, schema, synced
from tests.integration.test_deletes import ivvy_deletes, leadway_deletes
from tests.integration.test_echoes import quiet
from tests.strategies import EXAMPLE_MAPPING as MAPPING
from worker.sandbox.stack import VENDORS, Stack, wait_for
from worker.store.deadletters import DeadLetters
from worker.store.state import Store

pytestmark = [pytest.mark.integration, pytest.mark.soak, pytest.mark.variants]


@pytest.fixture
def storm(live: Stack) -> Iterator[Stack]:
    """Every vendor that can echo does (as in test_echoes): webhooks for all changes."""
    echoing = (live.sims["leadway"], live.sims["ivvy"])
    for sim in echoing:
        sim.auto_emit = True
    live.sims["salescaling"].automation = True
    try:
        yield live
    finally:
        for sim in echoing:
            sim.auto_emit = False
        live.sims["salescaling"].automation = False


DEALS = 4
#: Vendors that announce a person's edit themselves once the storm is on.
SELF_ANNOUNCING = ("leadway", "ivvy", "salescaling")


def soak_seconds() -> float:
    return float(os.environ.get("OPPSYNC_SOAK_SECONDS", "60"))


def people() -> int:
    """How many people edit at once (``OPPSYNC_SOAK_PEOPLE``, default 4)."""
    return int(os.environ.get("OPPSYNC_SOAK_PEOPLE", "4"))


class Deal:
    """One deal as the soak knows it: its key and its id in each vendor still holding it."""

    def __init__(self, key: str, ids: dict[str, str]) -> None:
        self.key = key
        self.ids = ids
        self.lock = threading.Lock()


def created(stack: Stack, source: str, number: int) -> Deal:
    opp = DEAL.replace(name=f"Soak deal {number}")
    vendor_id = person_creates(stack, source, opp)
    if source not in ("leadway",):  # a seeded Leadway deal announces itself in the storm
        assert announce(stack, source, vendor_id) == 202
    client = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    store = Store(client)
    key = wait_for(lambda: store.key_for(source, vendor_id), 30, "no key")
    wait_for(lambda: len(store.load(str(key)).ids) == len(VENDORS), 30, "not linked")
    return Deal(str(key), store.load(str(key)).ids)


def delete_in(stack: Stack, vendor: str, vendor_id: str) -> None:
    """A person deletes the deal in ``vendor``, and the vendor says so its own way."""
    sim = stack.sims[vendor]
    if vendor == "leadway":
        leadway_deletes(stack, vendor_id)
    elif vendor == "ivvy":
        ivvy_deletes(stack, vendor_id)
    elif vendor == "siro":
        sim.edit(vendor_id, deletedAt=datetime.now(UTC).isoformat())
        sim.emit_standard(vendor_id)
    elif vendor == "salescaling":
        with sim.state_lock:
            sim.records.pop(vendor_id)
        sim.emit_standard(vendor_id, thin=True)
    else:
        with sim.state_lock:
            sim.deleted[vendor_id] = sim.records.pop(vendor_id)
        sim.emit_standard(vendor_id)


def one_action(
    stack: Stack, deals: list[Deal], rng: random.Random, counter: Callable[[], int]
) -> str:
    deal = rng.choice(deals)
    with deal.lock:  # one person per deal at a time; vendors and oppsync still race
        holding = sorted(deal.ids)
        vendor = rng.choice(holding)
        vendor_id = deal.ids[vendor]
        if len(holding) > 3 and rng.random() < 0.03:
            del deal.ids[vendor]
            delete_in(stack, vendor, vendor_id)
            return f"delete {vendor}"
        n = counter()
        # Amounts from a small set: a person often puts back a value we once wrote.
        person_edits(stack, vendor, vendor_id, name=f"Soak {n}", amount=rng.choice([100, 200, 300]))
    if vendor not in SELF_ANNOUNCING:
        announce(stack, vendor, vendor_id, created=False)
    return f"edit {vendor}"


def held_by_key(stack: Stack, vendor: str, deal: Deal) -> list[dict[str, Any]]:
    """The vendor's live records for the deal (soft-deleted SIRO records excluded)."""
    sim = stack.sims[vendor]
    with sim.state_lock:
        records = [json.loads(json.dumps(r)) for r in sim.records.values()]
    return [r for r in records if str(r.get("id", r.get("_id"))) == deal.ids.get(vendor)
            and not r.get("deletedAt")]  # fmt: skip


def live_records(stack: Stack, vendor: str) -> int:
    sim = stack.sims[vendor]
    with sim.state_lock:
        return sum(1 for r in sim.records.values() if not r.get("deletedAt"))


@pytest.mark.timeout(1800)
def test_soak_random_edits_and_deletes_converge_without_duplicates(storm: Stack) -> None:
    rng = random.Random(int(os.environ.get("OPPSYNC_SOAK_SEED", "4711")))
    deals = [created(storm, VENDORS[i % len(VENDORS)], i) for i in range(DEALS)]
    numbers = iter(range(1_000_000))
    number_lock = threading.Lock()

    def counter() -> int:
        with number_lock:
            return next(numbers)

    done: list[str] = []
    failures: list[BaseException] = []
    stop_at = time.monotonic() + soak_seconds()

    def person(seed: int) -> None:
        own = random.Random(seed)
        try:
            while time.monotonic() < stop_at:
                done.append(one_action(storm, deals, own, counter))
                # A person's pace: a few actions a second in all, quick bursts included,
                # within what HighLevel's quota (100 requests / 10 s) lets oppsync keep up with.
                time.sleep(own.choice([0.05, 0.3, 0.6, 1.0, 1.5]))
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)

    crowd = [threading.Thread(target=person, args=(rng.random(),)) for _ in range(people())]
    for thread in crowd:
        thread.start()
    for thread in crowd:
        thread.join()
    assert not failures, failures
    quiet(storm, timeout=300)

    client = redis.Redis.from_url(storm.redis.url, decode_responses=True)
    assert DeadLetters(client).list() == []
    # zero duplicates: each vendor holds exactly the deals not deleted there, once each
    for vendor in VENDORS:
        wanted = sum(1 for d in deals if vendor in d.ids)
        assert live_records(storm, vendor) == wanted, vendor
    # final equality: every vendor still holding a deal holds oppsync's merged state of it
    differences = {}
    for deal in deals:
        state = Store(client).load(deal.key).state
        for vendor in deal.ids:
            (record,) = held_by_key(storm, vendor, deal)
            holds = synced(schema(vendor).to_canonical(record, MAPPING), vendor)
            should = synced(schema(vendor).project(state, MAPPING), vendor)
            if holds != should:
                differences[(deal.key, vendor)] = (holds, should)
        names = {synced(schema(v).to_canonical(r, MAPPING), v)["name"]
                 for v in deal.ids for r in held_by_key(storm, v, deal)}  # fmt: skip
        assert len(names) == 1, (deal.key, names)
    assert not differences, differences
    assert len(done) > 10 * people(), "the soak did too little to mean anything"
