"""``oppsync backfill --from V`` links deals that already exist: the real stack and command.

The simulators are filled first, as a company adopting oppsync would have them: some deals
already entered in several vendors by hand, some only in the source vendor.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from decimal import Decimal

import pytest
import redis

from schemas.opportunity import Contact, Opportunity
from tests.integration.conftest import wait_idle
from tests.integration.drive import (
    DEAL,
    MAPPING,
    as_held_by,
    expected,
    held,
    person_creates,
    run_cli,
    schema,
    synced,
    writes,
)
from worker.sandbox.stack import VENDORS, Stack, wait_for
from worker.store.keys import links_prefix

pytestmark = pytest.mark.integration


HARBOUR = DEAL
QUAYSIDE = DEAL.replace(
    name="Quayside Launch",
    amount=Decimal("4200.00"),
    contact=Contact(name="Lee Wong", email="lee@quayside.example", phone="+61400999888"),
    company="Quayside Pty",
)
RIVERSIDE = DEAL.replace(
    name="Riverside Retreat",
    amount=Decimal("880.00"),
    contact=Contact(name="Sam Riley", email="sam@riverside.example", phone="+61400555666"),
    company="Riverside Co",
)


def oppsync(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(stack, *args)


def in_siro(stack: Stack, opp: Opportunity, ref: str) -> str:
    """A deal SIRO's own CRM connector synced (each under its own CRM id)."""
    body = schema("siro").to_body(opp, MAPPING, key=f"crm-{ref}")
    return str(stack.sims["siro"].apply_sync(body)[0]["id"])


def names(stack: Stack, vendor: str) -> Counter[str | None]:
    return Counter(o.name for o in held(stack, vendor))


def populate(stack: Stack) -> dict[tuple[str, str | None], str]:
    """Harbour in siro, leadway and salescaling; Quayside only in siro; Riverside in siro,
    icloudready and ivvy. The copies were entered after SIRO's (newer times). Returns the
    ids by (vendor, deal name)."""
    ids = {("siro", opp.name): in_siro(stack, opp, str(n)) for n, opp in enumerate(
        (HARBOUR, QUAYSIDE, RIVERSIDE))}  # fmt: skip
    time.sleep(1.1)  # iVvy's times have whole seconds
    for vendor in ("leadway", "salescaling"):
        ids[vendor, HARBOUR.name] = person_creates(stack, vendor, HARBOUR)
    for vendor in ("icloudready", "ivvy"):
        ids[vendor, RIVERSIDE.name] = person_creates(stack, vendor, RIVERSIDE)
    return ids


def test_backfill_links_what_exists_and_creates_only_what_is_missing(live: Stack) -> None:
    # given deals already in several vendors, and one only in siro
    populate(live)
    # when the operator backfills from siro
    result = oppsync(live, "backfill", "--from", "siro")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_idle(redis.Redis.from_url(live.redis.url))
    # then every vendor holds each deal exactly once: no duplicates, none missing
    for vendor in VENDORS:
        assert names(live, vendor) == Counter(
            {HARBOUR.name: 1, QUAYSIDE.name: 1, RIVERSIDE.name: 1}
        ), vendor
    # and the records that existed were linked, not copied: 4 linked, 8 created
    assert "Matched existing records, linked: 4" in result.stdout, result.stdout
    assert "Records created: 8" in result.stdout, result.stdout
    # and each deal holds the same values everywhere
    for opp in (HARBOUR, RIVERSIDE, as_held_by("siro", QUAYSIDE)):
        same_everywhere(live, opp)
    # and a second backfill finds everything linked and changes nothing
    before = writes(live)
    again = oppsync(live, "backfill", "--from", "siro")
    assert "3 records, 3 already linked" in again.stdout, again.stdout
    assert writes(live) == before


def same_everywhere(stack: Stack, opp: Opportunity) -> None:
    """Every vendor holds one record named like ``opp``, with ``opp`` as that vendor can."""

    def found() -> dict[str, list[dict[str, object]]]:
        return {v: [synced(o, v) for o in held(stack, v) if o.name == opp.name] for v in VENDORS}

    wanted = {v: [expected(v, opp)] for v in VENDORS}
    try:
        wait_for(lambda: found() == wanted, 30, "not converged")
    except TimeoutError:
        raise AssertionError(f"held: {found()}\nwanted: {wanted}") from None


def test_backfill_dry_run_changes_nothing_and_says_what_it_would_do(live: Stack) -> None:
    # given the same deals, plus a second Harbour deal in leadway with another contact, and
    # a siro deal named like two salescaling records (which hold no contact to tell them apart)
    ids = populate(live)
    other = HARBOUR.replace(contact=Contact(name="Kim Lee", email="kim@elsewhere.example"))
    person_creates(live, "leadway", other)
    in_siro(live, HARBOUR.replace(name="Twin Deal"), "4")
    person_creates(live, "salescaling", HARBOUR.replace(name="Twin Deal"))
    person_creates(live, "salescaling", HARBOUR.replace(name="Twin Deal"))
    before = writes(live)
    # when the operator asks for a dry run
    result = oppsync(live, "backfill", "--from", "siro", "--dry-run")
    # then nothing was written or linked anywhere
    assert result.returncode == 0, result.stdout + result.stderr
    assert writes(live) == before
    client = redis.Redis.from_url(live.redis.url)
    assert list(client.scan_iter(links_prefix() + "*")) == []
    # and it says what it would do: Harbour would be linked to the leadway record with the
    # same contact, Twin Deal is left alone as ambiguous
    out = result.stdout
    assert "dry run: nothing changed" in out
    harbour = next(line for line in out.splitlines() if "'Harbour View Conference'" in line)
    assert f"would link leadway:{ids['leadway', HARBOUR.name]}," in harbour
    assert "would create in ivvy, icloudready" in harbour
    assert "salescaling has 2 records that match" in out
    assert "Records would be created: 8" in out
