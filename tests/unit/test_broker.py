"""The broker transport: kombu's Redis transport reusing one client per channel."""

from __future__ import annotations

from kombu import Connection, Exchange, Queue

from worker import broker
from worker.embedded_redis import EmbeddedRedis


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
        received = []
        with conn.Consumer(queue, callbacks=[lambda body, msg: (received.append(body), msg.ack())]):
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
