"""The Celery app the Procfile names (``celery -A worker.celery_app``): settings, then the factory.

A worker, beat or Flower started without the Procfile's pre-flight still stops with every
problem listed (exit 2), not with Celery's "module 'worker' has no attribute 'celery_app'".
"""

from __future__ import annotations

from worker import broker
from worker.celery_factory import make_celery
from worker.logs import configure as configure_logs
from worker.preflight import settings_or_exit
from worker.queues import QUEUES, queue_for
from worker.settings import get_settings

settings = settings_or_exit(get_settings)
configure_logs(settings.secret_values(), settings.log_level)
broker.install()  # kombu's Redis transport, one Redis client per channel
app = make_celery(settings)

__all__ = ["QUEUES", "app", "queue_for"]
