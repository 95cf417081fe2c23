"""The Leadway adapter against the Leadway simulator over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from schemas import leadway as schema
from schemas.opportunity import Contact, Opportunity, Status
from tests.strategies import EXAMPLE_MAPPING
from worker.errors import InvalidPayload, OutcomeUnknown, Permanent, RateLimited
from worker.sandbox.simulators.leadway import LeadwaySimulator
from worker.settings import from_env
from worker.vendors.leadway import LeadwayAdapter

M = EXAMPLE_MAPPING
KEY = "opp-key-1"


def adapter_for(sim: LeadwaySimulator, *, token: str | None = None) -> LeadwayAdapter:
    env = {
        "OPPSYNC_VENDORS": "leadway",
        "LEADWAY_BASE_URL": sim.url,
        "LEADWAY_API_TOKEN": token or sim.token,
        "LEADWAY_LOCATION_ID": sim.location_id,
        "LEADWAY_PIPELINE_ID": sim.pipeline_id,
    }
    return LeadwayAdapter(from_env(env).vendor["leadway"], M, timeout=2.0)


@pytest.fixture(scope="module")
def server() -> Iterator[LeadwaySimulator]:
    sim = LeadwaySimulator(rate_limit=None).start()
    yield sim
    sim.stop()


@pytest.fixture
def sim(server: LeadwaySimulator) -> LeadwaySimulator:
    server.reset()
    return server


@pytest.fixture
def adapter(sim: LeadwaySimulator) -> Iterator[LeadwayAdapter]:
    adapter = adapter_for(sim)
    yield adapter
    adapter.close()


def an_opportunity(**changes: object) -> Opportunity:
    opp = Opportunity(
        name="Harbour expansion",
        amount=Decimal("1250.50"),
        status=Status.OPEN,
        stage="proposal",
        owner="alice@example.com",
        contact=Contact(name="Dana Reyes", email="dana@harbour.example.com"),
        company="Harbour Co",
    )
    return opp.replace(**changes)


def synced(opp: Opportunity) -> dict[str, object]:
    return {name: getattr(opp, name) for name in schema.SYNCED_FIELDS}


def test_leadway_adapter_creates_then_updates_the_same_record(
    sim: LeadwaySimulator, adapter: LeadwayAdapter
) -> None:
    # given a new opportunity
    opp = an_opportunity()
    # when it is upserted, then upserted again with changes and the links it returned
    first = adapter.upsert(opp, key=KEY, vendor_id=None, extra={})
    changed = opp.replace(status=Status.WON, stage="won", amount=Decimal("2000"))
    second = adapter.upsert(changed, key=KEY, vendor_id=first.vendor_id, extra=first.extra)
    # then one record holds the new values, and the contact was made once and reused
    assert (first.created, second.created) == (True, False)
    assert second.vendor_id == first.vendor_id
    assert list(sim.records) == [first.vendor_id]
    assert second.extra == first.extra and set(first.extra) == {"contact", "contact_fp"}
    assert len(sim.requests_to("POST", "/contacts/upsert")) == 1
    record = adapter.fetch(first.vendor_id)
    assert record is not None
    assert synced(adapter.to_canonical(record)) == synced(adapter.project(changed))


def test_leadway_adapter_makes_a_new_contact_when_the_contact_changes(
    sim: LeadwaySimulator, adapter: LeadwayAdapter
) -> None:
    # given a record made for one contact
    first = adapter.upsert(an_opportunity(), key=KEY, vendor_id=None, extra={})
    # when the canonical contact changes
    other = an_opportunity(contact=Contact(name="Sam Poe", phone="+61400000009"))
    second = adapter.upsert(other, key=KEY, vendor_id=first.vendor_id, extra=first.extra)
    # then a contact is upserted again and the record points at it
    assert second.extra["contact"] != first.extra["contact"]
    assert sim.records[first.vendor_id]["contact"]["phone"] == "+61400000009"


def test_leadway_adapter_creates_on_the_first_stage_without_a_mapped_one(
    sim: LeadwaySimulator, adapter: LeadwayAdapter
) -> None:
    # given an abandoned deal (no abandoned stage in the mapping) and no contact at all
    opp = an_opportunity(stage=None, status=Status.ABANDONED, contact=None)
    # when it is created
    result = adapter.upsert(opp, key=KEY, vendor_id=None, extra={})
    # then it sits on the pipeline's first stage, with a placeholder named after the company
    record = sim.records[result.vendor_id]
    assert record["pipelineStageId"] == sim.pipelines[0]["stages"][0]["id"]
    assert record["contact"]["name"] == "Harbour Co"
    assert synced(adapter.to_canonical(record)) == synced(adapter.project(opp))


def test_leadway_adapter_fetch_of_a_missing_record_is_none(adapter: LeadwayAdapter) -> None:
    # given / when / then
    assert adapter.fetch("missingRecord0000000") is None


def test_leadway_adapter_find_existing_by_name_and_creation_time(
    sim: LeadwaySimulator, adapter: LeadwayAdapter
) -> None:
    # given an old record and a new one of the same name, and one of another name
    since = datetime.now(UTC) - timedelta(seconds=5)
    old = sim.seed({"name": "Harbour expansion", "createdAt": "2020-01-01T00:00:00.000Z"})
    made = adapter.upsert(an_opportunity(), key=KEY, vendor_id=None, extra={})
    sim.seed({"name": "Harbour expansion 2"})
    # when it is looked for
    found = adapter.find_existing(an_opportunity(), key=KEY, since=since)
    # then only the record made since then matches
    assert found == made.vendor_id != old
    assert adapter.find_existing(an_opportunity(name="Nothing"), key=KEY, since=since) is None


def test_leadway_adapter_list_records_follows_every_page(
    sim: LeadwaySimulator, adapter: LeadwayAdapter
) -> None:
    # given more records than one page holds, and one in another pipeline
    sim.pipelines.append({"id": "otherPipeline0000000", "name": "Other", "stages": []})
    ids = {sim.seed({"name": f"Deal {n}"}) for n in range(230)}
    sim.seed({"name": "Elsewhere", "pipelineId": "otherPipeline0000000"})
    try:
        # when every record is listed
        listed = [record["id"] for record in adapter.list_records()]
    finally:
        sim.pipelines.pop()
    # then each of our pipeline's records comes once, over three pages
    assert sorted(listed) == sorted(ids)
    assert len(sim.requests_to("GET", "/opportunities/search")) == 3


def test_leadway_adapter_delete_removes_and_tolerates_a_missing_record(
    sim: LeadwaySimulator, adapter: LeadwayAdapter
) -> None:
    # given a record
    opp_id = sim.seed({"name": "Gone soon"})
    # when it is deleted twice
    adapter.delete(opp_id)
    adapter.delete(opp_id)
    # then it is gone and the second delete was not an error
    assert opp_id not in sim.records


def test_leadway_adapter_probe_reads_the_pipeline(adapter: LeadwayAdapter) -> None:
    # given / when / then
    assert "has 4 stages" in adapter.probe()


def test_leadway_adapter_probe_names_a_wrong_pipeline(sim: LeadwaySimulator) -> None:
    # given a pipeline id the location does not have
    adapter = adapter_for(sim)
    adapter.pipeline_id = "noSuchPipeline000000"
    # when / then
    with pytest.raises(Permanent) as caught:
        adapter.probe()
    assert caught.value.reason == "config"
    adapter.close()


def test_leadway_adapter_refused_credentials_are_permanent(sim: LeadwaySimulator) -> None:
    # given a wrong token
    adapter = adapter_for(sim, token="wrong-token")
    # when / then
    with pytest.raises(Permanent) as caught:
        adapter.upsert(an_opportunity(), key=KEY, vendor_id=None, extra={})
    assert (caught.value.reason, caught.value.status) == ("auth", 401)
    adapter.close()


def test_leadway_adapter_vendor_5xx_is_outcome_unknown(
    sim: LeadwaySimulator, adapter: LeadwayAdapter
) -> None:
    # given the upsert answers 502
    sim.faults.add("error", status=502, path_contains="/opportunities/upsert")
    # when / then
    with pytest.raises(OutcomeUnknown):
        adapter.upsert(an_opportunity(), key=KEY, vendor_id=None, extra={})
    assert sim.records == {}


def test_leadway_adapter_429_is_rate_limited_with_retry_after(
    sim: LeadwaySimulator, adapter: LeadwayAdapter
) -> None:
    # given the vendor says "too many requests, retry in 7 s"
    sim.faults.add("error", status=429, retry_after=7, path_contains="/opportunities/")
    # when / then
    with pytest.raises(RateLimited) as caught:
        adapter.fetch("anyRecord00000000000")
    assert caught.value.retry_after == 7.0


def test_leadway_adapter_quota_429_waits_for_the_window() -> None:
    # given HighLevel's own quota, shrunk to two requests per ten seconds
    sim = LeadwaySimulator(rate_limit=(2, 10.0)).start()
    adapter = adapter_for(sim)
    try:
        adapter.probe()
        adapter.probe()
        # when a third request comes within the window
        with pytest.raises(RateLimited) as caught:
            adapter.probe()
    finally:
        adapter.close()
        sim.stop()
    # then the wait is the X-RateLimit-Interval-Milliseconds window (no Retry-After there)
    assert caught.value.retry_after == 10.0


def test_leadway_adapter_lost_response_then_find_existing_finds_the_record(
    sim: LeadwaySimulator, adapter: LeadwayAdapter
) -> None:
    # given the create is committed but its answer is lost
    since = datetime.now(UTC) - timedelta(seconds=1)
    opp = an_opportunity(contact=None, company=None)  # a placeholder contact: no dedupe
    sim.faults.add("lost_response", methods=("POST",), path_contains="/opportunities/upsert")
    with pytest.raises(OutcomeUnknown):
        adapter.upsert(opp, key=KEY, vendor_id=None, extra={})
    # when the pipeline looks before creating again, then updates what it found
    found = adapter.find_existing(opp, key=KEY, since=since)
    assert found is not None
    result = adapter.upsert(opp, key=KEY, vendor_id=found, extra={})
    # then there is one record, found by its contact, and the contact was reused
    assert list(sim.records) == [found] == [result.vendor_id]
    assert "contact_id=" in sim.requests_to("GET", "/opportunities/search")[0].query
    assert len(sim.contacts) == 1


def test_leadway_adapter_replaces_a_contact_deleted_in_leadway(
    sim: LeadwaySimulator, adapter: LeadwayAdapter
) -> None:
    # given a record whose kept contact was since deleted in Leadway
    first = adapter.upsert(an_opportunity(), key=KEY, vendor_id=None, extra={})
    del sim.contacts[first.extra["contact"]]
    # when it is updated with the kept links
    second = adapter.upsert(an_opportunity(), key=KEY, vendor_id=first.vendor_id,
                            extra=first.extra)  # fmt: skip
    # then a fresh contact is made and used
    assert second.extra["contact"] != first.extra["contact"]
    assert sim.records[first.vendor_id]["contactId"] == second.extra["contact"]


def test_leadway_adapter_to_canonical_of_a_bad_record_is_invalid_payload(
    adapter: LeadwayAdapter,
) -> None:
    # given / when / then
    with pytest.raises(InvalidPayload) as caught:
        adapter.to_canonical({"id": "x", "monetaryValue": "lots"})
    assert "monetaryValue" in caught.value.fields


def test_leadway_adapter_parse_native_ignores_and_rejects(adapter: LeadwayAdapter) -> None:
    # given / when / then
    assert adapter.parse_native({"type": "ContactCreate", "id": "c"}) is None
    event = adapter.parse_native({"type": "OpportunityDelete", "id": "o1"})
    assert event is not None and event.deleted and event.vendor_id == "o1"
    with pytest.raises(InvalidPayload) as caught:
        adapter.parse_native({"type": "OpportunityUpdate"})
    assert "id" in caught.value.fields
