"""Nothing lost, nothing duplicated, under vendor faults injected into the real stack.

For each vendor as the target of a sync, its simulator fails the first writes in one way —
bursts of 5xx, 429 with Retry-After, a create held past our timeout and committed afterwards,
a response lost after it committed — and afterwards every vendor must hold exactly one record
with the deal's values. An update held past our timeout and committed after a newer change
must not leave its older values anywhere. Records are counted only once every simulator has
answered every request it held and the stack is idle (``wait_quiet``): a held create counted
too early is the duplicate a test would miss.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from functools import partial

import pytest

from schemas.opportunity import Status
from tests.integration.drive import (
    DEAL,
    announce,
    as_held_by,
    everywhere,
    expected,
    held,
    held_by_id,
    names,
    only_id,
    oppsync_show,
    others,
    person_creates,
    person_edits,
    run_cli,
    synced,
    synced_from,
    wait_converged,
    wait_quiet,
)
from worker.sandbox.stack import VENDORS, Stack, wait_for
from worker.vendors.http import call_seconds

pytestmark = pytest.mark.integration


def source_for(target: str) -> str:
    return "salescaling" if target == "siro" else "siro"


def aim(stack: Stack, target: str, kind: str, **options: object) -> None:
    path, methods = stack.sims[target].writes
    stack.sims[target].faults.add(kind, path_contains=path, methods=methods, **options)


def sync_through_fault(stack: Stack, target: str) -> str:
    """Syncs a new deal from the target's source through the fault; returns its key."""
    source = source_for(target)
    vendor_id = person_creates(stack, source)
    assert announce(stack, source, vendor_id) == 202
    wait_converged(stack, others(source), as_held_by(source, DEAL))
    assert stack.sims[target].faults.fired, "the fault never fired"
    # counted again once nothing is held and nothing runs: exactly one record each
    wait_quiet(stack)
    wait_converged(stack, others(source), as_held_by(source, DEAL))
    return f"{source}:{vendor_id}"


@pytest.mark.parametrize("target", VENDORS)
def test_fault_burst_of_5xx_is_retried_to_one_record(live: Stack, target: str) -> None:
    # given the target answers its next three writes with 503
    aim(live, target, "error", status=503, times=3)
    # when a deal is synced, then it lands once with the right values
    sync_through_fault(live, target)


@pytest.mark.parametrize("target", VENDORS)
def test_fault_429_is_retried_after_the_vendors_retry_after(live: Stack, target: str) -> None:
    # given the target is rate limited once and asks for 2 s
    aim(live, target, "error", status=429, retry_after=2, times=1)
    sync_through_fault(live, target)
    # then the next write came no sooner than it asked
    path, methods = live.sims[target].writes
    attempts = [
        r for r in live.sims[target].log if path in r.path + "?" + r.query and r.method in methods
    ]
    refused = next(i for i, r in enumerate(attempts) if r.status == 429)
    assert attempts[refused + 1].at - attempts[refused].at >= 2.0


#: The stack's HTTP timeout and create settle time (worker/sandbox/stack.py).
HTTP_TIMEOUT, SETTLE = 3.0, 6.0


@pytest.mark.parametrize("target", VENDORS)
def test_fault_create_committed_after_our_timeout_is_not_made_twice(
    live: Stack, target: str
) -> None:
    # given the target holds the create past our timeout, then commits it (inside settle)
    aim(live, target, "late_commit", delay=HTTP_TIMEOUT + 1.5, times=1)
    # then the retry waits for it and finds it instead of creating another
    key = sync_through_fault(live, target)
    # and the deal's history calls the write that completed it there the deal's create
    writes = oppsync_show(live, key).split("writes (newest first):", 1)[1]
    (line,) = [ln for ln in writes.splitlines() if ln.split()[1:2] == [target]]
    assert f" {target} " in line and " created " in line, writes


@pytest.mark.parametrize("target", ["leadway", "ivvy", "salescaling", "icloudready"])
def test_fault_a_person_putting_back_what_a_late_create_wrote_is_a_change(
    live: Stack, target: str
) -> None:
    # given the target's create was held past our timeout, committed, and found by look-up
    aim(live, target, "late_commit", delay=HTTP_TIMEOUT + 1.5, times=1)
    sync_through_fault(live, target)
    original = names(live)[target][0]
    vendor_id = only_id(live, target)
    # when a person there renames the deal, it goes everywhere
    person_edits(live, target, vendor_id, name="Renamed after a late create")
    assert announce(live, target, vendor_id, created=False) == 202
    wait_for(lambda: everywhere(names(live), "Renamed after a late create"), 30, "no rename")
    wait_quiet(live)
    threading.Event().wait(2.1)  # beyond the clock skew oppsync allows between vendors
    # and when the person puts the first name back (what that create wrote there)
    person_edits(live, target, vendor_id, name=str(original))
    assert announce(live, target, vendor_id, created=False) == 202
    # then it is the person's change, not our late commit: it goes everywhere and stays
    wait_for(lambda: everywhere(names(live), original), 30, "the name put back did not go")
    wait_quiet(live)
    assert everywhere(names(live), original), names(live)


@pytest.mark.parametrize("target", ["leadway", "ivvy", "salescaling", "icloudready"])
def test_fault_create_committed_after_settle_is_reduced_to_the_linked_record(
    live: Stack, target: str
) -> None:
    # given the target holds the create longer than any bound we wait (settle time)
    aim(live, target, "late_commit", delay=SETTLE + 4.0, times=1)
    source = source_for(target)
    vendor_id = person_creates(live, source)
    assert announce(live, source, vendor_id) == 202
    wait_quiet(live)
    assert len(held(live, target)) == 2, "the late create did not make a second record"
    # when reconciliation runs
    answer = run_cli(live, "reconcile", timeout=120)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    wait_quiet(live)
    # then the target keeps one record of the deal: the linked one
    records = held_by_id(live, target)
    show = oppsync_show(live, f"{source}:{vendor_id}")
    linked = next(line for line in show.splitlines() if line.strip().startswith(target))
    live_ones = {i: o for i, o in records.items() if not str(o.name).startswith("DUPLICATE")}
    assert list(live_ones) == [i for i in live_ones if i in linked], show
    assert len(live_ones) == 1, records
    if target == "ivvy":  # no delete action: the other is marked lost and named a duplicate
        (marked,) = [o for i, o in records.items() if i not in live_ones]
        assert marked.status == Status.LOST
    else:
        assert len(records) == 1, records
    (kept,) = live_ones.values()
    assert synced(kept, target) == expected(target, as_held_by(source, DEAL))
    wait_converged(live, [v for v in others(source) if v != target], as_held_by(source, DEAL))
    # and the deal's history says what was done with the other record
    assert f"duplicate {'marked lost' if target == 'ivvy' else 'deleted'}" in show, show
    assert "Second records of a deal (deleted or marked): 1" in answer.stdout


def rename_twice_past_a_late_update(stack: Stack, target: str, delay: float) -> str:
    """A deal synced from its source, renamed there twice: the target holds the write of
    the first rename ``delay`` seconds, past our timeout, then commits it; the second
    rename is made and announced while that write is held. Returns the source."""
    source = source_for(target)
    synced_from(stack, source)
    source_id = only_id(stack, source)
    aim(stack, target, "late_commit", delay=delay, times=1)
    person_edits(stack, source, source_id, name="First rename")
    assert announce(stack, source, source_id, created=False) == 202
    wait_for(lambda: stack.sims[target].held > 0, 10, "the target never held the write")
    person_edits(stack, source, source_id, name="Second rename")
    assert announce(stack, source, source_id, created=False) == 202
    return source


@pytest.mark.parametrize("target", VENDORS)
def test_fault_update_committed_after_our_timeout_does_not_undo_a_newer_change(
    live: Stack, target: str
) -> None:
    # given the target holds the first rename's write past our timeout, then commits it
    # (inside settle), while a second rename is made
    rename_twice_past_a_late_update(live, target, HTTP_TIMEOUT + 1.5)
    # then, once every held request is answered and the stack is quiet, every vendor holds
    # the newer name: the late write did not land after it
    wait_quiet(live)
    assert live.sims[target].faults.fired, "the fault never fired"
    assert names(live) == {v: ["Second rename"] for v in VENDORS}


@pytest.mark.parametrize("target", VENDORS)
def test_fault_update_committed_after_settle_is_written_over_again(
    live: Stack, target: str
) -> None:
    # given the target commits the first rename's write later than any bound we wait,
    # after our write of the second rename
    rename_twice_past_a_late_update(live, target, SETTLE + 4.0)
    wait_quiet(live)
    assert names(live)[target] == ["First rename"], "the late write did not land last"
    # when the target tells us about its record (the late write's echo)
    assert announce(live, target, only_id(live, target), created=False) == 202
    # then it is known as our own late write, not a person's change: every vendor ends
    # with the newer name, the target written over again
    wait_quiet(live)
    assert names(live) == {v: ["Second rename"] for v in VENDORS}


def test_fault_a_write_committed_late_does_not_bring_back_a_deal_deleted_meanwhile(
    live: Stack,
) -> None:
    # given a deal synced from Leadway, and SIRO holding our next write past our timeout
    # before it commits it (SIRO's upsert revives a record deleted there)
    synced_from(live, "leadway")
    lid, siro_id = only_id(live, "leadway"), only_id(live, "siro")
    aim(live, "siro", "late_commit", delay=HTTP_TIMEOUT + 1.5, times=1)
    person_edits(live, "leadway", lid, name="Renamed before the delete")
    assert announce(live, "leadway", lid, created=False) == 202
    wait_for(lambda: live.sims["siro"].held > 0, 10, "SIRO never held the write")
    # when, once that write went unanswered and while SIRO still holds it, a person deletes
    # the deal in SIRO and SIRO's automation says so
    threading.Event().wait(HTTP_TIMEOUT + 0.3)
    live.sims["siro"].edit(siro_id, deletedAt=datetime.now(UTC).isoformat())
    assert live.sims["siro"].emit_standard(siro_id) == 202
    # then, the late write committed and everything settled, SIRO holds the deal no more
    wait_quiet(live)
    wait_for(
        lambda: live_in(live, "siro") == [],
        2 * SETTLE,
        "the write that committed after the delete left the deal back in SIRO",
    )
    wait_quiet(live)
    assert live_in(live, "siro") == []
    assert live.sims["siro"].faults.fired, "the fault never fired"


def live_in(stack: Stack, vendor: str) -> list[str]:
    """Ids of the vendor's records not deleted (SIRO keeps soft-deleted ones)."""
    return [i for i, opp in held_by_id(stack, vendor).items() if not opp.deleted]


@pytest.mark.parametrize("target", VENDORS)
def test_fault_lost_response_creates_no_duplicate(live: Stack, target: str) -> None:
    # given the target commits the create and the connection drops before the answer
    aim(live, target, "lost_response", times=1)
    sync_through_fault(live, target)


@pytest.mark.parametrize("target", VENDORS)
def test_fault_reset_before_commit_is_retried(live: Stack, target: str) -> None:
    # given the connection drops before the target handled the write
    aim(live, target, "reset", times=2)
    sync_through_fault(live, target)


def deals_arrive(stack: Stack, names: list[str]) -> None:
    """Each deal created in SIRO and announced to oppsync."""
    for name in names:
        vendor_id = person_creates(stack, "siro", DEAL.replace(name=name))
        assert announce(stack, "siro", vendor_id) == 202


def wait_others_hold(stack: Stack, names: list[str], why: str) -> None:
    """Until every vendor but the source and iCloudReady holds exactly these deals."""
    for vendor in ("leadway", "ivvy", "salescaling"):
        wait_for(
            partial(lambda v: sorted(str(o.name) for o in held(stack, v)) == names, vendor),
            60,
            f"{vendor} waited for {why}",
        )


def test_fault_vendor_down_delays_no_other_vendor(live: Stack) -> None:
    # given iCloudReady refuses every write for now
    aim(live, "icloudready", "error", status=503, times=10_000)
    names = [f"Outage Deal {n}" for n in range(8)]
    deals_arrive(live, names)
    # then the other vendors get every deal while it is down
    wait_others_hold(live, names, "the vendor that is down")
    assert held(live, "icloudready") == []
    # and when it comes back, it gets each deal exactly once
    live.sims["icloudready"].faults.clear()
    wait_for(
        lambda: sorted(str(o.name) for o in held(live, "icloudready")) == names,
        90,
        "iCloudReady did not catch up",
    )


def write_times(stack: Stack, vendor: str) -> list[float]:
    """When each write the vendor handled was logged, in order."""
    path, methods = stack.sims[vendor].writes
    log = stack.sims[vendor].log
    return sorted(r.at for r in log if path in f"{r.path}?{r.query}" and r.method in methods)


def test_fault_vendor_trickling_its_answers_delays_no_other_vendor(live: Stack) -> None:
    # given iCloudReady commits every write, then sends its answer a byte every 0.5 s: no
    # read ever times out, each call lasts until its deadline (connect + timeout: 6 s here)
    aim(live, "icloudready", "trickle", delay=0.5, times=10_000)
    deadline = call_seconds(float(live.env["OPPSYNC_HTTP_TIMEOUT_SECONDS"]))
    # when twice as many deals arrive as the worker has threads (16)
    names = sorted(f"Trickle Deal {n:02}" for n in range(32))
    deals_arrive(live, names)
    # then the other vendors get every deal meanwhile
    wait_others_hold(live, names, "the vendor that trickles")
    # before the first call to iCloudReady had ended: no event's task waited for it (the
    # writes still under way were handed over), so no deal waited for a task to be free
    first_trickle = write_times(live, "icloudready")[0]
    for vendor in ("ivvy", "salescaling"):
        last = write_times(live, vendor)[-1]
        assert last - first_trickle < deadline, f"{vendor} waited {last - first_trickle:.1f} s"
    # and once iCloudReady answers promptly again, it holds each deal exactly once (its
    # trickled creates were committed: they are found, not made again)
    live.sims["icloudready"].faults.clear()
    wait_for(
        lambda: sorted(str(o.name) for o in held(live, "icloudready")) == names,
        90,
        "iCloudReady did not catch up",
    )
    wait_quiet(live)
    assert sorted(str(o.name) for o in held(live, "icloudready")) == names
