"""Vendor quotas are shared by every worker process: a backlog runs at the vendor's limit,
never over it.

A stack of its own with two worker processes and a Leadway simulator enforcing a small quota
(the same shape as HighLevel's 100 per 10 s, scaled down so the test is short).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.drive import DEAL, held, person_creates
from worker.sandbox.stack import Stack, start_stack, wait_for

pytestmark = pytest.mark.integration

QUOTA = (10, 2.0)


@pytest.fixture(scope="module")
def quota_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(
        Path(tmp_path_factory.mktemp("quota")),
        leadway_quota=QUOTA,
        LEADWAY_RATE_LIMIT=f"{QUOTA[0]}/{int(QUOTA[1])} seconds",
    )
    # a second worker process on the same Redis
    stack.start_procfile_worker({**stack.env, "OPPSYNC_WORKER_CONCURRENCY": "8"})
    yield stack
    stack.stop()


def test_quota_backlog_never_exceeds_the_vendor_limit(quota_stack: Stack) -> None:
    stack = quota_stack
    leadway = stack.sims["leadway"]
    names = [f"Quota Deal {n:02}" for n in range(12)]
    # given a burst of new deals in SIRO, each needing two or three Leadway calls
    for name in names:
        vendor_id = person_creates(stack, "siro", DEAL.replace(name=name))
        assert stack.sims["siro"].emit_standard(vendor_id) == 202
    # then Leadway receives every deal exactly once ...
    wait_for(
        lambda: sorted(str(o.name) for o in held(stack, "leadway")) == names,
        120,
        "Leadway did not get every deal",
    )
    # ... and never had to refuse a request: both workers kept within its quota
    assert leadway.rate_limited == 0
    assert len(leadway.log) >= 2 * len(names)


def test_a_vendor_at_its_quota_delays_no_other_vendor(quota_stack: Stack) -> None:
    stack = quota_stack
    leadway = stack.sims["leadway"]
    others = ("salescaling", "ivvy", "icloudready")
    # given more new deals at once than both workers have threads (24), each needing two or
    # three Leadway calls: Leadway's quota (10 per 2 s) needs half a minute for them
    names = {f"Paced Deal {n:02}" for n in range(60)}
    for name in sorted(names):
        vendor_id = person_creates(stack, "siro", DEAL.replace(name=name))
        assert stack.sims["siro"].emit_standard(vendor_id) == 202

    def names_in(vendor: str) -> set[str]:
        return {str(o.name) for o in held(stack, vendor)} & names

    # then the other vendors get every deal while Leadway is still working through them:
    # no event waits for Leadway's quota before writing the others
    wait_for(lambda: all(names_in(v) == names for v in others), 60, "the other vendors waited")
    assert len(names_in("leadway")) < len(names) // 3
    # and Leadway gets every one of them too, exactly once, never over its quota
    wait_for(lambda: names_in("leadway") == names, 180, "Leadway did not get every deal")
    assert sorted(str(o.name) for o in held(stack, "leadway") if o.name in names) == sorted(names)
    assert leadway.rate_limited == 0
