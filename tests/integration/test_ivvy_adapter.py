"""The iVvy adapter against a running iVvy simulator: signed writes, reads, failures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings

from schemas.mapping import Mapping
from schemas.opportunity import SYNCED_FIELDS, Contact, Opportunity, Status
from tests.strategies import EXAMPLE_MAPPING, opportunities
from worker.errors import ConfigError, InvalidPayload, OutcomeUnknown, Permanent, RateLimited
from worker.sandbox.simulators.ivvy import IvvySimulator
from worker.settings import VendorSettings
from worker.vendors.ivvy import IvvyAdapter

CREDENTIALS = {
    "IVVY_API_KEY": "ivvy-test-key",
    "IVVY_API_SECRET": "ivvy-test-secret",
    "IVVY_VENUE_ID": "107",
    "IVVY_TYPE_ID": "18",
    "IVVY_SOURCE_ID": "25",
}
DEAL = Opportunity(
    name="Spring Gala",
    status=Status.OPEN,
    stage="proposal",
    close_date=date(2025, 3, 1),
    description="Ballroom, 200 guests",
    owner="alice@example.com",
    contact=Contact(name="Ada Lovelace", email="ada@example.com", phone="+61400000001"),
    company="Analytical Engines",
)


@pytest.fixture(scope="module")
def started() -> Iterator[IvvySimulator]:
    simulator = IvvySimulator().start()
    yield simulator
    simulator.stop()


@pytest.fixture
def sim(started: IvvySimulator) -> IvvySimulator:
    started.reset()
    return started


def make_adapter(
    sim: IvvySimulator, mapping: Mapping = EXAMPLE_MAPPING, **changes: str
) -> IvvyAdapter:
    settings = VendorSettings(name="ivvy", base_url=sim.url, credentials={**CREDENTIALS, **changes})
    return IvvyAdapter(settings, mapping, timeout=2.0)


@pytest.fixture
def adapter(sim: IvvySimulator) -> Iterator[IvvyAdapter]:
    client = make_adapter(sim)
    yield client
    client.close()


def writes(sim: IvvySimulator) -> int:
    return len(sim.requests_to("POST", "/api/1.0/venue"))


def test_adapter_creates_then_updates_the_same_record(
    sim: IvvySimulator, adapter: IvvyAdapter
) -> None:
    # given a new deal / when upserted, then upserted again as won
    created = adapter.upsert(DEAL, key="k-1", vendor_id=None, extra={})
    updated = adapter.upsert(
        DEAL.replace(status=Status.WON, stage="won", owner=None),
        key="k-1",
        vendor_id=created.vendor_id,
        extra={},
    )
    # then one record, created once, holding the new values and our key
    assert created.created and not updated.created
    assert updated.vendor_id == created.vendor_id and len(sim.records) == 1
    back = adapter.to_canonical(sim.records[created.vendor_id])
    assert (back.stage, back.status, back.owner) == ("won", Status.WON, None)
    assert adapter.key_of(sim.records[created.vendor_id]) == "k-1"


def test_adapter_fetch_reads_what_it_wrote(adapter: IvvyAdapter) -> None:
    # given a created deal / when fetched
    result = adapter.upsert(DEAL, key="k-2", vendor_id=None, extra={})
    record = adapter.fetch(result.vendor_id)
    # then it reads back as the projection
    assert record is not None
    back = adapter.to_canonical(record)
    assert {f: getattr(back, f) for f in SYNCED_FIELDS} == {
        f: getattr(adapter.project(DEAL), f) for f in SYNCED_FIELDS
    }
    assert back.created_at is not None and back.updated_at is not None


@pytest.mark.parametrize("vendor_id", ["4242", "not-a-number"])
def test_adapter_fetch_of_a_missing_id_is_none(adapter: IvvyAdapter, vendor_id: str) -> None:
    assert adapter.fetch(vendor_id) is None


def test_adapter_update_of_a_vanished_record_is_not_found(adapter: IvvyAdapter) -> None:
    with pytest.raises(Permanent) as caught:
        adapter.upsert(DEAL, key="k", vendor_id="4242", extra={})
    assert caught.value.reason == "not_found"


def test_adapter_find_existing_finds_our_key_among_namesakes(
    sim: IvvySimulator, adapter: IvvyAdapter
) -> None:
    # given two records of the same name, one of them ours
    since = datetime.now(UTC)
    sim.seed({"name": DEAL.name})
    ours = adapter.upsert(DEAL, key="k-3", vendor_id=None, extra={}).vendor_id
    # when looked for by key / then ours; another key finds nothing
    assert adapter.find_existing(DEAL, key="k-3", since=since) == ours
    assert adapter.find_existing(DEAL, key="k-other", since=since) is None


def test_adapter_find_existing_finds_a_renamed_record_by_creation_time(
    sim: IvvySimulator, adapter: IvvyAdapter
) -> None:
    # given our record, renamed in iVvy since
    since = datetime.now(UTC)
    ours = adapter.upsert(DEAL, key="k-4", vendor_id=None, extra={}).vendor_id
    sim.edit(ours, name="Spring Gala (moved)")
    # then it is still found by our key
    assert adapter.find_existing(DEAL, key="k-4", since=since) == ours


def test_adapter_list_records_follows_every_page(sim: IvvySimulator, adapter: IvvyAdapter) -> None:
    # given 230 records (three pages of 100)
    for n in range(230):
        sim.seed({"name": f"Deal {n}"})
    # when listed / then all of them, in three requests
    records = list(adapter.list_records())
    assert len(records) == 230 and len({r["id"] for r in records}) == 230
    assert len(sim.requests_to("POST", "/api/1.0/crm")) == 3


def test_adapter_refused_credentials_are_permanent_auth(sim: IvvySimulator) -> None:
    wrong = make_adapter(sim, IVVY_API_SECRET="not-the-secret")
    with pytest.raises(Permanent) as caught:
        wrong.upsert(DEAL, key="k", vendor_id=None, extra={})
    assert caught.value.reason == "auth" and caught.value.status == 401
    assert sim.records == {}
    wrong.close()


def test_adapter_5xx_is_outcome_unknown(sim: IvvySimulator, adapter: IvvyAdapter) -> None:
    sim.faults.add("error", status=502, path_contains="addOrUpdateOpportunity")
    with pytest.raises(OutcomeUnknown):
        adapter.upsert(DEAL, key="k", vendor_id=None, extra={})


def test_adapter_429_is_rate_limited_with_retry_after(
    sim: IvvySimulator, adapter: IvvyAdapter
) -> None:
    sim.faults.add("error", status=429, retry_after=7, path_contains="getOpportunityList")
    with pytest.raises(RateLimited) as caught:
        adapter.fetch("1")
    assert caught.value.retry_after == 7.0


def test_adapter_lost_response_then_find_existing_finds_the_commit(
    sim: IvvySimulator, adapter: IvvyAdapter
) -> None:
    # given iVvy commits the create but the answer is lost
    since = datetime.now(UTC)
    sim.faults.add("lost_response", path_contains="addOrUpdateOpportunity")
    with pytest.raises(OutcomeUnknown):
        adapter.upsert(DEAL, key="k-5", vendor_id=None, extra={})
    # when we look before creating again / then the committed record is found
    found = adapter.find_existing(DEAL, key="k-5", since=since)
    assert found is not None and list(sim.records) == [found]


def test_adapter_refused_body_names_the_field(sim: IvvySimulator) -> None:
    # given a type id iVvy does not have
    odd = make_adapter(sim, IVVY_TYPE_ID="999")
    # when creating in a stage without its own type / then Permanent naming typeId
    with pytest.raises(Permanent) as caught:
        odd.upsert(DEAL, key="k", vendor_id=None, extra={})
    assert caught.value.field == "typeId" and caught.value.status == 400
    odd.close()


def test_adapter_without_mapping_writes_stages_by_name_once_listed(sim: IvvySimulator) -> None:
    # given no mapping file
    plain = make_adapter(sim, Mapping())
    # when a won and an abandoned deal are created
    won = plain.upsert(Opportunity(name="W", status=Status.WON), key="a", vendor_id=None, extra={})
    lost = plain.upsert(
        Opportunity(name="L", status=Status.ABANDONED), key="b", vendor_id=None, extra={}
    )
    # then they land in "Won" and "Lost", read back so, and the stage list was read once
    assert (sim.records[won.vendor_id]["stageId"], sim.records[lost.vendor_id]["stageId"]) == (
        71,
        72,
    )
    assert plain.to_canonical(sim.records[lost.vendor_id]).status is Status.LOST
    assert len(sim.requests_to("POST", "/api/1.0/crm")) == 1
    plain.close()


def test_adapter_open_without_mapping_uses_ivvy_stage_id(sim: IvvySimulator) -> None:
    plain = make_adapter(sim, Mapping(), IVVY_STAGE_ID="70")
    result = plain.upsert(
        Opportunity(name="O", status=Status.OPEN), key="c", vendor_id=None, extra={}
    )
    assert sim.records[result.vendor_id]["stageId"] == 70
    plain.close()


def test_adapter_refuses_a_status_the_tenant_cannot_hold() -> None:
    # given a tenant with no stage named won, and no mapping
    sim = IvvySimulator(stages=({"id": 1, "name": "Enquiry"},)).start()
    plain = make_adapter(sim, Mapping())
    # when a won deal is written / then a permanent, explained refusal
    with pytest.raises(Permanent) as caught:
        plain.upsert(Opportunity(name="W", status=Status.WON), key="k", vendor_id=None, extra={})
    assert caught.value.reason == "unmapped_stage"
    plain.close()
    sim.stop()


def test_adapter_delete_is_unsupported(adapter: IvvyAdapter) -> None:
    with pytest.raises(Permanent) as caught:
        adapter.delete("1")
    assert caught.value.reason == "unsupported"


def test_adapter_parse_native_unwraps_an_sns_notification(
    sim: IvvySimulator, adapter: IvvyAdapter
) -> None:
    # given the SNS notification iVvy sends for our own API write
    vendor_id = adapter.upsert(DEAL, key="k-6", vendor_id=None, extra={}).vendor_id
    record = sim.records[vendor_id]
    inner = sim.inner_message("OpportunityAdded", vendor_id, record, None, (1, "ivvy-test-key"))
    # when parsed (as the SNS body, or as the inner message)
    for payload in (sim.sns_message(inner), inner):
        event = adapter.parse_native(json.loads(json.dumps(payload)))
        # then the record, authored by our key (an echo)
        assert event is not None and event.vendor_id == vendor_id
        assert event.record == record and event.api_author == adapter.api_key


def test_adapter_parse_native_ignores_other_venues_and_refuses_garbage(
    sim: IvvySimulator, adapter: IvvyAdapter
) -> None:
    elsewhere = sim.inner_message("OpportunityDeleted", "9", None, None, (0, ""))
    elsewhere["Body"] = json.dumps({"venueId": 555, "opportunityId": 9})
    assert adapter.parse_native(elsewhere) is None
    with pytest.raises(InvalidPayload) as caught:
        adapter.parse_native({**elsewhere, "Body": "{not json"})
    assert "Body" in caught.value.fields
    with pytest.raises(InvalidPayload) as caught:
        adapter.parse_native({"Type": "Notification", "Message": "not json"})
    assert "Message" in caught.value.fields


def test_adapter_to_canonical_raises_invalid_payload(adapter: IvvyAdapter) -> None:
    with pytest.raises(InvalidPayload) as caught:
        adapter.to_canonical({"id": "x", "name": "N"})
    assert "id" in caught.value.fields


def test_adapter_probe_says_what_worked(sim: IvvySimulator, adapter: IvvyAdapter) -> None:
    sim.seed({"name": "One"})
    assert "1 opportunities" in adapter.probe()


def test_adapter_needs_its_settings(sim: IvvySimulator) -> None:
    with pytest.raises(ConfigError, match="IVVY_VENUE_ID"):
        make_adapter(sim, IVVY_VENUE_ID="")
    with pytest.raises(ConfigError, match="IVVY_TYPE_ID"):
        make_adapter(sim, IVVY_TYPE_ID="conference")


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(opp=opportunities())
def test_adapter_round_trip_over_http_reads_back_the_projection(
    started: IvvySimulator, opp: Opportunity
) -> None:
    # given any opportunity written through the adapter
    client = make_adapter(started)
    vendor_id = client.upsert(opp, key="prop", vendor_id=None, extra={}).vendor_id
    # when fetched / then the projection comes back
    record = client.fetch(vendor_id)
    assert record is not None
    back, shown = client.to_canonical(record), client.project(opp)
    assert {f: getattr(back, f) for f in SYNCED_FIELDS} == {
        f: getattr(shown, f) for f in SYNCED_FIELDS
    }
    assert back.updated_at is not None and back.updated_at <= datetime.now(UTC) + timedelta(
        seconds=2
    )
    client.close()
