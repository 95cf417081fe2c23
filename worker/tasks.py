"""Celery tasks: thin wrappers that bind the correlation id and call the pipeline.

Every task is idempotent — a redelivery after a crash (late ack) or a duplicate delivery
leaves the same vendor records — because the pipeline compares what each vendor holds with
what it should hold before writing, and creates go through an intent + look-up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from celery import Task
from celery.exceptions import Reject
from redis.exceptions import LockError

from schemas.envelope import Envelope
from worker.celery_app import app, queue_for
from worker.errors import REDIS_UNREACHABLE, DeadLettered, InvalidPayload, VendorError
from worker.jobview import event_shown, shown
from worker.logs import log
from worker.retry import decide
from worker.runtime import Runtime, get_runtime
from worker.settings import POLLED_VENDORS
from worker.store import metrics
from worker.store.deadletters import DeadLetter, DeadLetters
from worker.store.keys import poll_lock_name
from worker.sync import fanout
from worker.sync.echoes import ECHO_PATIENCE
from worker.sync.ingest import ingest
from worker.sync.outcomes import WRITES, IngestOutcome, Outcome, PushOutcome
from worker.upkeep import polling
from worker.upkeep.reconcile import Reconciler, exclusive

#: How long a job waits before going back to its queue then, so it does not spin.
REQUEUE_PAUSE_SECONDS = 1.0


@contextmanager
def requeued_while_redis_is_unreachable() -> Iterator[None]:
    """Put the job back on its queue when Redis stops answering halfway through it.

    Late acks keep the job of a worker that dies, but a job that raises is acked as failed
    (``task_acks_on_failure_or_timeout``): an event whose fan-out lost Redis after its merge
    was saved would never reach its targets. Rejected with requeue, kombu puts it back at
    the head of its queue once Redis answers again (and should that fail too, the job is
    still unacknowledged, so the visibility timeout brings it back). Running it again is
    safe: every job is idempotent."""
    try:
        yield
    except REDIS_UNREACHABLE as error:
        log.warning("task.requeued", reason="redis_unreachable", error=str(error))
        time.sleep(REQUEUE_PAUSE_SECONDS)
        raise Reject(str(error), requeue=True) from error


def countdown(delay: float) -> tuple[float, float | None]:
    """The broker countdown for a retry ``delay`` seconds away, and the time before which
    the job must not run (``None``: when it arrives).

    A countdown longer than the broker's visibility timeout would be delivered twice
    (celery#5935), so a longer wait (a vendor's long ``Retry-After``) is made of hops no
    longer than ``OPPSYNC_RETRY_MAX_SECONDS``: a job that arrives early only schedules its
    next hop, without calling the vendor."""
    hop = get_runtime().settings.retry_max_seconds
    if delay <= hop:
        return delay, None
    return hop, time.time() + delay


def schedule_push_retry(
    key: str,
    vendor: str,
    cause: dict[str, Any],
    first_attempt_at: float,
    attempt: int,
    delay: float,
    reserved: dict[str, Any] | None = None,
    handover: str | None = None,
) -> None:
    wait, not_before = countdown(delay)
    push_to_vendor.apply_async(
        kwargs={
            "key": key,
            "vendor": vendor,
            "cause": cause,
            "first_attempt_at": first_attempt_at,
            "attempt": attempt,
            **({"not_before": not_before} if not_before is not None else {}),
            **({"reserved": reserved} if reserved else {}),
            **({"handover": handover} if handover else {}),
        },
        queue=queue_for(vendor),
        countdown=wait,
        **shown(key=key, vendor=vendor, attempt=attempt, handover=handover),
    )


def schedule_ingest_retry(
    envelope: dict[str, Any], first_attempt_at: float, attempt: int, delay: float
) -> None:
    wait, not_before = countdown(delay)
    ingest_change.apply_async(
        kwargs={
            "envelope": envelope,
            "first_attempt_at": first_attempt_at,
            "attempt": attempt,
            **({"not_before": not_before} if not_before is not None else {}),
        },
        queue="ingest",
        countdown=wait,
        **shown(envelope=event_shown(envelope), attempt=attempt),
    )


@app.task(name="oppsync.ingest_change", bind=True, throws=(DeadLettered,))
def ingest_change(
    self: Task,
    envelope: dict[str, Any],
    first_attempt_at: float | None = None,
    attempt: int = 1,
    not_before: float | None = None,
) -> str:
    """Validate one delivery, merge it, and write every vendor that must change.

    Idempotent: the same envelope twice merges nothing new the second time and writes no
    vendor whose record already holds the state. Before ``not_before`` it only waits on.
    """
    if not_before is not None and (left := not_before - time.time()) > 0:
        schedule_ingest_retry(envelope, first_attempt_at or time.time(), attempt, left)
        return IngestOutcome.WAITING
    env = Envelope.from_dict(envelope)
    rt = get_runtime()
    first_attempt_at = first_attempt_at or time.time()
    with (
        structlog.contextvars.bound_contextvars(
            correlation_id=env.correlation_id, vendor=env.vendor
        ),
        requeued_while_redis_is_unreachable(),
    ):
        try:
            outcome = ingest(rt, env, patient=attempt <= ECHO_PATIENCE, hand_over=True)
        except Exception as error:
            verdict = decide(
                error, attempt=attempt, first_attempt_at=first_attempt_at, settings=rt.settings
            )
            if verdict.retry:
                metrics.count(rt.redis, "oppsync_retries_total", vendor=env.vendor)
                log.warning(
                    "ingest.retry",
                    attempt=attempt,
                    reason=verdict.reason,
                    delay=round(verdict.delay, 2),
                    error=str(error),
                )
                schedule_ingest_retry(envelope, first_attempt_at, attempt + 1, verdict.delay)
                return IngestOutcome.RETRYING
            DeadLetters(rt.redis, rt.settings.secret_values()).add(
                kind="ingest", vendor=env.vendor, job=envelope, attempts=attempt, error=error
            )
            _note(rt, env, IngestOutcome.DEAD_LETTER, None, verdict.reason)
            log.error("ingest.dead_letter", reason=verdict.reason, error=str(error))
            raise DeadLettered(f"ingest for {env.vendor}: {verdict.reason}") from error
        try:
            return _fan_out(rt, env, outcome)
        finally:
            if outcome.handed is not None:
                for lock in outcome.handed.locks.values():
                    rt.store.unlock(lock)  # a push that never started (circuit open)


def _fan_out(rt: Runtime, env: Envelope, outcome: Outcome) -> str:
    """Note what an ingest decided and write its targets."""
    _note(rt, env, outcome.outcome, outcome.key, outcome.detail)
    log.info(
        "ingest.done",
        key=outcome.key,
        outcome=outcome.outcome,
        targets=list(outcome.targets),
        detail=outcome.detail,
    )
    if outcome.key is None or not outcome.targets:
        return outcome.outcome
    cause = {
        "vendor": env.vendor,
        "delivery": env.delivery_id,
        "correlation_id": env.correlation_id,
        "received_at": env.received_at,
        "vendor_id": outcome.vendor_id,  # provenance: which record, which fields
        "fields": list(outcome.fields),
    }
    results = fanout.push_all(
        rt,
        outcome.key,
        outcome.targets,
        cause=cause,
        schedule_retry=schedule_push_retry,
        handed=outcome.handed,
    )
    unfinished = (PushOutcome.RETRYING, PushOutcome.DEAD_LETTER, PushOutcome.HANDED_OVER)
    if all(r.outcome not in unfinished for r in results):
        metrics.observe_latency(rt.redis, time.time() - env.received_at)
    if failed := [r for r in results if r.outcome is PushOutcome.DEAD_LETTER]:
        # Recorded as dead letters already; the task ends FAILED so Flower shows it too
        # (the event's other writes were made, and the merge is saved).
        raise DeadLettered(
            "; ".join(f"push to {r.vendor}: {r.detail}" for r in failed)
            + f" (event {outcome.outcome}; other targets written)"
        )
    return outcome.outcome


@app.task(name="oppsync.push_to_vendor", throws=(DeadLettered,))
def push_to_vendor(
    key: str,
    vendor: str,
    cause: dict[str, Any],
    first_attempt_at: float,
    attempt: int,
    not_before: float | None = None,
    reserved: dict[str, Any] | None = None,
    handover: str | None = None,
) -> str:
    """Make one vendor hold the current state of one opportunity (a retry of a failed push,
    or, with ``handover``, a check on a push its event's task handed over).

    Idempotent: reads the state at run time and writes only if the vendor's record differs;
    a create whose answer was lost is looked up before creating again. Before
    ``not_before`` (a long wait's intermediate hop: ``countdown``) it only waits on.
    ``reserved``: the places kept for it in the vendor's quota line (``worker/ratelimit``).
    """
    if not_before is not None and (left := not_before - time.time()) > 0:
        schedule_push_retry(key, vendor, cause, first_attempt_at, attempt, left, reserved, handover)
        return IngestOutcome.WAITING
    with requeued_while_redis_is_unreachable():
        result = _push_once(key, vendor, cause, attempt, first_attempt_at, reserved, handover)
        if result.outcome in WRITES and cause.get("received_at"):
            metrics.observe_latency(get_runtime().redis, time.time() - float(cause["received_at"]))
    if result.outcome is PushOutcome.DEAD_LETTER:
        raise DeadLettered(f"push to {vendor}: {result.detail}")
    return result.outcome


def _push_once(
    key: str,
    vendor: str,
    cause: dict[str, Any],
    attempt: int,
    first_attempt_at: float,
    reserved: dict[str, Any] | None = None,
    handover: str | None = None,
) -> fanout.PushResult:
    """One attempt at one vendor in this process; a failure is retried on its queue."""
    return fanout.push_once(
        get_runtime(),
        key,
        vendor,
        cause=cause,
        attempt=attempt,
        first_attempt_at=first_attempt_at,
        schedule_retry=schedule_push_retry,
        reserved=reserved,
        handover=handover,
    )


def _note(rt: Any, env: Envelope, outcome: str, key: str | None, detail: str) -> None:
    metrics.count(rt.redis, "oppsync_events_processed_total", vendor=env.vendor, outcome=outcome)
    rt.store.note_event(
        {
            "at": time.time(),
            "vendor": env.vendor,
            "delivery": env.delivery_id,
            "outcome": outcome,
            "key": key,
            "detail": detail,
            "correlation_id": env.correlation_id,
        }
    )


def replay_dead_letter(letter_id: str) -> DeadLetter | None:
    """Put a dead letter's job back on its queue; ``None`` when no such letter remains.

    Taking the letter and enqueueing happen once per letter, so replaying twice runs it
    once; the job itself is idempotent, so even that run cannot create a duplicate.
    """
    rt = get_runtime()
    letter = DeadLetters(rt.redis).take(letter_id)
    if letter is None:
        return None
    now = time.time()
    if letter.kind == "ingest":
        enqueue_ingest(letter.job, first_attempt_at=now)
    else:
        schedule_push_retry(
            letter.job["key"], letter.vendor, letter.job.get("cause", {}), now, 1, 0
        )
    return letter


#: How long one vendor's poll may hold its lock (a crashed poll frees it by then).
POLL_LOCK_SECONDS = 600


def enqueue_ingest(envelope: Envelope | dict[str, Any], **more: Any) -> None:
    """Queue one envelope for ``ingest_change``, as the receiver does for a webhook."""
    data = envelope if isinstance(envelope, dict) else envelope.to_dict()
    ingest_change.apply_async(
        kwargs={"envelope": data, **more}, queue="ingest", **shown(envelope=event_shown(data))
    )


def ingest_now(envelope: Envelope) -> str:
    """Run ``ingest_change`` for one envelope in this process (merge, then the fan-out) and
    return its outcome; what fails is retried on the queues as for any event."""
    result = ingest_change.apply(kwargs={"envelope": envelope.to_dict()})
    if isinstance(result.result, Reject):  # Redis stopped answering: nothing to requeue here
        raise result.result
    if isinstance(result.result, DeadLettered):  # recorded: the caller reports it
        return IngestOutcome.DEAD_LETTER
    return str(result.get())


def push_now(key: str, vendor: str, cause: dict[str, Any]) -> str:
    """One push in this process; a failure is retried on the vendor's queue as usual."""
    return _push_once(key, vendor, cause, 1, time.time()).outcome


@app.task(name="oppsync.poll_vendor")
def poll_vendor(vendor: str, full: bool = False) -> str:
    """List one polled vendor's records and queue each change for ``ingest_change``.

    Idempotent: a record already merged is recognised as unchanged, and a change queued twice
    merges once. One poll per vendor at a time; a listing that fails waits for the next beat
    (no delete is inferred from it).
    """
    rt = get_runtime()
    if vendor not in POLLED_VENDORS or not rt.settings.enabled(vendor):
        return "not polled"
    lock = rt.redis.lock(poll_lock_name(vendor), timeout=POLL_LOCK_SECONDS)
    if not lock.acquire(blocking=False):
        return "busy"
    try:
        report = polling.poll(rt, vendor, enqueue_ingest, full=full)
    except (VendorError, InvalidPayload) as error:
        log.warning("poll.failed", vendor=vendor, reason=error.reason, error=str(error))
        return "failed"
    finally:
        try:
            lock.release()
        except LockError:
            pass  # expired while held: the next poll already owns it
    log.info(
        "poll.done",
        vendor=vendor,
        full=report.full,
        listed=report.listed,
        queued=report.queued,
        deletes=report.deletes,
        invalid=report.invalid,
        decided=dict(report.decided),
    )
    return report.summary()


@app.task(name="oppsync.reconcile")
def reconcile_opportunities(vendor: str | None = None) -> str:
    """Compare every linked opportunity with what the vendors hold, and repair drift.

    Idempotent: a second run finds nothing to repair (changes are merged by the pipeline,
    pushes write only what differs). One run at a time: a run while another holds the lock
    returns ``busy``.
    """
    rt = get_runtime()
    with exclusive(rt) as keep_alive:
        if keep_alive is None:
            return "busy"
        reconciler = Reconciler(
            rt, feed=ingest_now, push=push_now, vendor=vendor, keep_alive=keep_alive
        )
        report = reconciler.run()
    log.info(
        "reconcile.done",
        opportunities=report.opportunities,
        compared=report.compared,
        repairs=len(report.repairs),
        errors=len(report.errors),
    )
    return report.summary()
