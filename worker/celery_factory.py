"""``make_celery(settings)``: the Celery app with its broker, crash-safety settings and schedule.

Queues (``worker/queues.py``): ``ingest`` (one task per event: validate, merge, fan out
concurrently) and one ``push.<vendor>`` per vendor for retries, so a vendor that is down never
delays the others. Late acks and reject-on-worker-lost mean a worker that dies mid-job loses
nothing; the broker's visibility timeout is kept longer than any retry countdown (celery#5935).
"""

from __future__ import annotations

import threading

from celery import Celery
from celery.signals import worker_init, worker_ready, worker_shutting_down

from worker.settings import POLLED_VENDORS, Settings

HEARTBEAT_SECONDS = 5.0


def make_celery(settings: Settings) -> Celery:
    """The Celery app configured from ``settings``; the worker's heartbeat is connected."""
    app = Celery("oppsync", broker=settings.redis_url, include=["worker.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_ignore_result=True,
        task_default_queue="ingest",
        task_create_missing_queues=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=settings.prefetch,
        # Flower shows tasks from the worker's events; the extra "sent" event from every
        # publisher cost the receiver a quarter of its time per webhook (bench), so it is off.
        worker_send_task_events=True,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_soft_shutdown_timeout=settings.soft_shutdown_seconds,
        broker_connection_retry_on_startup=True,
        # A killed worker's unacked jobs come back once it has missed six sweeps (a sweep
        # every OPPSYNC_UNACKED_SWEEP_SECONDS, worker/broker.py), and any job once older than
        # the visibility timeout.
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_seconds,
            "unacked_sweep_seconds": settings.unacked_sweep_seconds,
        },
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        timezone="UTC",
    )
    app.conf.beat_schedule = beat_schedule(settings)
    worker_init.connect(_upgrade_store, dispatch_uid="oppsync-upgrade-store")
    worker_ready.connect(_start_heartbeat, dispatch_uid="oppsync-heartbeat-start")
    worker_shutting_down.connect(_stop_heartbeat, dispatch_uid="oppsync-heartbeat-stop")
    return app


def beat_schedule(settings: Settings) -> dict[str, dict[str, object]]:
    schedule: dict[str, dict[str, object]] = {}
    for vendor in POLLED_VENDORS:
        seconds = settings.vendor[vendor].poll_seconds
        if settings.enabled(vendor) and seconds > 0:
            schedule[f"poll-{vendor}"] = {
                "task": "oppsync.poll_vendor",
                "schedule": seconds,
                "args": (vendor,),
                "options": {"queue": "poll"},
            }
    reconcile_seconds = settings.reconcile_seconds
    if reconcile_seconds > 0:
        schedule["reconcile"] = {
            "task": "oppsync.reconcile",
            "schedule": reconcile_seconds,
            "options": {"queue": "poll"},
        }
    return schedule


_stop_beating = threading.Event()


def _beat_forever() -> None:
    from worker.runtime import get_runtime

    while not _stop_beating.is_set():
        try:
            get_runtime().store.beat()
        except Exception:  # noqa: BLE001 - Redis down: readiness will say so
            pass
        _stop_beating.wait(HEARTBEAT_SECONDS)


def _upgrade_store(**_: object) -> None:
    """Before any job: the previous release's data moved into today's layout (once)."""
    from worker.runtime import get_runtime
    from worker.store.upgrade import upgrade

    upgrade(get_runtime().redis)


def _start_heartbeat(**_: object) -> None:
    """Readiness (``/readyz``) needs a worker seen within 30 s."""
    _stop_beating.clear()
    threading.Thread(target=_beat_forever, name="oppsync-heartbeat", daemon=True).start()


def _stop_heartbeat(**_: object) -> None:
    _stop_beating.set()


__all__ = ["beat_schedule", "make_celery"]
