"""What a linked opportunity keeps in Redis for good, written through the real stack: a
deal created in one vendor and synced to the four others keeps one hash and one history
list of its own, its links live in shared small hashes (not a key per vendor record), and
the bytes per deal are printed (``MEMORY USAGE`` of everything kept, over the deals).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from tests.integration.conftest import emptied
from tests.integration.drive import DEAL, announce, person_creates, wait_quiet
from worker.sandbox.stack import VENDORS, Stack, wait_for
from worker.store.keys import (
    KEPT_FOR_GOOD,
    LAYOUT,
    LINK_BUCKETS,
    OPPS_INDEX,
    links_prefix,
    opp_key,
    writes_key,
)
from worker.store.state import Store

pytestmark = pytest.mark.integration

#: Deals written (``OPPSYNC_FOOTPRINT_DEALS`` measures more: e.g. 1000 for the docs' figure).
DEALS = int(os.environ.get("OPPSYNC_FOOTPRINT_DEALS", "40"))


@pytest.fixture
def clean(stack: Stack) -> Iterator[Stack]:
    yield from emptied(stack)


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])  # type: ignore[index]


def usage(client: redis.Redis, key: str) -> int:
    return int(client.memory_usage(key, samples=0) or 0)  # type: ignore[arg-type]


def kept_keys(client: redis.Redis) -> list[str]:
    """Every key of the families kept for as long as their deal."""
    return sorted({k for family in KEPT_FOR_GOOD for k in client.scan_iter(family, count=1000)})


def test_footprint_a_linked_deal_keeps_one_hash_one_history_and_shared_links(
    clean: Stack,
) -> None:
    # given deals created in Leadway and announced, each synced to the four other vendors
    client = redis.Redis.from_url(clean.redis.url, decode_responses=True)
    before = used_memory(client)
    for n in range(DEALS):
        deal = DEAL.replace(name=f"{DEAL.name} {n}")
        assert announce(clean, "leadway", person_creates(clean, "leadway", deal)) == 202
    store = Store(client)
    wait_for(lambda: client.scard(OPPS_INDEX) == DEALS, 120, "not every deal was stored")
    wait_for(
        lambda: all(len(store.load(k).ids) == len(VENDORS) for k in store.all_keys()),
        120,
        "not every deal was linked in every vendor",
    )
    wait_quiet(clean)
    keys = kept_keys(client)
    parts: Counter[str] = Counter()
    for k in keys:
        parts[k.split(":")[1]] += usage(client, k)
    grown = used_memory(client) - before
    print(
        f"\n{DEALS} deals linked in {len(VENDORS)} vendors: "
        f"{sum(parts.values()) / DEALS:,.0f} B kept per deal (MEMORY USAGE of {len(keys)} keys: "
        + ", ".join(f"{family} {total / DEALS:,.0f}" for family, total in sorted(parts.items()))
        + f"), used_memory +{grown / DEALS:,.0f} B per deal"
    )
    # then each deal keeps its hash and its history; its links are fields of shared hashes,
    # as many as there are buckets at most, however many deals there are
    deals = store.all_keys()
    own = {opp_key(k) for k in deals} | {writes_key(k) for k in deals}
    shared = [k for k in keys if k not in own]
    assert own <= set(keys)
    assert all(k in (OPPS_INDEX, LAYOUT) or k.startswith(links_prefix()) for k in shared), shared
    assert len(shared) <= 2 + LINK_BUCKETS * len(VENDORS)
    assert all(client.type(k) == "hash" for k in shared if k.startswith(links_prefix()))
    # and each vendor record still leads to its deal
    for key in deals:
        for vendor, vendor_id in store.load(key).ids.items():
            assert store.key_for(vendor, vendor_id) == key
