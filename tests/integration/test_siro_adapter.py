"""The SIRO adapter against the SIRO simulator over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from schemas.opportunity import Contact, Opportunity, Status
from tests.strategies import EXAMPLE_MAPPING
from worker.errors import ConfigError, InvalidPayload, OutcomeUnknown, Permanent, RateLimited
from worker.sandbox.simulators.siro import SiroSimulator
from worker.settings import VendorSettings
from worker.vendors.siro import SiroAdapter

TOKEN = "siro-test-token"
SINCE = datetime(2024, 1, 1, tzinfo=UTC)
DEAL = Opportunity(
    name="Harbour fit-out",
    amount=Decimal("12500.50"),
    status=Status.OPEN,
    close_date=date(2024, 6, 30),
    owner="alice@example.com",
    contact=Contact(name="Bob Stone", email="bob@example.com"),
    company="Harbour Pty",
)


@pytest.fixture(scope="module")
def server() -> Iterator[SiroSimulator]:
    sim = SiroSimulator(token=TOKEN).start()
    yield sim
    sim.stop()


@pytest.fixture
def sim(server: SiroSimulator) -> SiroSimulator:
    # One server per module (stopping one takes half a second); each test starts clean.
    server.reset()
    return server


def make_adapter(sim: SiroSimulator, token: str = TOKEN) -> SiroAdapter:
    settings = VendorSettings(name="siro", base_url=sim.url, credentials={"SIRO_API_TOKEN": token})
    return SiroAdapter(settings, EXAMPLE_MAPPING, timeout=2.0)


@pytest.fixture
def adapter(sim: SiroSimulator) -> Iterator[SiroAdapter]:
    siro = make_adapter(sim)
    yield siro
    siro.close()


def test_adapter_create_then_update_keeps_one_record(
    sim: SiroSimulator, adapter: SiroAdapter
) -> None:
    # given a deal created in SIRO
    created = adapter.upsert(DEAL, key="opp-1", vendor_id=None, extra={})
    # when it is updated with the id and extra SIRO gave back
    won = DEAL.replace(status=Status.WON, amount=Decimal("13000"))
    updated = adapter.upsert(won, key="opp-1", vendor_id=created.vendor_id, extra=created.extra)
    # then there is one record, holding the update, keyed by our key
    assert created.created and not updated.created
    assert updated.vendor_id == created.vendor_id
    assert list(sim.records) == [created.vendor_id]
    record = sim.records[created.vendor_id]
    assert (record["externalId"], record["disposition"], record["amount"]) == (
        "opp-1",
        "WON",
        13000,
    )
    assert len(sim.requests_to("PUT", "/sync/")) == 2


def test_adapter_fetch_returns_the_record_siro_holds(adapter: SiroAdapter) -> None:
    # given a deal written to SIRO
    result = adapter.upsert(DEAL, key="opp-1", vendor_id=None, extra={})
    # when it is fetched and translated
    record = adapter.fetch(result.vendor_id)
    # then it is the projection of what we wrote, and recognisably ours
    assert record is not None
    assert adapter.record_id(record) == result.vendor_id
    assert adapter.key_of(record) == "opp-1"
    opp = adapter.to_canonical(record)
    assert opp.replace(created_at=None, updated_at=None) == adapter.project(DEAL)
    assert opp.created_at is not None and opp.updated_at is not None


def test_adapter_fetch_of_a_missing_id_is_none(adapter: SiroAdapter) -> None:
    # given an id SIRO does not have, when fetched, then None
    assert adapter.fetch("00000000-0000-4000-8000-000000000000") is None


def test_adapter_find_existing_finds_by_our_key(sim: SiroSimulator, adapter: SiroAdapter) -> None:
    # given one of our records among SIRO's own
    sim.seed({"name": "Native"})
    result = adapter.upsert(DEAL, key="opp-7", vendor_id=None, extra={})
    # when looked up by key, then it is found; an unknown key finds nothing
    assert adapter.find_existing(DEAL, key="opp-7", since=SINCE) == result.vendor_id
    assert adapter.find_existing(DEAL, key="opp-8", since=SINCE) is None


def test_adapter_list_records_follows_every_page(sim: SiroSimulator, adapter: SiroAdapter) -> None:
    # given 60 records (three pages of 25)
    ids = {sim.seed({"name": f"Deal {i}"}) for i in range(60)}
    # when every record is listed
    listed = [adapter.record_id(r) for r in adapter.list_records()]
    # then each comes once, over three requests
    assert sorted(listed) == sorted(ids)
    assert len(sim.requests_to("GET", "/v1/integrations/opportunities")) == 3


def test_adapter_updates_a_native_record_under_its_own_external_id(
    sim: SiroSimulator, adapter: SiroAdapter
) -> None:
    # given a record SIRO's own CRM connector made (its externalId is that CRM's id)
    vendor_id = sim.seed({"externalId": "hubspot-42", "name": "Native"})
    # when we update it, knowing only its SIRO id
    result = adapter.upsert(DEAL, key="opp-9", vendor_id=vendor_id, extra={})
    # then that record is updated, not a second one made under our key
    assert (result.vendor_id, result.created) == (vendor_id, False)
    assert list(sim.records) == [vendor_id]
    assert sim.records[vendor_id]["name"] == DEAL.name
    assert result.extra == {"external_id": "hubspot-42"}


def test_adapter_update_of_a_record_deleted_in_siro_makes_it_again(
    sim: SiroSimulator, adapter: SiroAdapter
) -> None:
    # given our record, deleted in SIRO since
    first = adapter.upsert(DEAL, key="opp-1", vendor_id=None, extra={})
    adapter.delete(first.vendor_id)
    adapter.delete(first.vendor_id)  # deleting what is gone is not an error
    # when it is updated
    again = adapter.upsert(DEAL, key="opp-1", vendor_id=first.vendor_id, extra=first.extra)
    # then SIRO holds it again, under a new id, reported as created
    assert again.created and again.vendor_id != first.vendor_id
    assert list(sim.records) == [again.vendor_id]


def test_adapter_auth_failure_is_permanent(sim: SiroSimulator) -> None:
    # given an adapter with a token SIRO does not know
    siro = make_adapter(sim, token="wrong")
    # when it writes, then the failure is permanent, for auth
    with pytest.raises(Permanent) as info:
        siro.upsert(DEAL, key="opp-1", vendor_id=None, extra={})
    assert (info.value.reason, info.value.status) == ("auth", 401)
    siro.close()


def test_adapter_requires_its_token() -> None:
    # given settings without SIRO_API_TOKEN, when the adapter is built, then startup stops
    with pytest.raises(ConfigError, match="SIRO_API_TOKEN"):
        SiroAdapter(VendorSettings(name="siro", base_url="http://127.0.0.1:9"), EXAMPLE_MAPPING)


def test_adapter_5xx_is_outcome_unknown(sim: SiroSimulator, adapter: SiroAdapter) -> None:
    # given SIRO failing once with a 502
    sim.faults.add("error", status=502)
    # when we write, then the outcome is unknown (SIRO may have committed)
    with pytest.raises(OutcomeUnknown) as info:
        adapter.upsert(DEAL, key="opp-1", vendor_id=None, extra={})
    assert info.value.status == 502


def test_adapter_429_is_rate_limited_with_retry_after(
    sim: SiroSimulator, adapter: SiroAdapter
) -> None:
    # given SIRO answering 429 with Retry-After
    sim.faults.add("error", status=429, retry_after=30)
    # when we write, then it is rate limited with the vendor's wait
    with pytest.raises(RateLimited) as info:
        adapter.upsert(DEAL, key="opp-1", vendor_id=None, extra={})
    assert info.value.retry_after == 30


def test_adapter_lost_response_then_find_existing_finds_the_committed_record(
    sim: SiroSimulator, adapter: SiroAdapter
) -> None:
    # given SIRO committing the create but the answer never arriving
    sim.faults.add("lost_response", methods=("PUT",))
    with pytest.raises(OutcomeUnknown):
        adapter.upsert(DEAL, key="opp-1", vendor_id=None, extra={})
    # when we look before creating again
    found = adapter.find_existing(DEAL, key="opp-1", since=SINCE)
    # then the committed record is found, and a retried create is the same record anyway
    assert found is not None and list(sim.records) == [found]
    retried = adapter.upsert(DEAL, key="opp-1", vendor_id=None, extra={})
    assert retried.vendor_id == found and len(sim.records) == 1


def test_adapter_to_canonical_refuses_invalid_records(adapter: SiroAdapter) -> None:
    # given a record whose amount is text, when translated, then InvalidPayload names it
    with pytest.raises(InvalidPayload) as info:
        adapter.to_canonical({"id": "x", "amount": "lots"})
    assert "amount" in info.value.fields


def test_adapter_parse_native_ignores_recording_events(adapter: SiroAdapter) -> None:
    # given SIRO's own recording webhook and a thin automation event
    recording = {"eventType": "integrations.recordingProcessed", "recordingId": "r1"}
    # then the first is not about an opportunity and the second names one to fetch
    assert adapter.parse_native(recording) is None
    event = adapter.parse_native({"id": "abc"})
    assert event is not None and event.vendor_id == "abc" and event.record is None


def test_adapter_probe_reads_once_and_says_what_worked(
    sim: SiroSimulator, adapter: SiroAdapter
) -> None:
    # given two records, when probed
    sim.seed()
    sim.seed()
    sentence = adapter.probe()
    # then one harmless read was made and the answer is a plain sentence
    assert "2 opportunities" in sentence
    assert [r.method for r in sim.log] == ["GET"]


def test_adapter_waits_for_the_rate_limiter_before_each_request(sim: SiroSimulator) -> None:
    # given an adapter with a before_request hook
    calls: list[int] = []
    settings = VendorSettings(name="siro", base_url=sim.url, credentials={"SIRO_API_TOKEN": TOKEN})
    siro = SiroAdapter(
        settings, EXAMPLE_MAPPING, timeout=2.0, before_request=lambda: calls.append(1)
    )
    # when it makes two requests, then the hook ran twice
    siro.upsert(DEAL, key="opp-1", vendor_id=None, extra={})
    siro.fetch("missing")
    assert len(calls) == 2
    siro.close()
