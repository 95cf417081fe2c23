"""Vendors answering in ways their pages allow, through the real stack: timestamps with a
zone word, records that leave keys out, values the mapping does not know."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.drive import (
    DEAL,
    announce,
    as_held_by,
    expected,
    held,
    only_id,
    oppsync_show,
    others,
    person_creates,
    settle,
    synced,
    synced_from,
    wait_converged,
    wait_names,
)
from worker.sandbox.stack import ADMIN_PASSWORD, ADMIN_USER, VENDORS, Stack, wait_for
from worker.store.deadletters import DeadLetters

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("how", ["sns", "getOpportunityList"])
def test_ivvy_record_stamped_with_utc_suffix_syncs(live: Stack, how: str) -> None:
    # given a deal a person created in iVvy, its times in iVvy's own form with the zone word
    # (`yyyy-mm-dd HH:mm:ss[ UTC]`, the IVVY-Date row of VENDORS.md)
    sim = live.sims["ivvy"]
    vendor_id = person_creates(live, "ivvy")
    with sim.state_lock:
        sim.records[vendor_id]["createdDate"] = "2026-01-05 09:00:00 UTC"
        sim.records[vendor_id]["modifiedDate"] = "2026-01-05 09:30:00 UTC"
    # when iVvy announces it: the record in the SNS notification, or only its id (then the
    # worker reads it with getOpportunityList)
    status = (
        sim.emit(vendor_id, "OpportunityAdded")
        if how == "sns"
        else sim.emit_standard(vendor_id, thin=True)
    )
    assert status == 202
    # then the other four vendors hold the deal
    wait_converged(live, others("ivvy"), as_held_by("ivvy", DEAL))


# -- a record that does not carry a field: unknown, kept (issue 16 §2) ------------------------
def test_siro_record_without_contacts_keeps_the_contact_everywhere(live: Stack) -> None:
    # given a deal with its contact, created in Leadway and synced to all five
    synced_from(live, "leadway")
    siro, leadway = live.sims["siro"], live.sims["leadway"]
    siro_id = only_id(live, "siro")
    upserted_before = len(leadway.requests_to("POST", "/contacts/upsert"))
    # when SIRO answers without opportunityContacts (its documented answer has none) and a
    # person renames the deal there
    siro.omit = {"opportunityContacts"}
    siro.edit(siro_id, name="Harbour View Gala")
    assert siro.emit_standard(siro_id) == 202
    wait_names(live, "Harbour View Gala")
    settle(live)
    # then every vendor with contacts still holds the deal's contact
    for vendor in ("siro", "leadway", "ivvy"):
        (opp,) = held(live, vendor)
        assert opp.contact == expected(vendor)["contact"], vendor
    # and HighLevel got no placeholder contact named after the company
    later = leadway.requests_to("POST", "/contacts/upsert")[upserted_before:]
    assert [r.body.get("name") for r in later if r.body.get("name") == DEAL.company] == []


#: What a person changes in each vendor's UI: (record keys, the canonical change).
NEW_NAME = "Harbour View Gala"
CHANGES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "siro": ({"amount": 990}, {"amount": Decimal("990.00")}),
    "leadway": ({"monetaryValue": 990}, {"amount": Decimal("990.00")}),
    "ivvy": ({"description": "Four days"}, {"description": "Four days"}),
    "salescaling": ({"amount": 990}, {"amount": Decimal("990.00")}),
    "icloudready": ({"revenue": 990}, {"amount": Decimal("990.00")}),
}


#: The record keys each vendor's synced fields are read from (its API's read shape).
RECORD_KEYS: dict[str, set[str]] = {
    "siro": {"name", "amount", "disposition", "closedAt", "opportunityUsers",
             "opportunityContacts", "account"},
    "leadway": {"name", "monetaryValue", "status", "pipelineStageId", "assignedTo", "contact"},
    "ivvy": {"name", "description", "stageId", "stageName", "closedDate", "ownerUser",
             "contact", "company"},
    "salescaling": {"name", "amount", "status", "closeDate", "description",
                    "closeProbability"},
    "icloudready": {"opportunityInformation", "opportunityDescription", "revenue",
                    "probability", "closeDate", "status", "stage", "opportunityOwner"},
}  # fmt: skip


NAME_KEY = {"icloudready": "opportunityInformation"}


@pytest.mark.parametrize("left_out", ["every field but the name", "the name"])
@pytest.mark.parametrize("vendor", VENDORS)
def test_fields_a_record_leaves_out_are_kept(live: Stack, vendor: str, left_out: str) -> None:
    # given a deal a person created in the vendor, synced to all five
    sim = live.sims[vendor]
    vendor_id = person_creates(live, vendor)
    assert announce(live, vendor, vendor_id) == 202
    wait_converged(live, others(vendor), as_held_by(vendor, DEAL))
    settle(live)
    # when the vendor's answers leave fields out and a person changes one it still carries
    name_key = NAME_KEY.get(vendor, "name")
    if left_out == "the name":
        sim.omit = {name_key}
        keys, change = CHANGES[vendor]
        sim.edit(vendor_id, **keys)
        wanted = DEAL.replace(**change)
    else:
        sim.omit = RECORD_KEYS[vendor] - {name_key}
        sim.edit(vendor_id, name=NEW_NAME)
        wanted = DEAL.replace(name=NEW_NAME)
    assert announce(live, vendor, vendor_id, created=False) == 202
    # then every other vendor takes the change and keeps every field left out
    wait_converged(live, others(vendor), as_held_by(vendor, wanted))
    settle(live)
    wait_converged(live, others(vendor), as_held_by(vendor, wanted))
    # and the vendor itself was not written back with anything cleared
    (opp,) = held(live, vendor)
    assert synced(opp, vendor) == expected(vendor, wanted)


# -- a value the mapping does not know: that field unchanged, the rest syncs (§4) ------------
UNMAPPED: list[tuple[str, str, dict[str, Any]]] = [
    ("siro", "disposition", {"disposition": "PENDING"}),
    ("leadway", "status", {"status": "all"}),
    ("leadway", "pipelineStageId", {"pipelineStageId": "stage-added-after-the-mapping"}),
    ("ivvy", "stageId", {"stageId": 9999, "stageName": "Pending Review"}),
    ("salescaling", "status", {"status": "on-hold"}),
    ("icloudready", "status", {"status": "pending-review"}),
]


def metric(stack: Stack, name: str, **labels: str) -> float:
    answer = httpx.get(f"{stack.web_url}/metrics", auth=(ADMIN_USER, ADMIN_PASSWORD))
    assert answer.status_code == 200, answer.text
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


@pytest.mark.parametrize(
    ("vendor", "field", "value"), UNMAPPED, ids=[f"{v}-{f}" for v, f, _ in UNMAPPED]
)
def test_unmapped_value_leaves_its_field_and_the_rest_syncs(
    live: Stack, vendor: str, field: str, value: dict[str, Any]
) -> None:
    # given a deal a person created in the vendor, synced to all five
    sim = live.sims[vendor]
    vendor_id = person_creates(live, vendor)
    assert announce(live, vendor, vendor_id) == 202
    wait_converged(live, others(vendor), as_held_by(vendor, DEAL))
    settle(live)
    # when a person renames it and sets a value the mapping does not know
    sim.edit(vendor_id, name=NEW_NAME)
    with sim.state_lock:  # as the vendor's UI would: the API may not take it from us
        sim.records[vendor_id].update(value)
    assert announce(live, vendor, vendor_id, created=False) == 202
    # then the name reaches the others, and the status (and stage) stay as they were
    wait_converged(live, others(vendor), as_held_by(vendor, DEAL.replace(name=NEW_NAME)))
    settle(live)
    wait_converged(live, others(vendor), as_held_by(vendor, DEAL.replace(name=NEW_NAME)))
    assert DeadLetters(redis.Redis.from_url(live.redis.url)).counts().get(vendor, 0) == 0
    # and the value is reported: the metric, and oppsync show
    wait_for(
        lambda: metric(live, "oppsync_unmapped_values_total", vendor=vendor, field=field) >= 1,
        10,
        "oppsync_unmapped_values_total was not counted",
    )
    shown = oppsync_show(live, f"{vendor}:{vendor_id}")
    assert f"unmapped: {vendor} {field}" in shown and str(next(iter(value.values()))) in shown
