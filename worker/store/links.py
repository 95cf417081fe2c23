"""The link map: which opportunity each vendor record is, second records, our own echoes."""

from __future__ import annotations

import zlib

from worker.store.keys import LINK_BUCKETS, duplicate_key, field, links_key, opp_key, wrote_key
from worker.store.locks import Locks
from worker.store.packing import from_micros, full_digest
from worker.store.records import Linked


def link_bucket(vendor: str, vendor_id: str) -> str:
    """The hash that holds ``vendor_id``'s link: small hashes of many ids each, since a key
    per id costs Redis more than the id and its deal's key (the keys module's layout)."""
    return links_key(vendor, zlib.crc32(vendor_id.encode()) % LINK_BUCKETS)


class Links(Locks):
    """(vendor, id) to canonical key and back."""

    def key_for(self, vendor: str, vendor_id: str) -> str | None:
        return self.redis.hget(link_bucket(vendor, vendor_id), vendor_id)  # type: ignore[return-value]

    def link(self, key: str, vendor: str, vendor_id: str) -> str:
        """Link (vendor, id) to ``key`` unless it is already linked; returns the winner.
        (The key joins ``OPPS_INDEX`` with its first saved state: ``save_state``.)"""
        if self.redis.hsetnx(link_bucket(vendor, vendor_id), vendor_id, key):
            self.redis.hset(opp_key(key), field("i", vendor), vendor_id)
            return key
        return self.key_for(vendor, vendor_id) or key

    def key_we_wrote(self, vendor: str, fingerprint: str) -> str | None:
        return self.redis.get(wrote_key(vendor, fingerprint))  # type: ignore[return-value]

    def mark_duplicate(self, vendor: str, vendor_id: str, key: str) -> None:
        self.redis.set(duplicate_key(vendor, vendor_id), key)

    def duplicate_of(self, vendor: str, vendor_id: str) -> str | None:
        """The deal whose second record (deleted or marked) ``vendor_id`` is."""
        return self.redis.get(duplicate_key(vendor, vendor_id))  # type: ignore[return-value]

    def linked(self, vendor: str, vendor_ids: list[str]) -> dict[str, Linked]:
        """What the store says about each of the vendor's ids that is linked: two round
        trips for any number of ids (polling decides on every record of a scan)."""
        pipe = self.redis.pipeline(transaction=False)
        for vendor_id in vendor_ids:
            pipe.hget(link_bucket(vendor, vendor_id), vendor_id)
        keys: list[str | None] = pipe.execute()
        known = [(i, k) for i, k in zip(vendor_ids, keys, strict=True) if k]
        pipe = self.redis.pipeline(transaction=False)
        for _, key in known:
            pipe.hmget(opp_key(key), [field("w", vendor), field("n", vendor)])
        views: list[list[str | None]] = pipe.execute()
        return {
            vendor_id: Linked(
                key=key,
                written=full_digest(written) if written is not None else None,
                seen=from_micros(seen) if seen is not None else None,
            )
            for (vendor_id, key), (written, seen) in zip(known, views, strict=True)
        }
