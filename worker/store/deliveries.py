"""The edge's delivery ids: each vendor delivery queued once, however often it arrives.

A webhook is admitted in one Redis round trip (``admit``): one script counts the request in
its ingress windows, pushes the ready-made Celery message onto its queue unless the delivery
id was seen, remembers the id and counts the outcome. Nothing runs between a script's
commands, and its writes reach the append-only file together (a crash of the web process or
of Redis keeps all of them or none), so a delivery is queued once or not at all, and no claim
is left behind. ``queue_once`` (claim, queue by other means, confirm) serves callers that
queue through Celery itself (polling).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

import redis

from worker.logs import log
from worker.store.keys import METRIC_COUNTERS, delivery_key
from worker.store.locks import Locks
from worker.store.metrics import counter_field


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

#: The edge's counter, by vendor and outcome (DESIGN.md's metric names).
RECEIVED = "oppsync_events_received_total"

# KEYS: the delivery id's key ("" to count the windows only), the queue, the counters hash,
# then one key per ingress window. ARGV: the delivery id's TTL, the message, the counter
# fields of the outcomes queued, duplicate, delivery_pending and rate_limited, the pending and
# the queued mark, then each window's amount and seconds. Every window counts the request
# (the ``limits`` library's fixed window: the first hit starts it); over any, nothing else
# happens and the answer lists each breached window's position and the ms until it ends.
# A delivery id seen before is a duplicate, or one ``queue_once`` claimed and has not queued.
# Redis does not undo a script's writes when a later command fails, so the message is pushed
# before its id is remembered: a failure between them can only queue a redelivery again
# (the worker takes it as a no-op), never remember an event that was not queued.
ADMIT = """
local breached = {}
for i = 4, #KEYS do
  local amount, seconds = tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2])
  local hits = redis.call('INCR', KEYS[i])
  if hits == 1 then
    redis.call('EXPIRE', KEYS[i], seconds)
  end
  if hits > amount then
    local left = redis.call('PTTL', KEYS[i])
    table.insert(breached, i - 4)
    table.insert(breached, left >= 0 and left or seconds * 1000)
  end
end
if #breached > 0 then
  redis.call('HINCRBY', KEYS[3], ARGV[6], 1)
  return {'rate_limited', breached}
end
if KEYS[1] == '' then
  return {'counted', breached}
end
local seen = redis.call('GET', KEYS[1])
if seen then
  local pending = seen == ARGV[7]
  redis.call('HINCRBY', KEYS[3], pending and ARGV[5] or ARGV[4], 1)
  return {pending and 'delivery_pending' or 'duplicate', breached}
end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], ARGV[8], 'EX', ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
return {'queued', breached}
"""


@dataclass(frozen=True)
class Window:
    """One fixed window of an ingress limit: at most ``amount`` requests in ``seconds``."""

    key: str
    amount: int
    seconds: int


@dataclass(frozen=True)
class Delivery:
    """A delivery to queue: its id, seconds to remember it, the queue (a Redis list) and
    the message as the queue's consumer reads it."""

    delivery_id: str
    ttl: int
    queue: str
    message: str


@dataclass(frozen=True)
class Admission:
    """What ``admit`` did: its ``outcome`` (also the counted metric's label), and for
    ``rate_limited`` each breached window's position with the seconds until it ends."""

    outcome: str
    breached: dict[int, float] = field(default_factory=dict)


@functools.lru_cache(maxsize=64)
def _outcome_fields(vendor: str) -> tuple[str, ...]:
    outcomes = ("queued", "duplicate", "delivery_pending", "rate_limited")
    return tuple(counter_field(RECEIVED, vendor=vendor, outcome=o) for o in outcomes)


class Deliveries(Locks):
    """Admit webhooks; claim, confirm and release delivery ids."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self._admit = client.register_script(ADMIT)

    def admit(
        self,
        vendor: str,
        windows: Sequence[Window],
        delivery: Delivery | None = None,
    ) -> Admission:
        """Count a request in its ingress ``windows`` and, within them, queue ``delivery``
        unless its id was queued before, in one round trip; the outcome is counted in
        ``oppsync_events_received_total``. Without a delivery only the windows are counted
        (outcome ``counted``, or ``rate_limited``)."""
        if delivery is None:
            keys, ttl, message = ["", ""], 0, ""
        else:
            keys = [delivery_key(vendor, delivery.delivery_id), delivery.queue]
            ttl, message = delivery.ttl, delivery.message
        limits = [n for w in windows for n in (w.amount, w.seconds)]
        outcome, breached = self._admit(
            keys=[*keys, METRIC_COUNTERS, *(w.key for w in windows)],
            args=[ttl, message, *_outcome_fields(vendor), PENDING_MARK, QUEUED_MARK, *limits],
        )  # type: ignore[misc]
        if isinstance(outcome, bytes):
            outcome = outcome.decode()
        pairs = zip(breached[::2], breached[1::2], strict=True)
        return Admission(outcome, {int(p): int(ms) / 1000 for p, ms in pairs})

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
