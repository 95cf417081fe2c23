"""The edge's delivery ids: each vendor delivery queued once, however often it arrives."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import redis

from worker.logs import log
from worker.store.keys import delivery_key
from worker.store.locks import Locks


class Claim(Enum):
    """What claiming a delivery id found."""

    NEW = "new"  # ours: queue the event, then confirm
    QUEUED = "queued"  # queued before: a duplicate
    PENDING = "pending"  # another request is queueing it, or died doing so: retry later


#: Delivery-key values: claimed and not yet queued; queued.
PENDING_MARK = "pending"
QUEUED_MARK = "1"


#: How long a claim may stay unconfirmed: far longer than a publish with its retries.
PENDING_CLAIM_SECONDS = 60


class Deliveries(Locks):
    """Claim, confirm and release delivery ids."""

    def claim_delivery(self, vendor: str, delivery_id: str) -> Claim:
        """Claim a delivery id before queueing its event. The claim is only ``PENDING``
        until ``confirm_delivery``: if the process dies or Redis goes away between the
        claim and the queueing (so the claim cannot be released), it expires within
        ``PENDING_CLAIM_SECONDS`` and the vendor's redelivery is taken, not lost as a
        duplicate."""
        key = delivery_key(vendor, delivery_id)
        if self.redis.set(key, PENDING_MARK, nx=True, ex=PENDING_CLAIM_SECONDS):
            return Claim.NEW
        # A second command only for deliveries seen before (the rare path).
        return Claim.QUEUED if self.redis.get(key) == QUEUED_MARK else Claim.PENDING

    def confirm_delivery(self, vendor: str, delivery_id: str, ttl: int) -> None:
        """The event is queued: remember its delivery id for ``ttl`` seconds."""
        self.redis.set(delivery_key(vendor, delivery_id), QUEUED_MARK, ex=ttl)

    def release_delivery(self, vendor: str, delivery_id: str) -> None:
        self.redis.delete(delivery_key(vendor, delivery_id))

    def queue_once(
        self, vendor: str, delivery_id: str, ttl: int, queue: Callable[[], None]
    ) -> Claim:
        """Run ``queue`` unless this delivery id was queued before (or is being queued):
        claim it, queue, then remember it for ``ttl`` seconds. ``Claim.NEW`` when ``queue``
        ran. When ``queue`` raises, the claim is released so the sender's redelivery is
        taken, and the error propagates. When only the confirmation fails, the event is
        queued all the same: the pending claim lapses and a redelivery after that is queued
        again, which the worker takes as a no-op."""
        claim = self.claim_delivery(vendor, delivery_id)
        if claim is not Claim.NEW:
            return claim
        try:
            queue()
        except BaseException:  # noqa: BLE001 - re-raised below
            # Not queued: forget the delivery id so the sender's redelivery is taken.
            try:
                self.release_delivery(vendor, delivery_id)
            finally:
                raise
        try:
            self.confirm_delivery(vendor, delivery_id, ttl)
        except (redis.RedisError, OSError):
            log.warning("delivery.confirm_failed", vendor=vendor, delivery=delivery_id)
        return Claim.NEW
