"""The broker transport: kombu's Redis transport reusing one client per channel, and its
acknowledgement bookkeeping without transactions."""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from kombu import Connection, Exchange, Queue

from worker import broker
from worker.sandbox.embedded_redis import EmbeddedRedis
from worker.store.keys import CONSUMERS_ALIVE


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


def test_a_dead_consumers_jobs_are_given_back_and_a_live_ones_kept(
    redis_server: EmbeddedRedis,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.delete(CONSUMERS_ALIVE)
    with Connection(redis_server.url, transport=broker.TRANSPORT) as conn:
        channel = conn.default_channel
        dead_queue, live_queue = _publish_one(conn, "unit-dead"), _publish_one(conn, "unit-live")
        taken: list[Any] = []
        with conn.Consumer([dead_queue, live_queue], callbacks=[lambda b, m: taken.append(m)]):
            while len(taken) < 2:
                conn.drain_events(timeout=5)
        # given each job's kept copy names its owner: one a consumer that stopped saying it
        # lives two minutes ago, the other this live one
        kept = {m.delivery_info["routing_key"]: m.delivery_tag for m in taken}
        dead_tag = kept["unit-dead"]
        copy = json.loads(client.hget(channel.unacked_key, dead_tag) or b"")  # type: ignore[arg-type]
        assert copy[0]["properties"][broker.OWNER_PROPERTY] == broker.consumer_id()
        copy[0]["properties"][broker.OWNER_PROPERTY] = "gone-host:1:deadbeef"
        client.hset(channel.unacked_key, dead_tag, json.dumps(copy))
        client.hset(CONSUMERS_ALIVE, "gone-host:1:deadbeef", repr(time.time() - 120))
        # when the live consumer sweeps
        channel.qos._last_sweep = 0.0
        channel.qos.restore_visible()
        # then the dead one's job is back on its queue, the live one's still kept as taken
        assert client.llen("unit-dead") == 1
        assert not client.hexists(channel.unacked_key, dead_tag)
        assert client.llen("unit-live") == 0
        assert client.hexists(channel.unacked_key, kept["unit-live"])
        alive: list[bytes] = client.hkeys(CONSUMERS_ALIVE)  # type: ignore[assignment]
        assert alive == [broker.consumer_id().encode()]


def test_a_job_retaken_by_a_live_consumer_is_not_given_back(redis_server: EmbeddedRedis) -> None:
    client = redis.Redis.from_url(redis_server.url)
    with Connection(redis_server.url, transport=broker.TRANSPORT) as conn:
        channel = conn.default_channel
        taken: list[Any] = []
        with conn.Consumer(
            _publish_one(conn, "unit-retaken"), callbacks=[lambda b, m: taken.append(m)]
        ):
            _drain_until_taken(conn, taken)
        # a sweep that saw the job as a dead consumer's finds it taken again since: kept
        tag = taken[0].delivery_tag
        assert channel.qos._give_back_one(client, tag, {"gone-host:1:deadbeef"}) == 0
        assert client.hexists(channel.unacked_key, tag)
        assert client.llen("unit-retaken") == 0


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
