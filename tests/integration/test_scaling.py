"""Scaling out: two worker processes on one Redis keep every vendor's quota and each deal's
order of changes, as the README's "Scaling out" section promises.

A stack of its own: the Procfile's worker line run twice (as two PaaS worker processes on
separate hosts would be) against one Redis, and a Leadway simulator enforcing a quota of
HighLevel's shape scaled down (10 requests per 2 s instead of 100 per 10 s) so the test is
short but the quota is really what paces Leadway.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from tests.integration.drive import DEAL, held, others, person_creates, schema
from tests.stack import Stack, start_stack, wait_for

pytestmark = pytest.mark.integration

QUOTA = (10, 2.0)
DEALS = 3
EDITS = 8


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(
        Path(tmp_path_factory.mktemp("scaling")),
        worker=False,
        leadway_quota=QUOTA,
        LEADWAY_RATE_LIMIT=f"{QUOTA[0]}/{int(QUOTA[1])} seconds",
    )
    try:
        stack.start_procfile_worker()
        stack.start_procfile_worker()
    except Exception:
        stack.stop()
        raise
    yield stack
    stack.stop()


def holdings(stack: Stack, vendor: str) -> list[tuple[str, Decimal | None]]:
    """(name, amount) of every record the vendor holds; the amount where it keeps one."""
    keeps_amount = "amount" in schema(vendor).SYNCED_FIELDS
    return sorted((str(o.name), o.amount if keeps_amount else None) for o in held(stack, vendor))


def wanted(vendor: str, deals: dict[str, tuple[str, Decimal]]) -> list[tuple[str, Decimal | None]]:
    keeps_amount = "amount" in schema(vendor).SYNCED_FIELDS
    return sorted((name, amount if keeps_amount else None) for name, amount in deals.values())


def ingests_by(stack: Stack, worker: int) -> int:
    log = stack.log_dir / f"worker{worker}.log"
    return log.read_text(errors="replace").count('"ingest.done"')


def test_scaling_two_workers_keep_order_and_quota(two_workers: Stack) -> None:
    stack = two_workers
    source = stack.sims["salescaling"]
    # given a few deals a person created in Salescaling, synced everywhere
    ids, deals = {}, {}
    for n in range(DEALS):
        deals[n] = (f"Scaling Deal {n}", Decimal("12500.00"))
        ids[n] = person_creates(stack, "salescaling", DEAL.replace(name=deals[n][0]))
        assert source.emit_standard(ids[n]) == 202
    for vendor in others("salescaling"):
        wait_for(lambda v=vendor: holdings(stack, v) == wanted(v, deals), 120,
                 f"{vendor} did not get the deals")  # fmt: skip
    # when each deal is renamed and repriced many times in a row, every edit announced at
    # once, the deals interleaved so both workers take events of every deal
    for edit in range(1, EDITS + 1):
        for n in range(DEALS):
            deals[n] = (f"Scaling Deal {n} v{edit}", Decimal(f"{1000 * edit + n}.00"))
            source.edit(ids[n], name=deals[n][0], amount=float(deals[n][1]))
            assert source.emit_standard(ids[n]) == 202
    # then every vendor holds one record per deal with its last name and amount ...
    for vendor in others("salescaling"):
        wait_for(lambda v=vendor: holdings(stack, v) == wanted(v, deals), 120,
                 f"{vendor} did not end with the last edits")  # fmt: skip
    # ... no vendor refused a request for its quota, though Leadway's paced both workers ...
    assert {v: s.rate_limited for v, s in stack.sims.items()} == dict.fromkeys(stack.sims, 0)
    assert len(stack.sims["leadway"].log) > QUOTA[0]
    # ... and both worker processes did part of the work
    assert ingests_by(stack, 0) > 0 and ingests_by(stack, 1) > 0
