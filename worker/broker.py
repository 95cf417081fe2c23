"""The Celery broker transport: kombu's Redis transport, one Redis client per channel.

Its acknowledgement bookkeeping is sent without a transaction.

kombu's Redis channel builds a new ``redis.Redis`` for every publish and every
acknowledgement (``Channel.conn_or_acquire``), and redis-py 5 and later spends tens of
microseconds building each one's response-callback table
(https://github.com/redis/redis-py/issues/3624): a tenth of a worker's CPU per event and a
share of every webhook's, in the benchmark's profiles. A ``redis.Redis`` is safe to share
between threads (each command borrows a connection from the pool), so one per channel and
pool does the same work. Remove this once kombu or redis-py stops paying per client.

Each message a worker takes is recorded as unacknowledged (``ZADD`` and ``HSET``) and
forgotten when acked (``ZREM`` and ``HDEL``); kombu wraps each pair in ``MULTI``/``EXEC``,
four commands more per task. The transaction guards nothing the pipeline does not: the
message already left its queue (``BRPOP``) before the pair is sent, so a crash between the
two commands loses no more than a crash before them; ``restore_visible`` only looks at entries
older than the visibility timeout, never one still being written; and restoring an entry
(``restore_by_tag``) watches the hash, so an ack landing meanwhile aborts it as before.

It is installed under kombu's own names for Redis URLs (``install``), not named in
``broker_transport``: broker URLs keep their ``redis://`` scheme, which Flower reads to
show the queues.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu import transport as kombu_transports
from kombu.transport import redis as kombu_redis

#: Where kombu finds this transport.
TRANSPORT = "worker.broker:Transport"
#: URL schemes this transport serves (Sentinel URLs keep kombu's own).
SCHEMES = ("redis", "rediss")


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    """kombu's acknowledgement emulation, its bookkeeping pairs pipelined without MULTI."""

    @contextmanager
    def pipe_or_acquire(
        self, pipe: redis.client.Pipeline | None = None, client: redis.Redis | None = None
    ) -> Iterator[redis.client.Pipeline]:
        if pipe is not None:  # restore_by_tag's own transaction
            yield pipe
        else:
            with self.channel.conn_or_acquire(client) as acquired:
                yield acquired.pipeline(transaction=False)


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    QoS = QoS
    _shared: tuple[Any, redis.Redis] | None = None

    def _create_client(self, asynchronous: bool = False) -> redis.Redis:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-any-return]
        pool = self.pool
        shared = self._shared
        if shared is None or shared[0] is not pool:  # first use, or kombu made a new pool
            shared = (pool, super()._create_client())
            self._shared = shared
        return shared[1]


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


def install() -> None:
    """Make kombu use this transport for ``redis://`` and ``rediss://`` broker URLs in this
    process (``TRANSPORT_ALIASES`` is kombu's table of URL schemes to transports)."""
    for scheme in SCHEMES:
        kombu_transports.TRANSPORT_ALIASES[scheme] = TRANSPORT
        # kombu remembers each name it resolved: one resolved before this would stay kombu's.
        kombu_transports._transport_cache.pop(scheme, None)
