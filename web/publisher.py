"""``Publisher``: one web process's pool of kombu producers for ``oppsync.ingest_change``."""

from __future__ import annotations

import threading

import structlog
from kombu import Producer

from schemas.envelope import Envelope

log = structlog.get_logger("oppsync.web")


class Publisher:
    """Publishes ``oppsync.ingest_change`` for one web process over a pool of kombu producers.

    ``apply_async`` without a producer borrows one from Celery's pool and returns it on every
    call, and declares the queue on every call: measured, a tenth of the receiver's CPU per
    delivery. The receiver keeps producers of its own instead, each on its own broker
    connection (kombu producers are not safe to share between concurrent requests; a
    connection of our own cannot exhaust Celery's pool), and a request takes an idle one for
    the length of its publish. A pool rather than one per thread: the gevent worker runs a
    greenlet per connection, and a producer per greenlet would open a Redis connection per
    client connection and keep it for good. The pool only grows to the number of publishes
    in flight at once. The message is the one ``apply_async`` always sends, with kombu's
    retry policy (``task_publish_retry_policy``): during a Redis outage ``publish`` raises
    after it. A producer whose publish failed is dropped and a new one is built later:
    kombu closes the channel of a connection that gave up, and a producer kept on it failed
    every later publish with ``AttributeError`` (a 500 per webhook, for good, after one
    Redis restart).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[Producer] = []
        self._producers: list[Producer] = []

    def _take(self) -> Producer:
        """An idle producer, or a new one when every producer is busy."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        from worker.celery_app import app as celery

        producer = celery.amqp.Producer(celery.connection_for_write())
        with self._lock:
            self._producers.append(producer)
        return producer

    def _give_back(self, producer: Producer) -> None:
        with self._lock:
            if producer in self._producers:
                self._idle.append(producer)

    def close(self) -> None:
        """Close every producer's broker connection (tests; the publisher is done with)."""
        with self._lock:
            producers, self._producers, self._idle = self._producers, [], []
        for producer in producers:
            producer.connection.release()

    def _drop(self, producer: Producer) -> None:
        """Forget this producer and close its connection, whatever state it is in."""
        with self._lock:
            if producer in self._producers:
                self._producers.remove(producer)
        try:
            producer.connection.release()
        except Exception:  # a broken connection may fail to close; it is gone anyway
            log.debug("publisher.release_failed", exc_info=True)

    def publish(self, envelope: Envelope) -> None:
        # Imported here: worker.celery_app reads the process environment at import.
        from worker.tasks import ingest_change

        producer = self._take()
        try:
            ingest_change.apply_async(
                kwargs={"envelope": envelope.to_dict()},
                queue="ingest",
                producer=producer,
                # The worker declares its queues; on Redis a queue is the list LPUSH creates
                # and publishing by queue name needs no binding: declaring per call only cost
                # CPU.
                declare=[],
                # What Flower and task events show instead of the arguments: Celery's
                # saferepr of a 2 KB payload cost more than the rest of the message, and the
                # payload is a vendor's record (names, emails) that has no business in task
                # metadata.
                argsrepr="()",
                kwargsrepr=f"{{'envelope': '{envelope.vendor} {envelope.delivery_id}'}}",
            )
        except BaseException:
            self._drop(producer)
            raise
        self._give_back(producer)
