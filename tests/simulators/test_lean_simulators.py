"""The benchmark's lean simulators answer the real adapters' calls and refuse bad credentials.

Each runs as the benchmark runs it (a child process, ``worker/bench/sims.py``); the adapters
are the service's own, built from the environment the stack gives the service.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from schemas.opportunity import Opportunity, Status
from worker.bench.lean import Faults
from worker.bench.sims import RemoteSimulator, start_remote_simulators
from worker.errors import OutcomeUnknown, Permanent, RateLimited, VendorError
from worker.sandbox.stack import VENDORS, stack_env
from worker.settings import from_env
from worker.vendors import build_adapters
from worker.vendors.base import VendorAdapter

DEAL = Opportunity(
    name="Bench deal 00000007",
    amount=Decimal("1250"),
    status=Status.OPEN,
    close_date=datetime(2027, 3, 15, tzinfo=UTC).date(),
    description="Shelving and racking",
)
#: A credential variable per vendor, and a wrong value for it.
WRONG = {
    "siro": ("SIRO_API_TOKEN", "not-the-token"),
    "leadway": ("LEADWAY_API_TOKEN", "not-the-token"),
    "ivvy": ("IVVY_API_SECRET", "not-the-secret"),
    "salescaling": ("SALESCALING_API_KEY", "not-the-key"),
    "icloudready": ("ICLOUDREADY_PASSWORD", "not-the-password"),
}


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, RemoteSimulator]]:
    started = start_remote_simulators(latency=0.0)
    yield started
    for sim in started.values():
        sim.stop()


def adapters(sims: dict[str, RemoteSimulator], **env: str) -> dict[str, VendorAdapter]:
    environment = stack_env("redis://127.0.0.1:1/0", sims) | env
    return build_adapters(from_env(environment), lambda vendor: None)


@pytest.fixture
def fresh(sims: dict[str, RemoteSimulator]) -> dict[str, RemoteSimulator]:
    for sim in sims.values():
        sim.reset()
        sim.configure()
    return sims


@pytest.mark.parametrize("vendor", VENDORS)
def test_the_adapter_creates_reads_finds_and_updates_a_deal(
    fresh: dict[str, RemoteSimulator], vendor: str
) -> None:
    adapter = adapters(fresh)[vendor]
    since = datetime.now(UTC) - timedelta(seconds=1)
    # when the service's adapter creates a deal, reads it back and updates it
    created = adapter.upsert(DEAL, key="opp-7", vendor_id=None, extra={})
    record = adapter.fetch(created.vendor_id)
    assert record is not None
    read = adapter.to_canonical(record)
    found = adapter.find_existing(DEAL, key="opp-7", since=since)
    field = "amount" if "amount" in adapter.synced_fields else "description"
    changed = DEAL.replace(**{field: Decimal("1500") if field == "amount" else "Racking only"})
    updated = adapter.upsert(changed, key="opp-7", vendor_id=created.vendor_id,
                             extra=created.extra)  # fmt: skip
    again = adapter.fetch(created.vendor_id)
    adapter.close()
    # then each answer is one the adapter reads: the record, found again, updated in place
    assert created.created and adapter.record_id(record) == created.vendor_id
    assert read.name == DEAL.name
    assert found == created.vendor_id
    assert updated.vendor_id == created.vendor_id
    assert again is not None
    assert getattr(adapter.to_canonical(again), field) == getattr(changed, field)
    # and the simulator counted one deal, written twice, and each call by its kind
    seen = fresh[vendor].drain(final=True)
    assert [number for number, _ in seen.acks] == [7]
    assert seen.writes == [7, 7] and seen.records == [7]
    kinds = {kind for kind, status in seen.calls if status < 300}
    assert {"write", "read", "lookup"} <= kinds
    assert all(status < 300 for _, status in seen.calls), seen.calls


@pytest.mark.parametrize("vendor", VENDORS)
def test_bad_credentials_are_refused(fresh: dict[str, RemoteSimulator], vendor: str) -> None:
    variable, wrong = WRONG[vendor]
    adapter = adapters(fresh, **{variable: wrong})[vendor]
    # when the adapter writes with a wrong credential, the vendor refuses it
    with pytest.raises(Permanent) as refused:
        adapter.upsert(DEAL, key="opp-7", vendor_id=None, extra={})
    adapter.close()
    assert refused.value.status == 401
    # and nothing was written
    seen = fresh[vendor].drain(final=True)
    assert not seen.acks and not seen.records
    assert {status for _, status in seen.calls} == {401}


def test_faults_are_seeded_and_a_lost_answer_still_commits(
    fresh: dict[str, RemoteSimulator],
) -> None:
    sim = fresh["salescaling"]
    adapter = adapters(fresh)["salescaling"]
    # given every write's answer lost after the vendor committed it
    sim.configure(faults=Faults(seed=3, lost=1.0))
    with pytest.raises(OutcomeUnknown):
        adapter.upsert(DEAL, key="opp-7", vendor_id=None, extra={})
    # then the deal is there to be found; then every answer an injected 500 or 429
    sim.configure()
    found = adapter.find_existing(DEAL, key="opp-7", since=datetime.now(UTC) - timedelta(1))
    assert found is not None
    sim.configure(faults=Faults(seed=3, error=0.5, throttle=0.5))
    outcomes = []
    for _ in range(6):
        with pytest.raises(VendorError) as failed:
            adapter.fetch(found)
        outcomes.append(type(failed.value))
    adapter.close()
    assert set(outcomes) <= {RateLimited, OutcomeUnknown, Permanent} and RateLimited in outcomes
    seen = sim.drain(final=True)
    assert seen.faults["lost"] == 1 and seen.records == [7]
    assert seen.faults["error"] + seen.faults["throttle"] == 6
    assert seen.calls[("write", 0)] == 1


def test_the_quota_answers_429_with_retry_after(fresh: dict[str, RemoteSimulator]) -> None:
    sim = fresh["siro"]
    sim.configure(quota="2/60 seconds", keep_requests=True)
    adapter = adapters(fresh)["siro"]
    assert adapter.fetch("00000000-0000-4000-8000-000000000001") is None  # 404: one of two
    adapter.upsert(DEAL, key="opp-7", vendor_id=None, extra={})
    with pytest.raises(RateLimited) as limited:
        adapter.upsert(DEAL, key="opp-7", vendor_id=None, extra={})
    adapter.close()
    assert limited.value.retry_after is not None and limited.value.retry_after >= 1
    statuses = [status for _, status in sim.drain(final=True).requests]
    assert statuses == [404, 200, 429]
