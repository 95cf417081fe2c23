"""One write to one vendor as Redis tracks it: in flight, acknowledged, create intents."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from schemas.mapping import VENDORS
from worker.store.history import History
from worker.store.keys import HEARTBEAT, field, handover_key, intents_key, opp_key, wrote_key
from worker.store.links import link_bucket
from worker.store.packing import full_digest, millis, short_digest
from worker.store.records import HeldLock

WROTE_TTL_SECONDS = 3600


INTENT_FRESH_SECONDS = 120


class Writes(History):
    """Marks before and after each vendor write, creates in flight, the worker heartbeat."""

    def end_handover(self, token: str, outcome: str, keep_seconds: float) -> None:
        """A write handed over by its event's task ended with ``outcome``."""
        self.redis.set(handover_key(token), outcome, ex=max(1, int(keep_seconds)))

    def handover_ended(self, token: str) -> str | None:
        """How the write handed over as ``token`` ended, if it has (and was told here)."""
        return self.redis.get(handover_key(token))  # type: ignore[return-value]

    def before_write(
        self, key: str, vendor: str, fingerprint: str, *, create: bool, name: str | None = None
    ) -> None:
        """Before a write is sent: it is in flight, what it writes is known as ours (the
        vendor's echo can beat the answer), and a create leaves an intent with the ``name``
        it carries (a look-up after its answer was lost searches by that name, which a later
        change may have replaced)."""
        now = time.time()
        values = {field("g", vendor): millis(now)}
        pipe = self.redis.pipeline(transaction=False)
        if create:
            values[field("p", vendor)] = millis(now)
            values[field("q", vendor)] = name or ""
            pipe.zadd(intents_key(vendor), {key: now})
        pipe.hset(opp_key(key), mapping=values)
        pipe.set(wrote_key(vendor, fingerprint), key, ex=WROTE_TTL_SECONDS)
        pipe.execute()

    def record_write(
        self,
        key: str,
        vendor: str,
        *,
        vendor_id: str,
        fingerprint: str,
        extra: dict[str, str],
        history: dict[str, Any] | None,
        new_link: bool,
        lock: HeldLock | None = None,
        settled: bool = False,
    ) -> str | None:
        """After a vendor acknowledged a write, in one round trip: link, fingerprint, when,
        the history entry (unless the fan-out keeps one for the event); intent and in-flight
        mark done; ``lock`` freed; with ``settled``, the unanswered write is known to have
        committed (a look-up found the create), so it is no longer awaited as a late commit.
        Returns what ``written:<v>`` said just before, read in the same transaction: an
        ingest of the vendor's own change may have set it while we wrote there."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hget(opp_key(key), field("w", vendor))
        values = {
            field("i", vendor): vendor_id,
            field("w", vendor): short_digest(fingerprint),
            field("t", vendor): millis(time.time()),
        }
        if extra:
            values[field("x", vendor)] = urlencode(extra)
        pipe.hset(opp_key(key), mapping=values)
        done = [field("p", vendor), field("q", vendor), field("g", vendor)]
        pipe.hdel(opp_key(key), *done, *([field("s", vendor)] if settled else []))
        if new_link:
            pipe.hset(link_bucket(vendor, vendor_id), vendor_id, key)
            pipe.zrem(intents_key(vendor), key)
        scripts: dict[int, Callable[[], Any] | None] = {}
        if history is not None:
            at, again = self._add_history(pipe, key, history)
            scripts[at] = again
        if lock is not None and lock.held:
            self.unlock(lock, pipe)
            scripts[len(pipe.command_stack) - 1] = self._unlock_again(lock)
        before = self.run(pipe, scripts)[0]
        return None if before is None else full_digest(before)

    def end_write(
        self,
        key: str,
        vendor: str,
        lock: HeldLock | None = None,
        *,
        not_created: bool = False,
        unanswered: tuple[float, str] | None = None,
    ) -> None:
        """A write that failed is no longer in flight (``record_write`` ends the others).
        A create that surely made nothing (``not_created``: refused, never sent) leaves no
        intent: the next attempt creates at once instead of waiting for it to settle. A
        write whose answer was lost (``unanswered``: when it was sent, its fingerprint) is
        remembered as unsettled: it may still commit."""
        pipe = self.redis.pipeline(transaction=False)
        intent = [field("p", vendor), field("q", vendor)] if not_created else []
        pipe.hdel(opp_key(key), field("g", vendor), *intent)
        if unanswered is not None:
            sent, fingerprint = unanswered
            pipe.hset(
                opp_key(key), field("s", vendor), f"{millis(sent)} {short_digest(fingerprint)}"
            )
        if not_created:
            pipe.zrem(intents_key(vendor), key)

        if lock is not None:
            self.unlock(lock, pipe)
        self.run(pipe, self._unlock_again(lock))

    def mark_written(self, key: str, vendor: str, fingerprint: str) -> None:
        self.redis.hset(opp_key(key), field("w", vendor), short_digest(fingerprint))

    def late_commit_seen(self, key: str, vendor: str, fingerprint: str) -> None:
        """``vendor`` committed our unanswered write late: it holds ``fingerprint``, and
        that write can no longer commit."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(opp_key(key), field("w", vendor), short_digest(fingerprint))
        pipe.hdel(opp_key(key), field("s", vendor))
        pipe.execute()

    def mark_recheck(self, key: str, vendor: str) -> None:
        """The deal was deleted in ``vendor`` while we wrote there: look once more."""
        self.redis.hset(opp_key(key), field("r", vendor), "1")

    def clear_recheck(self, key: str, vendor: str) -> None:
        self.redis.hdel(opp_key(key), field("r", vendor))

    def forget_vendor_record(self, key: str, vendor: str, vendor_id: str) -> None:
        """The vendor's record is gone (deleted there): unlink it."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hdel(opp_key(key), field("i", vendor), field("w", vendor), field("x", vendor))
        pipe.hdel(link_bucket(vendor, vendor_id), vendor_id)
        pipe.execute()

    def note_unanswered(self, key: str, vendor: str) -> None:
        """A create of ``key`` in ``vendor`` got no answer (timed out, or its worker died):
        remembered for good, since only then can a second record appear there."""
        self.redis.hset(opp_key(key), field("u", vendor), millis(time.time()))

    def linked_after_unanswered(self, key: str, vendor: str) -> str | None:
        """The id of the record ``key`` is linked to in ``vendor``, when a create of it
        there once went unanswered (else ``None``: no second record can be ours)."""
        linked, unanswered = self.redis.hmget(
            opp_key(key), [field("i", vendor), field("u", vendor)]
        )  # type: ignore[misc]
        return linked if unanswered else None  # type: ignore[no-any-return]

    def creates_in_flight(self, vendor: str) -> bool:
        """Whether a create in ``vendor`` started recently and has no answer yet."""
        fresh = time.time() - INTENT_FRESH_SECONDS
        return bool(self.redis.zcount(intents_key(vendor), fresh, "+inf"))

    def beat(self) -> None:
        """A worker's heartbeat; it also sweeps creates' intents too old to matter (a create
        that never got an answer leaves its member behind, and they would only pile up)."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(HEARTBEAT, str(now))
        for vendor in VENDORS:
            pipe.zremrangebyscore(intents_key(vendor), "-inf", now - INTENT_FRESH_SECONDS)
        pipe.execute()

    def last_heartbeat(self) -> float | None:
        raw = self.redis.get(HEARTBEAT)
        return float(raw) if raw else None  # type: ignore[arg-type]
