"""Celery tasks: thin wrappers that bind the correlation id and call the pipeline.

Every task is idempotent — a redelivery after a crash (late ack) or a duplicate delivery
leaves the same vendor records — because the pipeline compares what each vendor holds with
what it should hold before writing, and creates go through an intent + look-up.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from celery import Task

from schemas.envelope import Envelope
from worker import fanout, metrics, pipeline
from worker.celery_app import app, queue_for
from worker.deadletters import DeadLetter, DeadLetters
from worker.logs import log
from worker.retry import decide
from worker.runtime import get_runtime


def schedule_push_retry(
    key: str,
    vendor: str,
    cause: dict[str, Any],
    first_attempt_at: float,
    attempt: int,
    delay: float,
) -> None:
    push_to_vendor.apply_async(
        kwargs={
            "key": key,
            "vendor": vendor,
            "cause": cause,
            "first_attempt_at": first_attempt_at,
            "attempt": attempt,
        },
        queue=queue_for(vendor),
        countdown=delay,
    )


@app.task(name="oppsync.ingest_change", bind=True)
def ingest_change(
    self: Task, envelope: dict[str, Any], first_attempt_at: float | None = None, attempt: int = 1
) -> str:
    """Validate one delivery, merge it, and write every vendor that must change.

    Idempotent: the same envelope twice merges nothing new the second time and writes no
    vendor whose record already holds the state.
    """
    env = Envelope.from_dict(envelope)
    rt = get_runtime()
    first_attempt_at = first_attempt_at or time.time()
    with structlog.contextvars.bound_contextvars(
        correlation_id=env.correlation_id, vendor=env.vendor
    ):
        try:
            outcome = pipeline.ingest(rt, env, patient=attempt <= pipeline.ECHO_PATIENCE)
        except Exception as error:  # noqa: BLE001 - classified by the retry policy
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
                ingest_change.apply_async(
                    kwargs={
                        "envelope": envelope,
                        "first_attempt_at": first_attempt_at,
                        "attempt": attempt + 1,
                    },
                    queue="ingest",
                    countdown=verdict.delay,
                )
                return "retrying"
            DeadLetters(rt.redis).add(
                kind="ingest", vendor=env.vendor, job=envelope, attempts=attempt, error=error
            )
            _note(rt, env, "dead_letter", None, verdict.reason)
            log.error("ingest.dead_letter", reason=verdict.reason, error=str(error))
            return "dead_letter"
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
        }
        results = fanout.push_all(
            rt, outcome.key, outcome.targets, cause=cause, schedule_retry=schedule_push_retry
        )
        if all(r.outcome not in ("retrying", "dead") for r in results):
            metrics.observe_latency(rt.redis, time.time() - env.received_at)
        return outcome.outcome


@app.task(name="oppsync.push_to_vendor")
def push_to_vendor(
    key: str, vendor: str, cause: dict[str, Any], first_attempt_at: float, attempt: int
) -> str:
    """Make one vendor hold the current state of one opportunity (a retry of a failed push).

    Idempotent: reads the state at run time and writes only if the vendor's record differs;
    a create whose answer was lost is looked up before creating again.
    """
    rt = get_runtime()
    result = fanout.push_once(
        rt,
        key,
        vendor,
        cause=cause,
        attempt=attempt,
        first_attempt_at=first_attempt_at,
        schedule_retry=schedule_push_retry,
    )
    if result.outcome in ("created", "updated", "deleted") and cause.get("received_at"):
        metrics.observe_latency(rt.redis, time.time() - float(cause["received_at"]))
    return result.outcome


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
        ingest_change.apply_async(
            kwargs={"envelope": letter.job, "first_attempt_at": now}, queue="ingest"
        )
    else:
        schedule_push_retry(
            letter.job["key"], letter.vendor, letter.job.get("cause", {}), now, 1, 0
        )
    return letter
