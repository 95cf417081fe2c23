"""The receiver's ``oppsync.ingest_change`` message is the one Celery's ``apply_async`` pushes.

Both go to a real Redis: Celery through kombu's Redis transport (as oppsync's worker and the
receiver used to publish), ours as the receiver's script pushes it. Only what is new per
message may differ (task id, delivery tag) and what names the publishing process.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection

from schemas.envelope import Envelope
from web.publisher import QUEUE, Publisher
from worker import broker
from worker.sandbox.embedded_redis import EmbeddedRedis
from worker.settings import get_settings

#: This module's database in the session Redis.
DB = 6
ENVELOPE = Envelope(
    vendor="siro",
    scheme="standard",
    delivery_id='msg_"quoted" % 1',
    received_at=1_796_000_000.25,
    correlation_id="c0ffee",
    payload={"id": "S1", "name": "Dana’s deal", "amount": 12.5, "tags": ["a", None]},
)
#: Per message or per publishing process (thread), whoever publishes.
FRESH = {"id", "root_id", "correlation_id", "delivery_tag", "reply_to"}


@pytest.fixture
def client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url_for(DB))
    client.flushdb()
    yield client
    client.close()


def pushed(client: redis.Redis) -> dict[str, Any]:
    (raw,) = client.lrange(QUEUE, 0, -1)  # type: ignore[misc]
    client.delete(QUEUE)
    return json.loads(raw)  # type: ignore[no-any-return]


def without(values: dict[str, Any], names: set[str]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in names}


def test_publisher_message_is_what_apply_async_pushes(
    client: redis.Redis, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (oppsync's Celery app reads the environment when first imported)
    monkeypatch.setenv("REDIS_URL", redis_server.url_for(DB))
    monkeypatch.setenv("OPPSYNC_VENDORS", "")
    get_settings.cache_clear()
    from worker.celery_app import app as celery
    from worker.tasks import ingest_change

    get_settings.cache_clear()

    # given the message Celery pushes for the task, as the receiver published it before
    broker.install()
    with Connection(redis_server.url_for(DB)) as connection:
        ingest_change.apply_async(
            kwargs={"envelope": ENVELOPE.to_dict()},
            queue=QUEUE,
            producer=celery.amqp.Producer(connection),
            declare=[],
            argsrepr="()",
            kwargsrepr=f"{{'envelope': '{ENVELOPE.vendor} {ENVELOPE.delivery_id}'}}",
        )
    celerys = pushed(client)
    # when the receiver's message for the same envelope is pushed where Celery pushed
    client.lpush(QUEUE, Publisher().message(ENVELOPE))
    ours = pushed(client)
    # then the worker reads the same task, arguments and options from it
    assert without(ours, {"headers", "properties", "body"}) == without(
        celerys, {"headers", "properties", "body"}
    )
    assert without(ours["headers"], FRESH) == without(celerys["headers"], FRESH)
    assert ours["headers"]["root_id"] == ours["headers"]["id"]
    assert ours["properties"]["correlation_id"] == ours["headers"]["id"]
    # (Celery also copies argsrepr and kwargsrepr into the properties; nothing reads them)
    theirs = without(celerys["properties"], FRESH | {"argsrepr", "kwargsrepr"})
    assert without(ours["properties"], FRESH) == theirs
    decode = base64.b64decode
    assert json.loads(decode(ours["body"])) == json.loads(decode(celerys["body"]))
    assert json.loads(decode(ours["body"]))[1]["envelope"] == ENVELOPE.to_dict()


def test_publisher_messages_are_new_tasks_each_time() -> None:
    # when two messages are made for the same envelope
    publisher = Publisher()
    first, second = (json.loads(publisher.message(ENVELOPE)) for _ in range(2))
    # then each is a task of its own (Celery and Flower key them by id)
    assert first["headers"]["id"] != second["headers"]["id"]
    assert first["properties"]["delivery_tag"] != second["properties"]["delivery_tag"]
