"""The Salescaling adapter against the simulator over real HTTP on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings

from schemas.mapping import Mapping
from schemas.opportunity import SYNCED_FIELDS, Opportunity, Status
from tests.strategies import EXAMPLE_MAPPING, opportunities
from worker.errors import ConfigError, InvalidPayload, OutcomeUnknown, Permanent, RateLimited
from worker.sandbox.simulators.salescaling import SalescalingSimulator
from worker.settings import VendorSettings
from worker.vendors.salescaling import SalescalingAdapter

KEY = "salescaling-test-key"
DEAL = Opportunity(
    name="Acme renewal",
    amount=Decimal("1200.50"),
    status=Status.OPEN,
    close_date=date(2024, 3, 10),
    description="Three seats",
    probability=Decimal("40"),
)


def make_adapter(
    sim: SalescalingSimulator,
    *,
    key: str = KEY,
    timeout: float = 2.0,
    mapping: Mapping = EXAMPLE_MAPPING,
    **kwargs: object,
) -> SalescalingAdapter:
    vendor = VendorSettings(
        name="salescaling", base_url=sim.url, credentials={"SALESCALING_API_KEY": key}
    )
    return SalescalingAdapter(vendor, mapping, timeout=timeout, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server() -> Iterator[SalescalingSimulator]:
    sim = SalescalingSimulator(api_key=KEY).start()
    yield sim
    sim.stop()


@pytest.fixture
def sim(server: SalescalingSimulator) -> SalescalingSimulator:
    server.reset()
    return server


@pytest.fixture
def adapter(sim: SalescalingSimulator) -> Iterator[SalescalingAdapter]:
    client = make_adapter(sim)
    yield client
    client.close()


def synced(opp: Opportunity) -> dict[str, object]:
    return {name: getattr(opp, name) for name in SYNCED_FIELDS}


# -- writes --------------------------------------------------------------------------------


def test_adapter_create_then_update_keeps_one_record(
    sim: SalescalingSimulator, adapter: SalescalingAdapter
) -> None:
    # given a new opportunity, created
    created = adapter.upsert(DEAL, key="k1", vendor_id=None, extra={})
    # when it changes and is written again with its id
    changed = DEAL.replace(status=Status.WON, amount=Decimal("2000"), probability=Decimal("100"))
    updated = adapter.upsert(changed, key="k1", vendor_id=created.vendor_id, extra={})
    # then one record holds the new values: one POST, one PUT
    assert created.created and not updated.created
    assert updated.vendor_id == created.vendor_id and list(sim.records) == [created.vendor_id]
    assert len(sim.requests_to("POST", "/opportunities")) == 1
    assert len(sim.requests_to("PUT", "/opportunities/")) == 1
    record = adapter.fetch(created.vendor_id)
    assert record is not None
    assert adapter.to_canonical(record).replace(created_at=None, updated_at=None) == (
        adapter.project(changed)
    )


def test_adapter_update_clears_fields_on_a_merging_put() -> None:
    # given a vendor whose PUT merges, and a record with a description and probability
    merging = SalescalingSimulator(put_replaces=False).start()
    client = make_adapter(merging)
    try:
        vendor_id = client.upsert(DEAL, key="k", vendor_id=None, extra={}).vendor_id
        # when the opportunity loses both
        client.upsert(
            DEAL.replace(description=None, probability=None), key="k", vendor_id=vendor_id, extra={}
        )
        # then they are cleared, because the update sent them as null
        assert merging.records[vendor_id]["description"] is None
        assert merging.records[vendor_id]["closeProbability"] is None
    finally:
        client.close()
        merging.stop()


def test_adapter_update_of_a_deleted_record_is_permanent_404(
    adapter: SalescalingAdapter,
) -> None:
    # given an id the vendor no longer has
    # when it is updated
    with pytest.raises(Permanent) as caught:
        adapter.upsert(DEAL, key="k", vendor_id="5516cd47-2bd0-4f4f-adc2-22524e54ba4d", extra={})
    # then the failure is permanent with the vendor's 404
    assert caught.value.status == 404


def test_adapter_refused_body_names_the_field(adapter: SalescalingAdapter) -> None:
    # given an opportunity without a name (Salescaling requires one)
    # when it is created
    with pytest.raises(Permanent) as caught:
        adapter.upsert(DEAL.replace(name=None), key="k", vendor_id=None, extra={})
    # then the 400 is permanent and names the field
    assert caught.value.status == 400 and caught.value.field == "name"


def test_adapter_delete_removes_and_tolerates_a_missing_record(
    sim: SalescalingSimulator, adapter: SalescalingAdapter
) -> None:
    # given a record
    vendor_id = sim.seed({"name": "Old deal"})
    # when it is deleted twice
    adapter.delete(vendor_id)
    adapter.delete(vendor_id)
    # then it is gone and the second delete did not fail
    assert vendor_id not in sim.records


# -- reads ---------------------------------------------------------------------------------


def test_adapter_fetch_returns_the_record_or_none(
    sim: SalescalingSimulator, adapter: SalescalingAdapter
) -> None:
    # given one seeded record
    vendor_id = sim.seed({"name": "Seeded", "status": "lost", "closeProbability": 0})
    # when it and a missing id are fetched
    # then the record comes back as stored, and the missing one is None
    assert adapter.fetch(vendor_id) == sim.records[vendor_id]
    assert adapter.fetch("00000000-0000-4000-8000-000000000000") is None
    assert adapter.to_canonical(sim.records[vendor_id]).status is Status.LOST


def test_adapter_list_records_follows_every_page(
    sim: SalescalingSimulator, adapter: SalescalingAdapter
) -> None:
    # given 230 records (three pages of 100)
    ids = {sim.seed({"name": f"Deal {i}"}) for i in range(230)}
    # when every record is listed
    listed = [record["id"] for record in adapter.list_records()]
    # then each comes once, in three page reads
    assert len(listed) == 230 and set(listed) == ids
    assert len(sim.requests_to("GET", "/api/v1/opportunities")) == 3


def test_adapter_find_existing_matches_exact_name_and_creation_time(
    sim: SalescalingSimulator, adapter: SalescalingAdapter
) -> None:
    # given an older record with our name, a newer one with a longer name, and two of ours
    sim.seed({"name": DEAL.name, "createdAt": "2020-01-01T00:00:00.000Z"})
    since = datetime.now(UTC) - timedelta(seconds=1)
    sim.seed({"name": f"{DEAL.name} (copy)"})
    first = adapter.upsert(DEAL, key="k", vendor_id=None, extra={}).vendor_id
    newest = adapter.upsert(DEAL, key="k", vendor_id=None, extra={}).vendor_id
    # when we look for ours since just before
    found = adapter.find_existing(DEAL, key="k", since=since)
    # then the newest exact match is found; nothing is found from later, or without a name
    assert found == newest != first
    assert (
        adapter.find_existing(DEAL, key="k", since=datetime.now(UTC) + timedelta(hours=1)) is None
    )
    assert adapter.find_existing(DEAL.replace(name=None), key="k", since=since) is None


def test_adapter_probe_says_what_worked(adapter: SalescalingAdapter) -> None:
    # given a reachable vendor
    # when probed
    sentence = adapter.probe()
    # then a plain sentence names the vendor and does not leak the key
    assert sentence.startswith("Salescaling") and KEY not in sentence


# -- failures ------------------------------------------------------------------------------


def test_adapter_wrong_key_is_permanent_auth(sim: SalescalingSimulator) -> None:
    # given an adapter with the wrong API key
    client = make_adapter(sim, key="not-the-key")
    try:
        # when it writes
        with pytest.raises(Permanent) as caught:
            client.upsert(DEAL, key="k", vendor_id=None, extra={})
        # then the failure is permanent with reason auth, and nothing was created
        assert caught.value.reason == "auth" and caught.value.status == 401
        assert sim.records == {}
    finally:
        client.close()


def test_adapter_needs_the_api_key() -> None:
    # given settings without SALESCALING_API_KEY
    vendor = VendorSettings(name="salescaling", base_url="http://127.0.0.1:9")
    # when / then building the adapter names the variable
    with pytest.raises(ConfigError, match="SALESCALING_API_KEY"):
        SalescalingAdapter(vendor, EXAMPLE_MAPPING)


def test_adapter_5xx_is_outcome_unknown(
    sim: SalescalingSimulator, adapter: SalescalingAdapter
) -> None:
    # given a vendor answering 502 to creates
    sim.faults.add("error", status=502, methods=("POST",))
    # when / then the create's outcome is unknown
    with pytest.raises(OutcomeUnknown) as caught:
        adapter.upsert(DEAL, key="k", vendor_id=None, extra={})
    assert caught.value.status == 502


def test_adapter_429_is_rate_limited_with_retry_after(
    sim: SalescalingSimulator, adapter: SalescalingAdapter
) -> None:
    # given a vendor asking us to wait 7 seconds
    sim.faults.add("error", status=429, retry_after=7, methods=("GET",))
    # when / then
    with pytest.raises(RateLimited) as caught:
        adapter.fetch("00000000-0000-4000-8000-000000000000")
    assert caught.value.retry_after == 7.0


def test_adapter_lost_response_then_find_existing_finds_the_record(
    sim: SalescalingSimulator, adapter: SalescalingAdapter
) -> None:
    # given a create whose answer is lost after the vendor committed it
    since = datetime.now(UTC) - timedelta(seconds=1)
    sim.faults.add("lost_response", methods=("POST",))
    with pytest.raises(OutcomeUnknown):
        adapter.upsert(DEAL, key="k", vendor_id=None, extra={})
    # when we look before creating again
    found = adapter.find_existing(DEAL, key="k", since=since)
    # then the committed record is found
    assert found is not None and list(sim.records) == [found]


def test_adapter_read_timeout_is_outcome_unknown(sim: SalescalingSimulator) -> None:
    # given a vendor slower than our timeout
    client = make_adapter(sim, timeout=0.3)
    sim.faults.add("timeout", delay=0.8, methods=("POST",))
    try:
        # when / then the create's outcome is unknown
        with pytest.raises(OutcomeUnknown):
            client.upsert(DEAL, key="k", vendor_id=None, extra={})
    finally:
        client.close()
        # the vendor still commits after its delay: let it finish before the next test
        deadline = time.monotonic() + 3.0
        while not sim.requests_to("POST", "/opportunities") and time.monotonic() < deadline:
            time.sleep(0.02)


def test_adapter_calls_before_request_for_every_request(sim: SalescalingSimulator) -> None:
    # given a rate limiter hook that counts
    calls: list[int] = []
    client = make_adapter(sim, before_request=lambda: calls.append(1))
    try:
        # when a create and a fetch are made
        vendor_id = client.upsert(DEAL, key="k", vendor_id=None, extra={}).vendor_id
        client.fetch(vendor_id)
        # then the hook ran twice
        assert len(calls) == 2
    finally:
        client.close()


# -- translation through the adapter ---------------------------------------------------------


def test_adapter_to_canonical_refuses_bad_records(adapter: SalescalingAdapter) -> None:
    # given a record with a string amount
    # when / then InvalidPayload names the field
    with pytest.raises(InvalidPayload) as caught:
        adapter.to_canonical({"id": "x", "amount": "lots"})
    assert "amount" in caught.value.fields


def test_adapter_parse_native_reads_automation_payloads(adapter: SalescalingAdapter) -> None:
    # given a thin delivery, a meeting event and a broken record
    # when / then the id is read, the meeting ignored and the broken one refused
    event = adapter.parse_native({"id": "5516cd47-2bd0-4f4f-adc2-22524e54ba4d"})
    assert event is not None and event.record is None
    assert adapter.parse_native({"meetingId": "m", "status": "meeting_created"}) is None
    with pytest.raises(InvalidPayload):
        adapter.parse_native({"id": "x", "closeProbability": 300})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(opp=opportunities())
def test_adapter_round_trip_over_http_reads_back_the_projection(
    server: SalescalingSimulator, opp: Opportunity
) -> None:
    # given any canonical opportunity written to the vendor
    client = make_adapter(server)
    try:
        vendor_id = client.upsert(opp, key="k", vendor_id=None, extra={}).vendor_id
        # when it is fetched back
        record = client.fetch(vendor_id)
        # then it reads as the projection on the synced fields
        assert record is not None
        assert synced(client.to_canonical(record)) == synced(client.project(opp))
    finally:
        client.close()
