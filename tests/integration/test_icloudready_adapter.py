"""The iCloudReady adapter against a running simulator: sign-in, writes, reads, failures."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from schemas.mapping import Mapping
from schemas.opportunity import Opportunity, Status
from tests.strategies import EXAMPLE_MAPPING
from worker.errors import ConfigError, InvalidPayload, OutcomeUnknown, Permanent, RateLimited
from worker.sandbox.simulators.icloudready import IcloudreadySimulator
from worker.settings import VendorSettings
from worker.vendors.icloudready import IcloudreadyAdapter

EMAIL, PASSWORD = "ops@example.com", "icr-test-password"
OPPS = "/api/v2/opportunities"
DEAL = Opportunity(
    name="Marina flat 12B",
    amount=Decimal("250000.00"),
    status=Status.OPEN,
    stage="proposal",
    close_date=date(2025, 3, 31),
    description="Two-bedroom, sea view",
    probability=Decimal("40"),
    owner="alice@example.com",
)
AdapterFactory = Callable[..., IcloudreadyAdapter]


@pytest.fixture(scope="module")
def server() -> Iterator[IcloudreadySimulator]:
    sim = IcloudreadySimulator().start()
    yield sim
    sim.stop()


@pytest.fixture
def sim(server: IcloudreadySimulator) -> IcloudreadySimulator:
    """The module's simulator, emptied (stopping a server costs half a second)."""
    server.reset()
    return server


@pytest.fixture
def make_adapter() -> Iterator[AdapterFactory]:
    """Build adapters against a simulator; all are closed after the test."""
    made: list[IcloudreadyAdapter] = []

    def make(
        sim: IcloudreadySimulator,
        *,
        password: str = PASSWORD,
        mapping: Mapping = EXAMPLE_MAPPING,
        before_request: Callable[[], None] | None = None,
        **extra_env: str,
    ) -> IcloudreadyAdapter:
        settings = VendorSettings(
            name="icloudready",
            base_url=sim.url,
            credentials={"ICLOUDREADY_EMAIL": EMAIL, "ICLOUDREADY_PASSWORD": password, **extra_env},
        )
        adapter = IcloudreadyAdapter(settings, mapping, timeout=2.0, before_request=before_request)
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        adapter.close()


@pytest.fixture
def adapter(sim: IcloudreadySimulator, make_adapter: AdapterFactory) -> IcloudreadyAdapter:
    return make_adapter(sim)


def _signins(sim: IcloudreadySimulator) -> int:
    return len(sim.requests_to("POST", "/api/v2/signin"))


# -- writes and reads ------------------------------------------------------------------------
def test_upsert_creates_then_updates_the_same_record(
    sim: IcloudreadySimulator, adapter: IcloudreadyAdapter
) -> None:
    # given a new deal written once
    created = adapter.upsert(DEAL, key="k1", vendor_id=None, extra={})
    # when it is written again with its id, now won and without a description
    later = DEAL.replace(status=Status.WON, stage="won", description=None)
    updated = adapter.upsert(later, key="k1", vendor_id=created.vendor_id, extra={})
    # then one record exists, patched with every synced field, and it reads back as projected
    assert (created.created, updated.created) == (True, False)
    assert updated.vendor_id == created.vendor_id
    assert list(sim.records) == [created.vendor_id]
    assert len(sim.requests_to("PATCH", OPPS)) == 1
    record = sim.records[created.vendor_id]
    assert (record["status"], record["stage"], record["opportunityDescription"]) == (
        "won",
        "closed-won",
        None,
    )
    back = adapter.to_canonical(record)
    assert back.replace(created_at=None, updated_at=None) == adapter.project(later)


def test_create_sends_the_customer_from_the_mapping_or_the_environment(
    sim: IcloudreadySimulator, make_adapter: AdapterFactory
) -> None:
    # given one adapter with the example mapping's customer and one with only the variable
    from_mapping = make_adapter(sim)
    from_env = make_adapter(
        sim, mapping=Mapping(), ICLOUDREADY_CUSTOMER_ID="aaaabbbbccccddddeeeeffff"
    )
    # when each creates a deal
    first = from_mapping.upsert(DEAL, key="k", vendor_id=None, extra={})
    second = from_env.upsert(DEAL, key="k", vendor_id=None, extra={})
    # then each record names its customer
    assert sim.records[first.vendor_id]["customer"] == "609a8f85c2834915d0a5a5e1"
    assert sim.records[second.vendor_id]["customer"] == "aaaabbbbccccddddeeeeffff"


@pytest.mark.parametrize("token_key", ["token", "accessToken", "access_token"])
@pytest.mark.parametrize("wrap_data", [True, False])
def test_adapter_reads_every_answer_shape(
    make_adapter: AdapterFactory, token_key: str, wrap_data: bool
) -> None:
    # given a simulator with one of the tolerated token keys and envelopes
    sim = IcloudreadySimulator(token_key=token_key, wrap_data=wrap_data).start()
    try:
        adapter = make_adapter(sim)
        # when a deal is created, fetched and listed
        result = adapter.upsert(DEAL, key="k", vendor_id=None, extra={})
        fetched = adapter.fetch(result.vendor_id)
        listed = list(adapter.list_records())
        # then the id, the record and the list are all read
        assert fetched == sim.records[result.vendor_id]
        assert [adapter.record_id(r) for r in listed] == [result.vendor_id]
    finally:
        sim.stop()


def test_fetch_returns_the_record_or_none_when_missing(
    sim: IcloudreadySimulator, adapter: IcloudreadyAdapter
) -> None:
    # given one seeded record
    vendor_id = sim.seed({"opportunityInformation": {"name": "Seeded"}, "revenue": 5})
    # when it and a well-formed missing id are fetched
    found = adapter.fetch(vendor_id)
    missing = adapter.fetch("0123456789abcdef01234567")
    # then the record comes back as stored, and the missing one as None
    assert found == sim.records[vendor_id]
    assert missing is None


def test_delete_uses_the_documented_path_and_tolerates_gone(
    sim: IcloudreadySimulator, adapter: IcloudreadyAdapter
) -> None:
    # given a record
    vendor_id = sim.seed({"opportunityInformation": {"name": "Doomed"}})
    # when it is deleted twice
    adapter.delete(vendor_id)
    adapter.delete(vendor_id)
    # then it is gone and the second delete did not fail
    assert vendor_id not in sim.records
    assert adapter.fetch(vendor_id) is None
    assert len(sim.requests_to("DELETE", f"{OPPS}/deleted/")) == 2


def test_list_records_follows_every_page(
    sim: IcloudreadySimulator, adapter: IcloudreadyAdapter
) -> None:
    # given 250 records (three pages of 100)
    ids = {sim.seed({"opportunityInformation": {"name": f"Deal {n}"}}) for n in range(250)}
    # when every record is listed
    listed = [adapter.record_id(r) for r in adapter.list_records()]
    # then each comes exactly once, over three page reads
    assert sorted(listed) == sorted(ids)
    pages = sim.requests_to("GET", OPPS)
    assert [p.query.split("page=")[1].split("&")[0] for p in pages] == ["1", "2", "3"]


def test_find_existing_matches_exact_name_created_since(
    sim: IcloudreadySimulator, adapter: IcloudreadyAdapter
) -> None:
    # given an old record with the name, a new one with a longer name, and the new one we made
    sim.seed(
        {"opportunityInformation": {"name": DEAL.name}, "createdAt": "2020-01-01T00:00:00.000Z"}
    )
    since = datetime.now(UTC)
    sim.seed({"opportunityInformation": {"name": f"{DEAL.name} (copy)"}})
    ours = adapter.upsert(DEAL, key="k", vendor_id=None, extra={})
    # when it is looked up
    found = adapter.find_existing(DEAL, key="k", since=since)
    # then only ours matches; nothing matches a later window or another name
    assert found == ours.vendor_id
    assert adapter.find_existing(DEAL, key="k", since=since + timedelta(hours=1)) is None
    assert adapter.find_existing(DEAL.replace(name="Nobody"), key="k", since=since) is None


def test_probe_reads_one_page(sim: IcloudreadySimulator, adapter: IcloudreadyAdapter) -> None:
    # given an empty tenant
    # when the adapter is probed
    sentence = adapter.probe()
    # then it says what worked, in a sentence
    assert sentence.startswith("Signed in to iCloudReady") and sentence.endswith(".")
    assert len(sim.requests_to("GET", OPPS)) == 1


# -- authentication --------------------------------------------------------------------------
def test_expired_token_signs_in_again_once_and_repeats(
    sim: IcloudreadySimulator, adapter: IcloudreadyAdapter
) -> None:
    # given an adapter holding a token
    created = adapter.upsert(DEAL, key="k", vendor_id=None, extra={})
    assert _signins(sim) == 1
    # when the vendor expires its tokens and the adapter updates the deal
    sim.expire_tokens()
    adapter.upsert(DEAL.replace(amount=Decimal(1)), key="k", vendor_id=created.vendor_id, extra={})
    # then it signed in once more, repeated the PATCH, and the change landed
    assert _signins(sim) == 2
    assert [r.status for r in sim.requests_to("PATCH", OPPS)] == [401, 200]
    assert sim.records[created.vendor_id]["revenue"] == 1


def test_token_refused_after_a_fresh_signin_is_an_auth_failure(
    sim: IcloudreadySimulator, adapter: IcloudreadyAdapter
) -> None:
    # given the vendor refusing the next two reads with 401
    sim.faults.add("error", status=401, times=2, path_contains=OPPS)
    # when the adapter reads
    with pytest.raises(Permanent) as caught:
        adapter.fetch("0123456789abcdef01234567")
    # then it signed in again only once before giving up
    assert caught.value.reason == "auth"
    assert _signins(sim) == 2


def test_wrong_password_is_a_permanent_auth_failure(
    sim: IcloudreadySimulator, make_adapter: AdapterFactory
) -> None:
    # given an adapter with the wrong password
    adapter = make_adapter(sim, password="not-it")
    # when it creates a deal
    with pytest.raises(Permanent) as caught:
        adapter.upsert(DEAL, key="k", vendor_id=None, extra={})
    # then the failure is Permanent(reason="auth") and nothing was created
    assert (caught.value.reason, caught.value.status) == ("auth", 401)
    assert sim.records == {}
    assert PASSWORD not in str(caught.value) and "not-it" not in str(caught.value)


def test_signin_without_a_token_is_a_permanent_auth_failure(make_adapter: AdapterFactory) -> None:
    # given a vendor answering the sign-in with a key the adapter does not know
    sim = IcloudreadySimulator(token_key="jwt").start()
    try:
        adapter = make_adapter(sim)
        # when the adapter reads
        with pytest.raises(Permanent) as caught:
            adapter.probe()
        # then it is an auth failure
        assert caught.value.reason == "auth"
    finally:
        sim.stop()


def test_missing_credentials_stop_construction(sim: IcloudreadySimulator) -> None:
    # given settings without a password
    settings = VendorSettings("icloudready", sim.url, credentials={"ICLOUDREADY_EMAIL": EMAIL})
    # when / then the adapter names the variable
    with pytest.raises(ConfigError, match="ICLOUDREADY_PASSWORD"):
        IcloudreadyAdapter(settings, EXAMPLE_MAPPING)


def test_threads_share_one_signin(sim: IcloudreadySimulator, adapter: IcloudreadyAdapter) -> None:
    # given a fresh adapter and a little vendor latency
    sim.latency = 0.05
    try:
        # when eight threads read at once
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda _: adapter.probe(), range(8)))
    finally:
        sim.latency = 0.0
    # then all succeed on one sign-in
    assert len(results) == 8
    assert _signins(sim) == 1


def test_signin_lost_connection_leaves_no_lock_behind(
    sim: IcloudreadySimulator, adapter: IcloudreadyAdapter
) -> None:
    # given the first sign-in loses its connection
    sim.faults.add("reset", path_contains="/api/v2/signin")
    with pytest.raises(OutcomeUnknown):
        adapter.probe()
    # when the adapter is used again (from another thread, to catch a held lock)
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(adapter.probe()))
    worker.start()
    worker.join(timeout=5)
    # then it signs in and works
    assert len(outcome) == 1


def test_every_request_passes_the_rate_limiter(
    sim: IcloudreadySimulator, make_adapter: AdapterFactory
) -> None:
    # given a counting rate limiter
    calls: list[float] = []
    adapter = make_adapter(sim, before_request=lambda: calls.append(1.0))
    # when the adapter reads, the token expires, and it reads again
    adapter.probe()
    sim.expire_tokens()
    adapter.probe()
    # then every request the vendor saw (sign-ins and repeats included) was paced
    assert len(calls) == len(sim.log) == 5


# -- failures --------------------------------------------------------------------------------
def test_server_error_is_outcome_unknown(
    sim: IcloudreadySimulator, adapter: IcloudreadyAdapter
) -> None:
    # given the vendor failing the next create with 500
    sim.faults.add("error", status=500, methods=("POST",), path_contains=OPPS)
    # when a deal is created
    with pytest.raises(OutcomeUnknown) as caught:
        adapter.upsert(DEAL, key="k", vendor_id=None, extra={})
    # then the outcome is unknown
    assert caught.value.status == 500


def test_rate_limit_is_rate_limited_with_retry_after(
    sim: IcloudreadySimulator, adapter: IcloudreadyAdapter
) -> None:
    # given the vendor answering 429 with Retry-After: 7
    sim.faults.add("error", status=429, retry_after=7, path_contains=OPPS)
    # when the adapter lists
    with pytest.raises(RateLimited) as caught:
        list(adapter.list_records())
    # then the wait is carried
    assert caught.value.retry_after == 7.0


def test_lost_create_response_then_find_existing_finds_it(
    sim: IcloudreadySimulator, adapter: IcloudreadyAdapter
) -> None:
    # given the vendor commits the next create but the answer is lost
    since = datetime.now(UTC)
    sim.faults.add("lost_response", methods=("POST",), path_contains=OPPS)
    # when a deal is created
    with pytest.raises(OutcomeUnknown):
        adapter.upsert(DEAL, key="k", vendor_id=None, extra={})
    # then find_existing finds the committed record, so no second create is needed
    (committed,) = sim.records
    assert adapter.find_existing(DEAL, key="k", since=since) == committed


def test_refused_body_is_permanent_naming_the_field(
    sim: IcloudreadySimulator, adapter: IcloudreadyAdapter
) -> None:
    # given a deal without a name (iCloudReady needs one)
    # when it is created
    with pytest.raises(Permanent) as caught:
        adapter.upsert(DEAL.replace(name=None), key="k", vendor_id=None, extra={})
    # then the 400 is permanent and names the field
    assert (caught.value.status, caught.value.field) == (400, "opportunityInformation")


# -- inbound ---------------------------------------------------------------------------------
def test_parse_native_reads_records_ids_and_deletes(
    sim: IcloudreadySimulator, adapter: IcloudreadyAdapter
) -> None:
    # given a record as an automation would post it, wrapped, thin and deleted
    vendor_id = sim.seed({"opportunityInformation": {"name": "Hooked"}, "status": "won"})
    record = sim.records[vendor_id]
    # when each is parsed
    fat = adapter.parse_native({"data": record})
    thin = adapter.parse_native({"id": vendor_id})
    gone = adapter.parse_native({**record, "isDeleted": True})
    # then the id, the record and the deletion are read
    assert fat is not None and thin is not None and gone is not None
    assert (fat.vendor_id, fat.record, fat.deleted) == (vendor_id, record, False)
    assert fat.event_time == adapter.to_canonical(record).updated_at
    assert (thin.vendor_id, thin.record) == (vendor_id, None)
    assert gone.deleted is True


def test_invalid_record_is_invalid_payload_naming_fields(adapter: IcloudreadyAdapter) -> None:
    # given a record with a bad revenue and no id
    record = {"opportunityInformation": {"name": "x"}, "revenue": "lots"}
    # when / then both translations refuse it, naming the field
    with pytest.raises(InvalidPayload) as caught:
        adapter.to_canonical(record)
    assert "revenue" in caught.value.fields
    with pytest.raises(InvalidPayload):
        adapter.parse_native(record)
