"""``oppsync reconcile`` repairs drift nobody announced: the real stack and the real command.

The command runs as an operator would run it, in its own process with the service's
environment, against the running stack (Redis, worker, simulators).
"""

from __future__ import annotations

import subprocess

import pytest
import redis
from celery import Celery

from schemas.opportunity import Status
from tests.integration.conftest import wait_idle
from tests.integration.drive import (
    DEAL,
    MAPPING,
    announce,
    as_held_by,
    expected,
    held,
    others,
    person_creates,
    run_cli,
    wait_converged,
    writes,
)
from worker.sandbox.stack import Stack, wait_for
from worker.store.deadletters import DeadLetters

pytestmark = pytest.mark.integration


def oppsync(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(stack, *args)


def synced_from(stack: Stack, source: str) -> str:
    """A deal a person created in ``source``, announced and held by all five."""
    vendor_id = person_creates(stack, source)
    assert announce(stack, source, vendor_id) == 202
    wait_converged(stack, others(source), as_held_by(source, DEAL))
    wait_idle(redis.Redis.from_url(stack.redis.url))
    return vendor_id


def test_reconcile_repairs_a_dropped_webhook(live: Stack) -> None:
    # given a deal synced from leadway
    vendor_id = synced_from(live, "leadway")
    # when a person changes it in leadway and the webhook is lost (never sent)
    won = MAPPING.stage_id("leadway", "won")
    live.sims["leadway"].edit(
        vendor_id, name="Harbour View Gala", status="won", pipelineStageId=won
    )
    result = oppsync(live, "reconcile")
    # then the change was found, fed to the pipeline and reached the other four
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Changed behind oppsync's back (fed to the pipeline): 1" in result.stdout
    changed = DEAL.replace(name="Harbour View Gala", status=Status.WON, stage="won")
    wait_converged(live, others("leadway"), as_held_by("leadway", changed))
    # and a second run finds every vendor as expected and changes nothing
    wait_idle(redis.Redis.from_url(live.redis.url))
    again = oppsync(live, "reconcile")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "5 vendor records compared, 5 as expected" in again.stdout
    assert "Pushed: 0" in again.stdout


def test_reconcile_of_a_record_that_leaves_a_field_out_writes_nothing(live: Stack) -> None:
    # given a deal with its contact, synced from leadway to all five
    synced_from(live, "leadway")
    before = writes(live)
    # when SIRO's answers leave opportunityContacts out (its documented answer has none)
    live.sims["siro"].omit = {"opportunityContacts"}
    result = oppsync(live, "reconcile")
    wait_idle(redis.Redis.from_url(live.redis.url))
    # then nothing is pushed: the contact SIRO did not show is the one it holds
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Pushed: 0" in result.stdout, result.stdout
    assert writes(live) == before
    # and every vendor with contacts still holds it
    for vendor in ("siro", "leadway", "ivvy"):
        (opp,) = held(live, vendor)
        assert opp.contact == expected(vendor)["contact"], vendor


def test_reconcile_creates_what_a_failed_write_left_out(live: Stack) -> None:
    # given a deal from icloudready whose create in salescaling was refused (a dead letter)
    live.sims["salescaling"].faults.add("error", status=400, methods=("POST",), times=1)
    vendor_id = person_creates(live, "icloudready")
    assert announce(live, "icloudready", vendor_id) == 202
    client = redis.Redis.from_url(live.redis.url, decode_responses=True)
    wait_for(lambda: DeadLetters(client).list(vendor="salescaling"), 30, "no dead letter")
    assert held(live, "salescaling") == []
    # when the operator reconciles salescaling only
    result = oppsync(live, "reconcile", "--vendor", "salescaling")
    # then salescaling got the deal, created once, and only salescaling was looked at
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Pushed: 1 (1 created)" in result.stdout
    assert "in salescaling:" in result.stdout
    wait_converged(live, ["salescaling"], as_held_by("icloudready", DEAL))


def test_reconcile_feeds_a_record_deleted_behind_our_back(live: Stack) -> None:
    # given a deal synced from siro, then deleted in leadway without a webhook
    synced_from(live, "siro")
    sim = live.sims["leadway"]
    with sim.state_lock:
        sim.records.clear()
    # when the operator reconciles
    result = oppsync(live, "reconcile")
    # then the delete went through the pipeline: by the default policy the others say lost
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Gone or deleted in a vendor (fed as deletes): 1" in result.stdout
    wait_for(
        lambda: all(held(live, v)[0].status == Status.LOST for v in others("leadway")),
        30,
        "the delete did not reach the others",
    )


def test_reconcile_task_as_beat_runs_it_repairs_a_manual_edit(live: Stack) -> None:
    # given a deal synced from ivvy, then renamed there by a person with no notification
    vendor_id = synced_from(live, "ivvy")
    live.sims["ivvy"].edit(vendor_id, name="Harbour View Gala")
    # when beat's periodic reconciliation runs on the worker
    client = Celery("test-beat", broker=live.env["REDIS_URL"])
    try:
        client.send_task("oppsync.reconcile", queue="poll")
    finally:
        client.close()
    # then the other four hold the new name
    wait_converged(live, others("ivvy"), as_held_by("ivvy", DEAL.replace(name="Harbour View Gala")))
