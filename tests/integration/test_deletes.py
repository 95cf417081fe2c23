"""Deletes on the real stack: a HighLevel ``OpportunityDelete``, an iVvy
``OpportunityDeleted`` or a SIRO ``deletedAt`` propagates by the delete policy of the vendor
where it happened (``mark-lost``, ``delete``, ``ignore``), with each vendor's own means, and a
late event never brings the deal back."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas.opportunity import Status
from tests.integration.conftest import emptied
from tests.integration.drive import (
    DEAL,
    announce,
    events,
    everywhere,
    held,
    names,
    only_id,
    oppsync_show,
    person_edits,
    settle,
    synced_from,
    upserts,
)
from worker.sandbox.stack import VENDORS, Stack, start_stack, wait_for

pytestmark = pytest.mark.integration


def leadway_deletes(stack: Stack, vendor_id: str) -> int:
    """A person deletes the deal in Leadway; HighLevel sends ``OpportunityDelete``."""
    sim = stack.sims["leadway"]
    with sim.state_lock:
        sim.tombstones[vendor_id] = sim.records.pop(vendor_id)
    return int(sim.emit(vendor_id, "OpportunityDelete"))


def ivvy_deletes(stack: Stack, vendor_id: str) -> int:
    """A person deletes the deal in iVvy's UI; iVvy notifies ``OpportunityDeleted``."""
    sim = stack.sims["ivvy"]
    sim.remove(vendor_id)
    return int(sim.emit(vendor_id, "OpportunityDeleted"))


def statuses(stack: Stack, vendors: tuple[str, ...]) -> dict[str, list[Status | None]]:
    return {v: [o.status for o in held(stack, v)] for v in vendors}


def rest(*gone: str) -> tuple[str, ...]:
    return tuple(v for v in VENDORS if v not in gone)


def wait_statuses(stack: Stack, vendors: tuple[str, ...], status: Status) -> None:
    try:
        wait_for(lambda: everywhere(statuses(stack, vendors), status), 30, "")
    except TimeoutError:
        raise AssertionError(f"wanted {status} in {vendors}: {statuses(stack, vendors)}") from None


def deletes_sent(stack: Stack, vendor: str) -> int:
    return len([r for r in stack.sims[vendor].log if r.method == "DELETE"])


# -- mark-lost: the session stack's default policy ----------------------------------------
def test_delete_in_leadway_marks_the_others_lost(live: Stack) -> None:
    # given a deal synced everywhere from Salescaling, Salescaling's record as it was then
    key = synced_from(live, "salescaling")
    sid = only_id(live, "salescaling")
    old_snapshot = copy.deepcopy(live.sims["salescaling"].records[sid])
    # when a person deletes it in Leadway (policy mark-lost)
    assert leadway_deletes(live, only_id(live, "leadway")) == 202
    # then the other four hold it as lost, nothing deleted, and Leadway stays without it
    wait_statuses(live, rest("leadway"), Status.LOST)
    settle(live)
    assert held(live, "leadway") == []
    assert sum(deletes_sent(live, v) for v in VENDORS) == 0
    # and a late event from before the delete cannot reopen it, nor recreate it in Leadway
    assert live.sims["salescaling"].send_standard_webhook(old_snapshot) == 202
    settle(live)
    assert statuses(live, rest("leadway")) == {v: [Status.LOST] for v in rest("leadway")}
    assert held(live, "leadway") == []
    assert "marked lost" in oppsync_show(live, key)


def test_delete_in_ivvy_marks_the_others_lost(live: Stack) -> None:
    # given a deal synced everywhere from Leadway
    synced_from(live, "leadway")
    # when a person deletes it in iVvy
    assert ivvy_deletes(live, only_id(live, "ivvy")) == 202
    # then the other four hold it as lost
    wait_statuses(live, rest("ivvy"), Status.LOST)
    settle(live)
    assert held(live, "ivvy") == []
    # and a later rename elsewhere still reaches the others but never recreates it in iVvy
    lid = only_id(live, "leadway")
    person_edits(live, "leadway", lid, name="Renamed after the delete")
    assert announce(live, "leadway", lid, created=False) == 202
    wait_for(
        lambda: everywhere({v: names(live)[v] for v in rest("ivvy")}, "Renamed after the delete"),
        30,
        f"{names(live)}",
    )
    settle(live)
    assert held(live, "ivvy") == []


def test_delete_in_siro_by_deleted_at_marks_the_others_lost(live: Stack) -> None:
    # given a deal synced everywhere from Leadway
    synced_from(live, "leadway")
    siro_id = only_id(live, "siro")
    # when SIRO soft-deletes it (deletedAt set) and its automation posts the record
    live.sims["siro"].edit(siro_id, deletedAt=datetime.now(UTC).isoformat())
    assert live.sims["siro"].emit_standard(siro_id) == 202
    # then the others are marked lost
    wait_statuses(live, rest("siro"), Status.LOST)


# -- delete and ignore: a stack whose Leadway deletes and whose iVvy deletes are ignored ----
@pytest.fixture(scope="module")
def policy_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(
        Path(tmp_path_factory.mktemp("policies")),
        LEADWAY_DELETE_POLICY="delete",
        IVVY_DELETE_POLICY="ignore",
    )
    yield running
    running.stop()


@pytest.fixture
def policies(policy_stack: Stack) -> Iterator[Stack]:
    """That stack, emptied as ``live`` empties the session's."""
    yield from emptied(policy_stack)


def test_delete_policy_delete_removes_the_deal_everywhere(policies: Stack) -> None:
    # given a deal synced everywhere from Salescaling, Salescaling's record as it was then
    key = synced_from(policies, "salescaling")
    sid = only_id(policies, "salescaling")
    old_snapshot: dict[str, Any] = copy.deepcopy(policies.sims["salescaling"].records[sid])
    lid = only_id(policies, "leadway")
    # when a person deletes it in Leadway (policy delete)
    assert leadway_deletes(policies, lid) == 202
    # then SIRO, Salescaling and iCloudReady delete theirs through their DELETE endpoints,
    # and iVvy, which cannot delete, holds it as lost
    wait_for(
        lambda: all(held(policies, v) == [] for v in ("siro", "salescaling", "icloudready")),
        30,
        "not deleted everywhere",
    )
    assert {v: deletes_sent(policies, v) for v in ("siro", "salescaling", "icloudready")} == {
        "siro": 1,
        "salescaling": 1,
        "icloudready": 1,
    }
    wait_statuses(policies, ("ivvy",), Status.LOST)
    settle(policies)
    before = {v: len(upserts(policies, v)) for v in VENDORS}
    # when late events arrive: Salescaling's old record, a Leadway update, an iVvy edit
    assert policies.sims["salescaling"].send_standard_webhook(old_snapshot) == 202
    assert policies.sims["leadway"].emit(lid, "OpportunityUpdate") == 202
    iid = only_id(policies, "ivvy")
    person_edits(policies, "ivvy", iid, name="Edited after the delete")
    assert announce(policies, "ivvy", iid, created=False) == 202
    settle(policies)
    # then nothing is written or recreated anywhere
    assert {v: len(upserts(policies, v)) for v in VENDORS} == before
    assert all(held(policies, v) == [] for v in ("siro", "leadway", "salescaling", "icloudready"))
    late = [e["outcome"] for e in events(policies)[:3]]
    assert set(late) <= {"late", "unchanged"} and "late" in late
    shown = oppsync_show(policies, key)
    assert "(deleted)" in shown and "marked lost (cannot delete)" in shown


def test_delete_policy_ignore_leaves_the_others_alone(policies: Stack) -> None:
    # given a deal synced everywhere from Leadway
    synced_from(policies, "leadway")
    # when a person deletes it in iVvy (policy ignore)
    assert ivvy_deletes(policies, only_id(policies, "ivvy")) == 202
    settle(policies)
    # then the other four keep it as it was
    assert statuses(policies, rest("ivvy")) == {v: [DEAL.status] for v in rest("ivvy")}
    assert sum(deletes_sent(policies, v) for v in VENDORS) == 0
    # and a later change elsewhere still syncs, without recreating it in iVvy
    lid = only_id(policies, "leadway")
    person_edits(policies, "leadway", lid, name="Renamed after the ignored delete")
    assert announce(policies, "leadway", lid, created=False) == 202
    wait_for(
        lambda: everywhere(
            {v: names(policies)[v] for v in rest("ivvy")}, "Renamed after the ignored delete"
        ),
        30,
        f"{names(policies)}",
    )
    settle(policies)
    assert held(policies, "ivvy") == []
