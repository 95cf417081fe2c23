"""Polling finds what vendors without webhooks never announce: the real stack, end to end.

The stack runs with every ``<VENDOR>_POLL_SECONDS=0`` (no beat), so each test asks the
running worker for a poll itself, as beat would (``oppsync.poll_vendor`` on the ``poll``
queue), and waits until the worker has done it and everything it queued. A vendor's first
poll is its baseline: what it lists then is left to ``oppsync backfill``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from schemas.opportunity import Status
from tests.integration.conftest import wait_idle
from tests.integration.drive import (
    DEAL,
    MAPPING,
    as_held_by,
    events,
    held,
    others,
    person_creates,
    wait_converged,
    writes,
)
from worker.sandbox.stack import Stack, wait_for

pytestmark = pytest.mark.integration

POLLED = ("siro", "salescaling", "icloudready")


@pytest.fixture(scope="module")
def beat(stack: Stack) -> Iterator[Celery]:
    """A Celery client on the stack's broker: it sends what beat would send."""
    client = Celery("test-beat", broker=stack.env["REDIS_URL"])
    yield client
    client.close()


def poll(stack: Stack, beat: Celery, vendor: str, *, full: bool = False) -> None:
    """One poll of ``vendor`` by the stack's worker, and every event it queued, done."""
    beat.send_task("oppsync.poll_vendor", args=[vendor], kwargs={"full": full}, queue="poll")
    wait_idle(redis.Redis.from_url(stack.redis.url))


def edit(stack: Stack, vendor: str, vendor_id: str) -> None:
    """A person renames the deal and marks it won in the vendor's UI; nobody is told."""
    sim = stack.sims[vendor]
    if vendor == "siro":
        sim.edit(vendor_id, name="Harbour View Gala", disposition="WON")
    elif vendor == "salescaling":
        sim.edit(vendor_id, name="Harbour View Gala", status="won")
    else:
        won = MAPPING.stage_id("icloudready", "won")
        sim.edit(vendor_id, name="Harbour View Gala", status="won", stage=won)


@pytest.mark.parametrize("vendor", POLLED)
def test_poll_finds_a_new_record_and_a_later_change(live: Stack, beat: Celery, vendor: str) -> None:
    # given a vendor without webhooks that oppsync has polled before (its baseline), and a
    # deal a person created there since, never announced
    poll(live, beat, vendor)
    vendor_id = person_creates(live, vendor)
    # when beat polls that vendor
    poll(live, beat, vendor)
    # then the other four hold it
    wait_converged(live, others(vendor), as_held_by(vendor, DEAL))
    counts = {v: len(held(live, v)) for v in others(vendor)}
    # when a person then changes it there, and beat polls again
    edit(live, vendor, vendor_id)
    poll(live, beat, vendor)
    # then the change reached the same four records, and nothing was created
    changed = DEAL.replace(name="Harbour View Gala", status=Status.WON, stage="won")
    wait_converged(live, others(vendor), as_held_by(vendor, changed))
    assert {v: len(held(live, v)) for v in others(vendor)} == counts


def test_poll_of_records_oppsync_already_holds_feeds_nothing(live: Stack, beat: Celery) -> None:
    # given a deal found by polling and synced everywhere
    poll(live, beat, "salescaling")
    person_creates(live, "salescaling")
    poll(live, beat, "salescaling")
    wait_converged(live, others("salescaling"), as_held_by("salescaling", DEAL))
    before_events, before_writes = len(events(live)), writes(live)
    # when beat polls again, with nothing changed anywhere
    poll(live, beat, "salescaling")
    # then no event was fed to the pipeline and no vendor was written
    assert len(events(live)) == before_events
    assert writes(live) == before_writes


def test_poll_of_records_that_leave_a_field_out_feeds_nothing(live: Stack, beat: Celery) -> None:
    # given a deal found by polling SIRO and synced everywhere, its contact included
    poll(live, beat, "siro")
    person_creates(live, "siro")
    poll(live, beat, "siro")
    wait_converged(live, others("siro"), as_held_by("siro", DEAL))
    before_events, before_writes = len(events(live)), writes(live)
    # when SIRO's answers leave opportunityContacts out (its documented answer has none),
    # and beat polls again with nothing changed anywhere
    live.sims["siro"].omit = {"opportunityContacts"}
    poll(live, beat, "siro", full=True)
    # then no event was fed to the pipeline and no vendor was written
    assert len(events(live)) == before_events
    assert writes(live) == before_writes


def test_poll_reads_a_record_gone_from_the_vendor_as_a_delete(live: Stack, beat: Celery) -> None:
    # given a deal found by polling salescaling and synced everywhere
    poll(live, beat, "salescaling")
    vendor_id = person_creates(live, "salescaling")
    poll(live, beat, "salescaling")
    wait_converged(live, others("salescaling"), as_held_by("salescaling", DEAL))
    # when a person deletes it in salescaling, and beat polls again
    with live.sims["salescaling"].state_lock:
        del live.sims["salescaling"].records[vendor_id]
    poll(live, beat, "salescaling")
    # then the delete went through the pipeline, and by the default policy (mark-lost) the
    # other four now say lost
    wait_for(
        lambda: all(held(live, v)[0].status == Status.LOST for v in others("salescaling")),
        30,
        "the delete did not reach the others",
    )
    assert any(
        e["outcome"] == "deleted" and e["delivery"].startswith("poll:") for e in events(live)
    )


def test_poll_that_fails_part_way_infers_no_delete(live: Stack, beat: Celery) -> None:
    # given a deal found by polling siro and synced everywhere, then deleted in siro
    poll(live, beat, "siro")
    vendor_id = person_creates(live, "siro")
    poll(live, beat, "siro")
    wait_converged(live, others("siro"), as_held_by("siro", DEAL))
    with live.sims["siro"].state_lock:
        del live.sims["siro"].records[vendor_id]
    before = len(events(live))
    # when the next listing fails (a 503 on its page), so the scan is incomplete
    live.sims["siro"].faults.add("error", status=503, methods=("GET",), times=1)
    poll(live, beat, "siro")
    # then nothing was taken for a delete yet: no event, and every vendor still holds the deal
    assert live.sims["siro"].faults.fired, "the fault never fired"
    assert len(events(live)) == before
    wait_converged(live, others("siro"), as_held_by("siro", DEAL))
    # and the next complete scan sees the delete
    poll(live, beat, "siro")
    wait_for(
        lambda: all(held(live, v)[0].status == Status.LOST for v in others("siro")),
        30,
        "the delete did not reach the others",
    )


def test_poll_leaves_deals_that_predate_oppsync_to_backfill(live: Stack, beat: Celery) -> None:
    # given a deal that was in salescaling before oppsync first polled it
    person_creates(live, "salescaling")
    before = writes(live)
    # when beat polls it for the first time
    poll(live, beat, "salescaling")
    # then nothing was created elsewhere: the deal may already be there (backfill matches)
    assert writes(live) == before
    assert all(held(live, v) == [] for v in others("salescaling"))
