"""A vendor id that is not one of the vendor's id forms never reaches a vendor URL.

``.``, ``..``, ``%2e%2e``, a slash or a control character in an id would make oppsync ask for
the collection (or the path above it: httpx removes dot segments), read the answer as a
record and sync it into the other vendors. Through the real stack: the edge refuses such a
thin event, the worker dead-letters such a record, and a poll skips such a listed record;
no vendor is called with it and nothing is created anywhere.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from celery import Celery

from tests.integration.conftest import wait_idle
from tests.integration.drive import DEAL, MAPPING, schema
from worker.sandbox.stack import VENDORS, Stack, wait_for
from worker.store.deadletters import DeadLetters

pytestmark = pytest.mark.integration

BAD_IDS: tuple[Any, ...] = (".", "..", "%2e%2e", "a/b", "../x", "\x1b[2J", "x\x00y", "", " ")
STANDARD = ("siro", "leadway", "salescaling", "icloudready")


def vendor_calls(stack: Stack) -> dict[str, list[str]]:
    return {name: [f"{r.method} {r.path}" for r in sim.log] for name, sim in stack.sims.items()}


def records_anywhere(stack: Stack) -> dict[str, int]:
    return {name: len(sim.records) for name, sim in stack.sims.items() if sim.records}


@pytest.mark.parametrize("vendor", STANDARD)
def test_vendor_ids_thin_event_with_a_bad_id_is_refused_at_the_edge(
    live: Stack, vendor: str
) -> None:
    sim = live.sims[vendor]
    # when the vendor's automation sends thin events whose id is no id of that vendor
    answers = {repr(bad): sim.send_standard_webhook({"id": bad}) for bad in BAD_IDS}
    wait_idle(redis.Redis.from_url(live.redis.url))
    # then each is refused with a 400, no vendor is called and nothing exists anywhere
    assert answers == {repr(bad): 400 for bad in BAD_IDS}
    assert vendor_calls(live) == {name: [] for name in VENDORS}
    assert records_anywhere(live) == {}


def test_vendor_ids_record_with_a_bad_id_is_dead_lettered(live: Stack) -> None:
    client = redis.Redis.from_url(live.redis.url, decode_responses=True)
    body = schema("siro").to_body(DEAL, MAPPING, key="crm-1")
    # when SIRO's automation sends whole records whose ids are ".." and "."
    for bad in ("..", "."):
        assert live.sims["siro"].send_standard_webhook({**body, "id": bad}) == 202
    letters = wait_for(
        lambda: len(found := DeadLetters(client).list()) == 2 and found, 30, "no dead letters"
    )
    wait_idle(client)
    # then both are dead letters naming the id, and nothing reached any vendor
    assert {letter.vendor for letter in letters} == {"siro"}
    assert all("id" in letter.fields for letter in letters)
    assert vendor_calls(live) == {name: [] for name in VENDORS}
    assert records_anywhere(live) == {}


def test_vendor_ids_polled_record_with_a_bad_id_is_skipped(live: Stack) -> None:
    sim = live.sims["salescaling"]
    beat = Celery("test-beat", broker=live.env["REDIS_URL"])
    try:
        # given a baseline poll of an empty Salescaling
        beat.send_task("oppsync.poll_vendor", args=["salescaling"], queue="poll")
        wait_idle(redis.Redis.from_url(live.redis.url))
        # when Salescaling then lists a record whose id is ".."
        record = schema("salescaling").to_body(DEAL, MAPPING)
        with sim.state_lock:
            sim.records[".."] = {
                **record,
                "id": "..",
                "createdAt": "2026-01-01T00:00:00Z",
                "updatedAt": "2026-01-01T00:00:00Z",
            }
        sim.log.clear()
        beat.send_task("oppsync.poll_vendor", args=["salescaling"], queue="poll")
        wait_idle(redis.Redis.from_url(live.redis.url))
    finally:
        beat.close()
    # then oppsync only listed Salescaling: no record path was asked for, nothing written
    calls = vendor_calls(live)
    assert calls["salescaling"] and all(
        c == "GET /api/v1/opportunities" for c in calls["salescaling"]
    )
    assert all(calls[name] == [] for name in VENDORS if name != "salescaling")
    assert records_anywhere(live) == {"salescaling": 1}
