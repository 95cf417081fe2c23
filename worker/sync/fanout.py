"""Writing one change to its target vendors concurrently, and what happens to each failure.

The fast path: the ingest task pushes to every target at once, each on its vendor's lane of
threads (``worker/sync/lanes.py``), over the pooled clients (the four upserts overlap instead
of queuing behind each other). A target that fails with a transient error gets its own retry
task on its vendor's queue; a permanent failure becomes a dead letter. Nothing here blocks
one vendor on another: a write still under way after ``HANDOVER_SECONDS`` (its vendor is
slow) is handed over, and the task moves on to the next event; while that vendor stays slow,
the next events' writes to it are handed over as soon as their other writes end.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import Future, wait
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import structlog
from redis.exceptions import RedisError

from worker import breaker, vendorhealth
from worker.errors import REDIS_UNREACHABLE, OurOwnWait, OwnQuota, Transient
from worker.logs import log
from worker.quotaline import Reservation, in_line
from worker.ratelimit import no_waiting
from worker.retry import decide
from worker.runtime import Runtime
from worker.store import metrics
from worker.store.deadletters import DeadLetters
from worker.store.records import HandedOver, HeldLock, Record
from worker.sync import push as pushing
from worker.sync.lanes import lanes
from worker.sync.outcomes import WRITES, PushOutcome
from worker.vendors.http import call_seconds

#: How long an event's task waits for its writes. A write still under way by then (its
#: vendor is slow) goes on in its lane, and finishes on its own; a job on its vendor's
#: queue, due once that write's calls must be over, makes sure it was made should this
#: process die meanwhile (it finds the write made, and sends nothing). The task is free for
#: the next event: a slow vendor delays no other vendor's writes.
HANDOVER_SECONDS = 1.0
#: When a vendor's lane is full, how soon its push is tried again (on its own queue).
LANE_FULL_RETRY_SECONDS = 1.0
#: How long a vendor whose write was handed over counts as slow (``SlowVendors``), unless one
#: of its writes ends within ``HANDOVER_SECONDS`` first.
SLOW_MEMORY_SECONDS = 30.0


class SlowVendors:
    """The vendors this process saw slow lately: a write to them was handed over.

    An event's task waits for them no longer than for its other writes, and hands theirs
    over at once: otherwise every event would wait the whole ``HANDOVER_SECONDS`` for a slow
    vendor, and a worker's tasks would carry one event a second each while it is slow. The
    first write to end within ``HANDOVER_SECONDS`` (its late end is timed too) makes the
    vendor waited for again."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def saw_slow(self, vendor: str) -> None:
        self._until[vendor] = time.monotonic() + SLOW_MEMORY_SECONDS

    def saw_prompt(self, vendor: str) -> None:
        self._until.pop(vendor, None)

    def is_slow(self, vendor: str) -> bool:
        return self._until.get(vendor, 0.0) > time.monotonic()


slow_vendors = SlowVendors()


class RetryScheduler(Protocol):
    """Queues the next attempt ``delay`` seconds away; ``reserved``: the places the push
    keeps in its vendor's line for then (``worker/ratelimit.Reservation``); ``handover``:
    the job makes sure of a write handed over (``push_all``), if that write has not."""

    def __call__(
        self,
        key: str,
        vendor: str,
        cause: dict[str, Any],
        first_attempt_at: float,
        attempt: int,
        delay: float,
        reserved: dict[str, Any] | None = None,
        handover: str | None = None,
    ) -> None: ...


@dataclass(frozen=True)
class PushResult:
    vendor: str
    outcome: PushOutcome
    detail: str = ""


def push_once(
    rt: Runtime,
    key: str,
    vendor: str,
    *,
    cause: dict[str, Any],
    attempt: int,
    first_attempt_at: float,
    schedule_retry: RetryScheduler,
    journal: list[dict[str, Any]] | None = None,
    taken: tuple[HeldLock, Record] | None = None,
    reserved: dict[str, Any] | None = None,
    handover: str | None = None,
) -> PushResult:
    """One attempt at one vendor; failures are routed to a retry or a dead letter. With
    ``taken``, the push starts with its lock held and the record read under it;
    ``reserved``: the places its previous attempt kept in the vendor's line; ``handover``:
    this attempt only makes sure of a write handed over, which may have ended already."""
    if handover is not None and (ended := rt.store.handover_ended(handover)) is not None:
        return PushResult(vendor, PushOutcome.HANDED_OVER, f"it ended: {ended}")
    with structlog.contextvars.bound_contextvars(correlation_id=cause.get("correlation_id")):
        return _attempt(
            rt,
            key,
            vendor,
            cause=cause,
            attempt=attempt,
            first_attempt_at=first_attempt_at,
            schedule_retry=schedule_retry,
            journal=journal,
            taken=taken,
            reserved=reserved,
        )


def _attempt(
    rt: Runtime,
    key: str,
    vendor: str,
    *,
    cause: dict[str, Any],
    attempt: int,
    first_attempt_at: float,
    schedule_retry: RetryScheduler,
    journal: list[dict[str, Any]] | None,
    taken: tuple[HeldLock, Record] | None,
    reserved: dict[str, Any] | None = None,
) -> PushResult:
    if attempt == 1 and (wait := breaker.open_for(rt.redis, vendor)) > 0:
        # The vendor keeps failing: don't hold this worker on it, queue the push for later.
        schedule_retry(key, vendor, cause, first_attempt_at, attempt + 1, wait)
        return PushResult(vendor, PushOutcome.RETRYING, "circuit open")
    try:
        # Straight from ingest, a push never waits for its vendor's quota: it keeps its place
        # in that vendor's line and is queued for then, so a vendor at its quota delays
        # none of the event's other writes. A retry spends the place it kept.
        with (
            no_waiting() if attempt == 1 else nullcontext(),
            in_line(Reservation.from_job(reserved)),
        ):
            outcome = pushing.push(rt, key, vendor, cause=cause, journal=journal, taken=taken)
    except REDIS_UNREACHABLE:
        # Our own Redis, not the vendor: no verdict (it would be "unexpected", a dead
        # letter, should Redis answer again by the time it is recorded); the task goes back
        # to its queue (worker/tasks.requeued_while_redis_is_unreachable).
        raise
    except Exception as error:  # noqa: BLE001 - every failure is classified by the policy
        verdict = decide(
            error, attempt=attempt, first_attempt_at=first_attempt_at, settings=rt.settings
        )
        vendorhealth.record_push(rt.redis, vendor, error=error)  # for the status page
        if verdict.retry:
            if (
                isinstance(error, Transient)
                and not isinstance(error, OurOwnWait)
                and breaker.record_failure(rt.redis, vendor)
            ):
                log.warning("breaker.open", vendor=vendor, seconds=breaker.OPEN_SECONDS)
            metrics.count(rt.redis, "oppsync_retries_total", vendor=vendor)
            metrics.count(
                rt.redis, "oppsync_upserts_total", vendor=vendor, outcome=PushOutcome.RETRYING
            )
            kept = error.reserved if isinstance(error, OwnQuota) else None
            schedule_retry(
                key, vendor, cause, first_attempt_at, attempt + 1, verdict.delay, reserved=kept
            )
            log.warning(
                "push.retry",
                key=key,
                vendor=vendor,
                attempt=attempt,
                delay=round(verdict.delay, 2),
                reason=verdict.reason,
                error=str(error),
            )
            return PushResult(vendor, PushOutcome.RETRYING, verdict.reason)
        DeadLetters(rt.redis, rt.settings.secret_values()).add(
            kind="push",
            vendor=vendor,
            attempts=attempt,
            error=error,
            job={"key": key, "vendor": vendor, "cause": cause},
        )
        metrics.count(
            rt.redis, "oppsync_upserts_total", vendor=vendor, outcome=PushOutcome.DEAD_LETTER
        )
        log.error(
            "push.dead_letter",
            key=key,
            vendor=vendor,
            attempt=attempt,
            reason=verdict.reason,
            error=str(error),
        )
        return PushResult(vendor, PushOutcome.DEAD_LETTER, verdict.reason)
    metrics.count(rt.redis, "oppsync_upserts_total", vendor=vendor, outcome=outcome)
    vendorhealth.record_push(rt.redis, vendor, outcome=outcome)
    breaker.record_success(rt.redis, vendor)
    log.info("push.done", key=key, vendor=vendor, outcome=outcome, attempt=attempt)
    return PushResult(vendor, outcome)


def push_all(
    rt: Runtime,
    key: str,
    targets: tuple[str, ...],
    *,
    cause: dict[str, Any],
    schedule_retry: RetryScheduler,
    handed: HandedOver | None = None,
) -> list[PushResult]:
    """Push to every target concurrently; returns one result per target. The writes made
    are kept as one history entry for the event (a write handed over adds its own when it
    ends). ``handed``: the locks the ingest took for its targets, and the record read under
    them (a target without one takes its own); the caller frees those left in it (a push
    that never started: circuit open, or its vendor's lane full)."""
    started = time.time()
    locks = handed.locks if handed is not None else {}
    journals: dict[str, list[dict[str, Any]]] = {}
    running: dict[str, Future[PushResult]] = {}
    results: list[PushResult] = []
    vendor_lanes = lanes(rt.settings.push_threads)
    for vendor in targets:
        journals[vendor] = []
        future = vendor_lanes.submit(
            vendor,
            push_once,
            rt,
            key,
            vendor,
            cause=cause,
            attempt=1,
            first_attempt_at=started,
            schedule_retry=schedule_retry,
            journal=journals[vendor],
            taken=(locks[vendor], handed.record) if handed and vendor in locks else None,
        )
        if future is None:  # every thread of its lane is busy: its vendor's queue takes it
            schedule_retry(key, vendor, cause, started, 2, LANE_FULL_RETRY_SECONDS)
            results.append(PushResult(vendor, PushOutcome.RETRYING, "lane full"))
        else:
            running[vendor] = future
    wait(
        [f for vendor, f in running.items() if not slow_vendors.is_slow(vendor)],
        timeout=HANDOVER_SECONDS,
    )
    notes: list[dict[str, Any]] = []
    for vendor, future in running.items():
        if future.done():  # within HANDOVER_SECONDS
            slow_vendors.saw_prompt(vendor)
            results.append(future.result())
            notes += journals[vendor]
            continue
        slow_vendors.saw_slow(vendor)
        # Still writing: the push frees the lock it was handed when it ends.
        locks.pop(vendor, None)
        token = uuid.uuid4().hex
        due = call_seconds(rt.settings.http_timeout_seconds)
        schedule_retry(key, vendor, cause, started, 2, due, handover=token)
        ended = partial(_ended_late, rt, key, cause, journals[vendor], token, started)
        future.add_done_callback(ended)
        results.append(PushResult(vendor, PushOutcome.HANDED_OVER, "still writing"))
    if notes:
        rt.store.add_history(key, pushing.history_entry(cause, notes))
    return results


def _ended_late(
    rt: Runtime,
    key: str,
    cause: dict[str, Any],
    journal: list[dict[str, Any]],
    token: str,
    started: float,
    done: Future[PushResult],
) -> None:
    """A write handed over has ended: say so to the job that makes sure of it, keep its
    history entry, and time it."""
    try:
        result = done.result()
        if time.time() - started < HANDOVER_SECONDS:  # handed over, but it was prompt
            slow_vendors.saw_prompt(result.vendor)
        # Kept until the job has surely run: it may wait out a visibility timeout.
        keep = 2 * rt.settings.visibility_timeout_seconds
        rt.store.end_handover(token, result.outcome, keep)
        if journal:
            rt.store.add_history(key, pushing.history_entry(cause, journal))
        if result.outcome in WRITES and cause.get("received_at"):
            metrics.observe_latency(rt.redis, time.time() - float(cause["received_at"]))
    except (RedisError, OSError) as error:  # the job handed over makes sure of the write
        log.warning("push.late_note_failed", key=key, error=str(error))
