"""Echoes on the real stack: with every vendor that can echo our writes back doing so (Leadway
and iVvy webhooks, Salescaling's automation), a change ends after one round of writes, and
iVvy's notifications of our own API changes are dropped by their author."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from tests.integration.conftest import wait_idle
from tests.integration.drive import (
    DEAL,
    announce,
    events,
    everywhere,
    held,
    names,
    only_id,
    person_creates,
    person_edits,
    upserts,
)
from worker.sandbox.stack import VENDORS, Stack, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.variants]


@pytest.fixture
def storm(live: Stack) -> Iterator[Stack]:
    """The stack with every vendor that can echo doing so: Leadway and iVvy send a webhook
    for every change (ours included), Salescaling's automation posts every change."""
    live.sims["leadway"].auto_emit = True
    live.sims["ivvy"].auto_emit = True
    live.sims["salescaling"].automation = True
    try:
        yield live
    finally:
        live.sims["leadway"].auto_emit = False
        live.sims["ivvy"].auto_emit = False
        live.sims["salescaling"].automation = False


def activity(stack: Stack) -> tuple[int, int]:
    """(opportunity writes answered, webhooks the vendors sent) so far."""
    writes = sum(len(upserts(stack, v)) for v in VENDORS)
    return writes, sum(len(sim.webhook_answers) for sim in stack.sims.values())


def quiet(stack: Stack, timeout: float = 40) -> dict[str, int]:
    """Wait until nothing moves: no job queued or running, and no write nor webhook for a
    while (vendors echo a moment after they answer). Returns the upserts per vendor."""
    client = redis.Redis.from_url(stack.redis.url)
    deadline = time.monotonic() + timeout
    last: tuple[int, int] | None = None
    while time.monotonic() < deadline:
        wait_idle(client, timeout=max(1.0, deadline - time.monotonic()))
        threading.Event().wait(0.8)
        now = activity(stack)
        if now == last:
            return {v: len(upserts(stack, v)) for v in VENDORS}
        last = now
    raise AssertionError(f"the echo storm did not stop: {activity(stack)}")


def wait_everywhere(stack: Stack, name: str) -> None:
    wait_for(lambda: everywhere(names(stack), name), 30, f"{name!r} did not reach every vendor")


@pytest.mark.parametrize("source", ["leadway", "ivvy", "salescaling"])
def test_echo_storm_ends_after_one_round(storm: Stack, source: str) -> None:
    # given a deal created in the source, synced while every vendor echoes every change
    vendor_id = person_creates(storm, source)
    if source != "leadway":  # Leadway announces its own creates; the others' are seeded
        assert announce(storm, source, vendor_id) == 202
    wait_everywhere(storm, DEAL.name or "")
    before = quiet(storm)
    # when a person renames it in the source (which announces it itself)
    person_edits(storm, source, vendor_id, name="Renamed in a storm")
    # then every vendor holds the new name, and the writes stop after one round:
    # one update for each other vendor, none for the source. A write the vendor held past
    # our timeout (answer variants) may be written once more after the settle time, unless
    # its late commit was seen first (then that vendor holds it and needs nothing more).
    wait_everywhere(storm, "Renamed in a storm")
    after = quiet(storm)
    late = {v: sum(r.late for r in upserts(storm, v)[before[v] :]) for v in VENDORS}
    writes = {v: after[v] - before[v] for v in VENDORS}
    assert writes[source] == 0, writes
    assert all(1 <= writes[v] <= 1 + late[v] for v in VENDORS if v != source), (writes, late)
    # and the echoes that came back were recognised as ours
    outcomes = {(e["vendor"], e["outcome"]) for e in events(storm) if e["vendor"] != source}
    assert ("leadway", "echo") in outcomes or source == "leadway"
    assert ("ivvy", "echo") in outcomes or source == "ivvy"
    assert not {o for _, o in outcomes} - {"echo", "applied", "unchanged"}


def test_echo_ivvy_notification_of_our_own_api_change_is_dropped(storm: Stack) -> None:
    # given a deal created in Leadway and written to iVvy by us, iVvy notifying each change
    person_creates(storm, "leadway")
    wait_everywhere(storm, DEAL.name or "")
    quiet(storm)
    # then every iVvy notification about it (SourceType 1, SourceInfo our API key) was
    # dropped by its author, before anything else was looked at
    ivvy_events = [e for e in events(storm) if e["vendor"] == "ivvy"]
    assert ivvy_events
    assert {(e["outcome"], e["detail"]) for e in ivvy_events} == {
        ("echo", "ivvy says our API key made this change")
    }


def test_echo_ivvy_api_change_by_another_integration_is_a_change(live: Stack) -> None:
    # given a deal synced from Salescaling
    vendor_id = person_creates(live, "salescaling")
    assert announce(live, "salescaling", vendor_id) == 202
    wait_everywhere(live, DEAL.name or "")
    quiet(live)
    # when another integration (another API key) renames it in iVvy
    ivvy_id = only_id(live, "ivvy")
    live.sims["ivvy"].edit(ivvy_id, name="Renamed by another app")
    assert live.sims["ivvy"].emit(ivvy_id, source_api="someone-elses-key") == 202
    # then it is synced like any change
    wait_everywhere(live, "Renamed by another app")


def test_echo_a_person_putting_back_an_earlier_value_is_a_change(live: Stack) -> None:
    # given a deal synced from Leadway, renamed there and synced again, so that Salescaling
    # once received the original name from us
    lid = person_creates(live, "leadway")
    assert announce(live, "leadway", lid) == 202
    wait_everywhere(live, DEAL.name or "")
    person_edits(live, "leadway", lid, name="Second name")
    assert announce(live, "leadway", lid, created=False) == 202
    wait_everywhere(live, "Second name")
    quiet(live)
    threading.Event().wait(2.1)  # beyond the clock skew oppsync allows between vendors
    # when a person in Salescaling puts the original name back (what we once wrote there)
    sid = only_id(live, "salescaling")
    person_edits(live, "salescaling", sid, name=DEAL.name or "")
    assert announce(live, "salescaling", sid, created=False) == 202
    # then it is a change, not an echo: every vendor gets the original name back
    wait_everywhere(live, DEAL.name or "")
    assert [o.name for o in held(live, "leadway")] == [DEAL.name]
