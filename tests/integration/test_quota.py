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
from tests.stack import Stack, start_stack, wait_for

pytestmark = pytest.mark.integration

QUOTA = (10, 2.0)


@pytest.fixture(scope="module")
def quota_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(
        Path(tmp_path_factory.mktemp("quota")),
        leadway_quota=QUOTA,
        LEADWAY_RATE_LIMIT=f"{QUOTA[0]}/{int(QUOTA[1])} seconds",
    )
    stack.start_worker(concurrency=8)  # a second worker process on the same Redis
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
