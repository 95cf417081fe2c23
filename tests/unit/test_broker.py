"""The broker transport: kombu's Redis transport reusing one client per channel, and its
acknowledgement bookkeeping without transactions."""

from __future__ import annotations

from typing import Any

import redis
from kombu import Connection, Exchange, Queue

from worker import broker
from worker.sandbox.embedded_redis import EmbeddedRedis


def test_messages_go_through_and_every_publish_reuses_one_client(
    redis_server: EmbeddedRedis,
) -> None:
    queue = Queue("unit-broker", Exchange("unit-broker"), routing_key="unit-broker")
    with Connection(redis_server.url, transport=broker.TRANSPORT) as conn:
        channel = conn.default_channel
        assert isinstance(channel, broker.Channel)
        producer = conn.Producer(channel)
        for n in range(3):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key="unit-broker",
                             declare=[queue])  # fmt: skip
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
        received: list[Any] = []

        def take(body: Any, message: Any) -> None:
            received.append(body)
            message.ack()

        with conn.Consumer(queue, callbacks=[take]):
            while len(received) < 3:
                conn.drain_events(timeout=5)
        assert received == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_a_new_pool_gets_a_new_client(redis_server: EmbeddedRedis) -> None:
    with Connection(redis_server.url, transport=broker.TRANSPORT) as conn:
        channel = conn.default_channel
        with channel.conn_or_acquire() as before:
            pass
        channel._pool = None  # what kombu does when it drops its pool
        with channel.conn_or_acquire() as after:
            assert after is not before
            assert after.connection_pool is channel.pool
            assert after.ping()


def test_a_taken_message_stays_restorable_until_acked_without_transactions(
    redis_server: EmbeddedRedis,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    with Connection(redis_server.url, transport=broker.TRANSPORT) as conn:
        channel = conn.default_channel
        queue = _publish_one(conn, "unit-acks")
        taken: list[Any] = []
        with conn.Consumer(queue, callbacks=[lambda body, msg: taken.append(msg)]):
            transactions = _calls(client, "multi")
            _drain_until_taken(conn, taken)
            tag = taken[0].delivery_tag
            # Taken, not acked: a worker dying now leaves it for restore_visible.
            assert client.hexists(channel.unacked_key, tag)
            assert client.zscore(channel.unacked_index_key, tag) is not None
            taken[0].ack()
            assert _calls(client, "multi") == transactions
        assert not client.hexists(channel.unacked_key, tag)
        assert client.zscore(channel.unacked_index_key, tag) is None


def test_an_unacked_message_is_restored_to_its_queue(redis_server: EmbeddedRedis) -> None:
    with Connection(redis_server.url, transport=broker.TRANSPORT) as conn:
        channel = conn.default_channel
        queue = _publish_one(conn, "unit-restore")
        taken: list[Any] = []
        with conn.Consumer(queue, callbacks=[lambda body, msg: taken.append(msg)]):
            _drain_until_taken(conn, taken)
        channel.qos.restore_by_tag(taken[0].delivery_tag)
        assert redis.Redis.from_url(redis_server.url).llen("unit-restore") == 1
        assert not redis.Redis.from_url(redis_server.url).hexists(
            channel.unacked_key, taken[0].delivery_tag
        )


def _publish_one(conn: Connection, name: str) -> Queue:
    """Queue ``name`` with one message in it."""
    queue = Queue(name, Exchange(name), routing_key=name)
    conn.Producer(conn.default_channel).publish(
        {"queue": name}, exchange=queue.exchange, routing_key=name, declare=[queue]
    )
    return queue


def _drain_until_taken(conn: Connection, taken: list[Any]) -> None:
    while not taken:
        conn.drain_events(timeout=5)


def _calls(client: redis.Redis, command: str) -> int:
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
