"""Ordering and conflicts on the real stack: one change at a time per deal, older changes
never win, bursts coalesce, concurrent edits converge on the last writer, and per-field
ownership from the mapping file holds against every other vendor."""

from __future__ import annotations

import copy
import itertools
import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from tests.integration.conftest import emptied
from tests.integration.drive import (
    DEAL,
    a_moment_later,
    announce,
    events,
    everywhere,
    held,
    names,
    only_id,
    oppsync_show,
    others,
    person_creates,
    person_edits,
    settle,
    synced_from,
    upserts,
    wait_names,
    written_name,
)
from worker.sandbox.simulators.base import sign_standard_webhook
from worker.sandbox.stack import ROOT, VENDORS, Stack, start_stack, wait_for
from worker.sync.push import QUIET, SETTLE_MAX

pytestmark = [pytest.mark.integration, pytest.mark.variants]


def test_ingest_waits_for_the_records_lock(live: Stack) -> None:
    # given a synced deal whose per-record lock is held (another change is being applied)
    key = synced_from(live, "leadway")
    client = redis.Redis.from_url(live.redis.url)
    lock = client.lock(f"oppsync:lock:{key}", timeout=30)
    assert lock.acquire(blocking=False)
    try:
        # when a person renames it in Salescaling and Salescaling announces it
        sid = only_id(live, "salescaling")
        person_edits(live, "salescaling", sid, name="Renamed while locked")
        assert announce(live, "salescaling", sid, created=False) == 202
        # then the worker takes the event but, while the lock is held, applies it nowhere
        wait_for(lambda: bool(client.hlen("unacked")), 10, "the event did not reach the worker")
        threading.Event().wait(1.5)
        assert names(live)["leadway"] == [DEAL.name]
        assert all(e["outcome"] != "applied" or e["vendor"] != "salescaling" for e in events(live))
    finally:
        lock.release()
    # and once it is free, the change goes through
    wait_names(live, "Renamed while locked")


def test_ingest_drops_an_event_older_than_one_already_applied(live: Stack) -> None:
    # given a deal synced from Salescaling, renamed twice there; the first rename's
    # delivery is held back by the network
    synced_from(live, "salescaling")
    sim = live.sims["salescaling"]
    sid = only_id(live, "salescaling")
    first = sim.edit(sid, name="First rename")
    sim.edit(sid, name="Second rename")
    assert sim.emit_standard(sid) == 202
    wait_names(live, "Second rename")
    settle(live)
    before = {v: len(upserts(live, v)) for v in VENDORS}
    # when the held-back delivery (the older record) finally arrives
    assert sim.send_standard_webhook(first) == 202
    settle(live)
    # then it is dropped as stale: nothing written, every vendor keeps the newer name
    assert events(live)[0]["outcome"] == "stale"
    assert {v: len(upserts(live, v)) for v in VENDORS} == before
    assert all(n == ["Second rename"] for n in names(live).values())


def test_ingest_older_change_from_another_vendor_loses_and_is_put_back(live: Stack) -> None:
    # given a deal renamed in Leadway, then (later) in Salescaling; Salescaling's is applied,
    # and our write of it replaces Leadway's rename there
    synced_from(live, "siro")
    lid, sid = only_id(live, "leadway"), only_id(live, "salescaling")
    person_edits(live, "leadway", lid, name="Older rename")
    leadway_then = copy.deepcopy(live.sims["leadway"].records[lid])
    a_moment_later()
    person_edits(live, "salescaling", sid, name="Newer rename")
    assert announce(live, "salescaling", sid, created=False) == 202
    wait_names(live, "Newer rename")
    # when Leadway's automation finally posts its record as it was after the older rename
    assert live.sims["leadway"].send_standard_webhook(leadway_then) == 202
    settle(live)
    # then the newer name stays everywhere, Leadway included
    assert all(n == ["Newer rename"] for n in names(live).values())
    assert events(live)[0]["outcome"] in ("unchanged", "stale")


@pytest.mark.parametrize("source", ["leadway", "salescaling"])
def test_push_burst_of_ten_edits_coalesces(live: Stack, source: str) -> None:
    # given a deal synced from the source
    synced_from(live, source)
    vendor_id = only_id(live, source)
    before = {v: len(upserts(live, v)) for v in others(source)}
    # when a person makes ten quick edits there, each announced
    for i in range(10):
        person_edits(live, source, vendor_id, name=f"Edit {i}", amount=1000 + i)
        assert announce(live, source, vendor_id, created=False) == 202
    # then every vendor ends with the last edit
    wait_names(live, "Edit 9")
    settle(live)
    # after at most two writes each (docs/architecture.md: the first edit's at once, or none
    # when the deal had just changed; then one with the final values), plus one for each
    # pause of QUIET or more and each SETTLE_MAX the burst lasted as the worker applied it
    # (a slow machine's), and one for each write the vendor held past our timeout (answer
    # variants: its retry writes again once it has settled)
    sent = {v: upserts(live, v)[before[v] :] for v in others(source)}
    bound = 2 + burst_overruns(live, source, 10)
    assert all(1 <= len(s) <= bound + sum(r.late for r in s) for s in sent.values()), {
        v: len(s) for v, s in sent.items()
    }
    assert {v: written_name(v, s[-1]) for v, s in sent.items()} == dict.fromkeys(
        others(source), "Edit 9"
    )
    amounts = {v: [o.amount for o in held(live, v)] for v in ("siro", "icloudready")}
    assert everywhere(amounts, Decimal("1009.00"))


def burst_overruns(stack: Stack, source: str, count: int) -> int:
    """How often the last ``count`` changes from ``source``, as the worker applied them,
    paused for ``QUIET`` or more or went on past another ``SETTLE_MAX``: each lets a
    waiting write go with what it has, so each may add a write (worker/sync/push.py)."""
    applied = sorted(
        e["at"] for e in events(stack) if e["vendor"] == source and e["outcome"] == "applied"
    )[-count:]
    pauses = sum(1 for a, b in itertools.pairwise(applied) if b - a >= QUIET.total_seconds())
    return pauses + int((applied[-1] - applied[0]) // SETTLE_MAX.total_seconds())


# -- 2. conflicts: last writer wins by the source's timestamp --------------------------------
@pytest.mark.parametrize("arrival", ["newer_first", "older_first", "together"])
def test_conflict_concurrent_edits_converge_on_the_last_writer(live: Stack, arrival: str) -> None:
    # given a synced deal renamed in Leadway and, a moment later, in Salescaling
    synced_from(live, "icloudready")
    lid, sid = only_id(live, "leadway"), only_id(live, "salescaling")
    person_edits(live, "leadway", lid, name="Leadway's name", amount=111)
    a_moment_later()
    person_edits(live, "salescaling", sid, name="Salescaling's name", amount=222)
    # when both vendors announce, in either order or at once
    older = lambda: announce(live, "leadway", lid, created=False)  # noqa: E731
    newer = lambda: announce(live, "salescaling", sid, created=False)  # noqa: E731
    if arrival == "together":
        threads = [threading.Thread(target=f) for f in (older, newer)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        for announce_one in (newer, older) if arrival == "newer_first" else (older, newer):
            assert announce_one() == 202
    # then all five hold Salescaling's values, the later edit
    wait_names(live, "Salescaling's name")
    settle(live)
    assert all(n == ["Salescaling's name"] for n in names(live).values())
    amounts = {v: [o.amount for o in held(live, v)] for v in ("siro", "leadway", "icloudready")}
    assert everywhere(amounts, Decimal("222.00"))


def test_conflict_rule_is_shown_by_oppsync_show(live: Stack) -> None:
    # given a deal whose name was last set by Salescaling, after an older Leadway rename lost
    key = synced_from(live, "siro")
    lid, sid = only_id(live, "leadway"), only_id(live, "salescaling")
    person_edits(live, "leadway", lid, name="Loses")
    a_moment_later()
    person_edits(live, "salescaling", sid, name="Wins")
    assert announce(live, "salescaling", sid, created=False) == 202
    wait_names(live, "Wins", ("siro", "ivvy", "icloudready"))
    settle(live)
    assert announce(live, "leadway", lid, created=False) == 202
    wait_names(live, "Wins")
    settle(live)
    # when an operator asks oppsync about it
    shown = oppsync_show(live, key)
    # then the name's line says which rule decided it
    (line,) = [ln for ln in shown.splitlines() if ln.strip().startswith("name ")]
    assert '"Wins"' in line and "last writer wins" in line and "salescaling" in line


# -- 2b. per-field ownership (a stack of its own, with a mapping that declares owners) -------
@pytest.fixture(scope="module")
def owned_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A second small stack whose mapping gives stage to Leadway and amount to Salescaling."""
    directory = Path(tmp_path_factory.mktemp("owned"))
    mapping = (ROOT / "mapping.example.toml").read_text()
    mapping = mapping.replace('# stage = "leadway"', 'stage = "leadway"')
    mapping = mapping.replace('# amount = "salescaling"', 'amount = "salescaling"')
    assert 'amount = "salescaling"' in mapping.replace("# amount", "")
    (directory / "mapping.toml").write_text(mapping)
    running = start_stack(directory / "stack", OPPSYNC_MAPPING=str(directory / "mapping.toml"))
    yield running
    running.stop()


@pytest.fixture
def owned(owned_stack: Stack) -> Iterator[Stack]:
    """That stack with empty simulators and no oppsync state (as ``live`` is)."""
    yield from emptied(owned_stack)


def amounts_held(stack: Stack) -> dict[str, list[Decimal | None]]:
    return {v: [o.amount for o in held(stack, v)] for v in VENDORS if v != "ivvy"}


def stages_held(stack: Stack) -> dict[str, list[str | None]]:
    return {v: [o.stage for o in held(stack, v)] for v in ("leadway", "ivvy", "icloudready")}


def test_ownership_other_vendors_cannot_change_an_owned_field(owned: Stack) -> None:
    # given a deal synced everywhere, its amount owned by Salescaling
    key = synced_from(owned, "leadway")
    lid, sid = only_id(owned, "leadway"), only_id(owned, "salescaling")
    # when Leadway changes the amount (and the name), later than anything else
    person_edits(owned, "leadway", lid, name="Renamed in Leadway", amount=99999)
    assert announce(owned, "leadway", lid, created=False) == 202
    # then the name follows Leadway, but the amount stays Salescaling's, Leadway put back
    wait_names(owned, "Renamed in Leadway")
    settle(owned)
    assert everywhere(amounts_held(owned), DEAL.amount), amounts_held(owned)
    shown = oppsync_show(owned, key)
    assert "owned by salescaling" in shown
    # and when Salescaling, the owner, changes it, it goes everywhere
    person_edits(owned, "salescaling", sid, name="Renamed in Leadway", amount=4242)
    assert announce(owned, "salescaling", sid, created=False) == 202
    wait_for(
        lambda: everywhere(amounts_held(owned), Decimal("4242.00")),
        30,
        "the owner's amount did not reach every vendor",
    )


def test_ownership_stage_moves_only_from_its_owner(owned: Stack) -> None:
    # given a deal in stage "proposal", stage owned by Leadway
    synced_from(owned, "leadway")
    iid, lid = only_id(owned, "ivvy"), only_id(owned, "leadway")
    assert everywhere(stages_held(owned), "proposal"), stages_held(owned)
    # when a person moves it to "new" in iVvy (same status, open)
    owned.sims["ivvy"].edit(iid, stageId=69)
    assert announce(owned, "ivvy", iid, created=False) == 202
    settle(owned)
    # then iVvy is put back to "proposal" and nobody else moved
    threading.Event().wait(1)  # what a wrong rule would do, it would have done by now
    wait_for(lambda: everywhere(stages_held(owned), "proposal"), 30, "iVvy was not put back")
    # and when Leadway, the owner, moves it to "new", every vendor follows
    owned.sims["leadway"].edit(lid, pipelineStageId="7915dedc-8f18-44d5-8bc3-77c04e994a10")
    assert announce(owned, "leadway", lid, created=False) == 202
    wait_for(lambda: everywhere(stages_held(owned), "new"), 30, "the owner's stage did not go")


# -- 8. provenance ----------------------------------------------------------------------------
def test_provenance_each_write_names_its_event_in_oppsync_show(live: Stack) -> None:
    # given a deal created in Salescaling and announced with a known delivery id
    sim = live.sims["salescaling"]
    sid = person_creates(live, "salescaling")
    body = json.dumps(sim.records[sid]).encode()
    headers = sign_standard_webhook(sim.webhook_secret, body, msg_id="msg_provenance_create")
    assert sim.send_webhook(body, headers) == 202
    wait_names(live, DEAL.name or "")
    settle(live)
    # when a person renames it in Leadway, and HighLevel says so with its own webhook id
    lid = only_id(live, "leadway")
    person_edits(live, "leadway", lid, name="Renamed for provenance")
    assert live.sims["leadway"].emit(lid, "OpportunityUpdate", webhook_id="wh-provenance") == 202
    wait_names(live, "Renamed for provenance")
    settle(live)
    # then `oppsync show` lists every write with the vendor, record and delivery behind it
    shown = oppsync_show(live, f"salescaling:{sid}")
    writes = shown.split("writes (newest first):", 1)[1].strip().splitlines()
    created = [w for w in writes if " created " in w]
    updated = [w for w in writes if " updated " in w]
    assert len(created) == 4 and len(updated) == 4, shown
    for line in created:
        assert f"<- salescaling {sid} delivery msg_provenance_create" in line
    for line in updated:
        assert f"<- leadway {lid} delivery wh-provenance (fields name)" in line
    targets = sorted(line.split()[1] for line in updated)
    assert targets == ["icloudready", "ivvy", "salescaling", "siro"]
    # and each vendor's line shows its last write's cause
    (siro_line,) = [ln for ln in shown.splitlines() if ln.startswith("  siro ")]
    assert "because of leadway delivery wh-provenance" in siro_line
