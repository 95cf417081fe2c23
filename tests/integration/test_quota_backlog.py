"""A backlog behind a vendor's quota waits in line: each write waits once, for a slot kept for
it, and no vendor gets a call the writes do not need.

A stack of its own whose Leadway simulator enforces a small quota (HighLevel's 100 per 10 s,
scaled down so the test is short), and a burst of new deals, each needing a Leadway contact
and opportunity.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.integration.drive import DEAL, held, person_creates, wait_quiet
from worker.sandbox.simulators.base import LoggedRequest
from worker.sandbox.stack import VENDORS, Stack, start_stack, wait_for
from worker.store.metrics import read_counters

pytestmark = pytest.mark.integration

QUOTA = (20, 2.0)
DEALS = 100
SOURCE = "siro"


@pytest.fixture(scope="module")
def backlog_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(
        Path(tmp_path_factory.mktemp("quota-backlog")),
        leadway_quota=QUOTA,
        LEADWAY_RATE_LIMIT=f"{QUOTA[0]}/{int(QUOTA[1])} seconds",
        # Waits up to the default: a write waits in one hop, not in many short ones.
        OPPSYNC_RETRY_MAX_SECONDS="20",
    )
    # a second worker process on the same Redis: the line is shared, as the quota is
    stack.start_procfile_worker()
    yield stack
    stack.stop()


def cpu_seconds(stack: Stack) -> float:
    """CPU the worker processes have spent (printed for the report, never asserted)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for worker in stack.workers:
        fields = Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def reads(requests: list[LoggedRequest]) -> Counter[str]:
    return Counter(f"{r.method} {r.path}" for r in requests if r.method == "GET")


def test_a_quota_backlog_waits_once_per_write_and_calls_only_what_writes_need(
    backlog_stack: Stack,
) -> None:
    stack = backlog_stack
    leadway = stack.sims["leadway"]
    names = {f"Backlog Deal {n:03}" for n in range(DEALS)}
    cpu_before = cpu_seconds(stack)
    # given a burst of new deals in SIRO, far more than Leadway's quota takes at once
    for name in sorted(names):
        vendor_id = person_creates(stack, SOURCE, DEAL.replace(name=name))
        assert stack.sims[SOURCE].emit_standard(vendor_id) == 202
    # then Leadway gets every deal exactly once, never over its quota
    wait_for(
        lambda: {str(o.name) for o in held(stack, "leadway")} >= names,
        240,
        "Leadway did not get every deal",
    )
    wait_quiet(stack)
    assert sorted(str(o.name) for o in held(stack, "leadway")) == sorted(names)
    assert leadway.rate_limited == 0
    with redis.Redis.from_url(stack.redis.url, decode_responses=True) as client:
        retries = sum(
            value
            for name, labels, value in read_counters(client)
            if name == "oppsync_retries_total" and labels.get("vendor") == "leadway"
        )
    sent = Counter(f"{r.method} {r.path}" for r in leadway.log)
    print(f"\nworker CPU during the backlog: {cpu_seconds(stack) - cpu_before:.1f} s")
    print(f"\nSIRO reads: {reads(stack.sims[SOURCE].log)}")
    print(f"\nLeadway push retries for {DEALS} deals: {retries}; Leadway calls: {dict(sent)}")
    # and Leadway was sent only what the writes need: a contact and an opportunity per
    # deal, plus the pipeline's stages at most once per worker process (a new deal's first
    # stage)
    assert sent["POST /contacts/upsert"] == DEALS
    assert sent["POST /opportunities/upsert"] == DEALS
    assert sent["GET /opportunities/pipelines"] <= len(stack.workers)
    assert sum(sent.values()) == 2 * DEALS + sent["GET /opportunities/pipelines"], sent
    # no other vendor was searched or listed: nothing looked for a create that never left
    for vendor in VENDORS:
        if vendor not in ("leadway", SOURCE):
            assert reads(stack.sims[vendor].log) == Counter(), vendor
    # and each write waited in line once, instead of waking again and again for a slot
    assert retries <= DEALS * 1.2, retries
