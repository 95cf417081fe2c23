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

A killed worker's jobs come back about a minute after it died, not after the visibility
timeout (an hour, kept longer than any retry's countdown): each consuming process says it
lives every ``unacked_sweep_seconds`` and records itself as the owner of each job it takes,
inside the job's kept copy (no command more per job). A process that has not said so for
``DEAD_AFTER_SWEEPS`` sweeps is dead, and another gives its jobs back to their queues. kombu
5.6 reads no option for how often it sweeps (it tries every 10 s and restores every tenth
time), so the sweep is timed here.

It is installed under kombu's own names for Redis URLs (``install``), not named in
``broker_transport``: broker URLs keep their ``redis://`` scheme, which Flower reads to
show the queues.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu import transport as kombu_transports
from kombu.transport import redis as kombu_redis
from kombu.utils.json import loads

from worker.logs import log
from worker.store.keys import CONSUMERS_ALIVE

#: Where kombu finds this transport.
TRANSPORT = "worker.broker:Transport"
#: URL schemes this transport serves (Sentinel URLs keep kombu's own).
SCHEMES = ("redis", "rediss")


#: The message property naming the process that took a job (in the unacked hash's copy).
OWNER_PROPERTY = "x-oppsync-owner"
#: Sweeps a consuming process may miss before its jobs are given back.
DEAD_AFTER_SWEEPS = 6
#: How often a consumer sweeps when the broker options do not say (seconds).
DEFAULT_SWEEP_SECONDS = 10.0

_owner: tuple[int, str] | None = None


def consumer_id() -> str:
    """This process's name as the owner of the jobs it takes (host, pid, and a nonce, since
    a pid is reused)."""
    global _owner
    if _owner is None or _owner[0] != os.getpid():
        _owner = (os.getpid(), f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
    return _owner[1]


class QoS(kombu_redis.QoS):  # type: ignore[misc]
    """kombu's acknowledgement emulation, its bookkeeping pairs pipelined without MULTI; each
    job kept with its owner, and the jobs of a consumer that died given back."""

    _last_sweep = 0.0

    def append(self, message: Any, delivery_tag: str) -> None:
        # The kept copy (``[payload, exchange, routing key]``, which kombu restores) names
        # its owner; the next process to take it after a restore writes its own name.
        properties = message._raw.get("properties")
        if isinstance(properties, dict):
            properties[OWNER_PROPERTY] = consumer_id()
        super().append(message, delivery_tag)

    def restore_visible(self, start: int = 0, num: int | None = 10, interval: int = 10) -> None:
        """kombu calls this every 10 s and after each empty poll: once per sweep, say this
        consumer lives, give back a dead one's jobs, and restore what outlived the
        visibility timeout (kombu's own sweep, which otherwise runs every tenth call)."""
        sweep = float(getattr(self.channel, "unacked_sweep_seconds", DEFAULT_SWEEP_SECONDS))
        if time.monotonic() - self._last_sweep < 0.9 * sweep:
            return
        self._last_sweep = time.monotonic()
        with self.channel.conn_or_acquire() as client:
            dead = self._say_alive(client, DEAD_AFTER_SWEEPS * sweep)
            if dead:
                self._give_back(client, dead)
        super().restore_visible(start, num, interval=1)

    def _say_alive(self, client: redis.Redis, dead_after: float) -> set[str]:
        """Say this consumer lives; the consumers silent longer than ``dead_after``. Times
        are Redis's clock: the workers' hosts may disagree by more than a sweep."""
        seconds, micros = client.time()  # type: ignore[misc]
        now = seconds + micros / 1e6
        pipe = client.pipeline(transaction=False)
        pipe.hset(CONSUMERS_ALIVE, consumer_id(), repr(now))
        pipe.hgetall(CONSUMERS_ALIVE)
        seen: dict[Any, Any] = pipe.execute()[1]
        return {_text(owner) for owner, at in seen.items() if float(_text(at)) < now - dead_after}

    def _give_back(self, client: redis.Redis, dead: set[str]) -> None:
        """Put every job a dead consumer held back on its queue, then forget that consumer."""
        given = 0
        for tag, kept in client.hscan_iter(self.unacked_key, count=500):
            # a cheap look first (each name has a nonce); the transaction reads it properly
            if any(owner in _text(kept) for owner in dead):
                given += self._give_back_one(client, _text(tag), dead)
        client.hdel(CONSUMERS_ALIVE, *dead)
        log.warning("broker.dead_consumer_jobs_given_back", consumers=sorted(dead), jobs=given)

    def _give_back_one(self, client: redis.Redis, tag: str, dead: set[str]) -> int:
        """kombu's ``restore_by_tag``, done only while the job is still a dead one's: a job
        given back meanwhile may already be a live consumer's."""
        given = 0

        def restore(pipe: redis.client.Pipeline) -> None:
            nonlocal given
            kept: str | bytes | None = pipe.hget(self.unacked_key, tag)  # type: ignore[assignment]
            if kept is None:
                return
            payload, exchange, routing_key = loads(_text(kept))
            if payload.get("properties", {}).get(OWNER_PROPERTY) not in dead:
                return
            pipe.multi()
            self._remove_from_indices(tag, pipe)
            self.channel._do_restore_message(payload, exchange, routing_key, pipe)
            given = 1

        client.transaction(restore, self.unacked_key)
        return given

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
    #: How often a consumer sweeps for jobs to give back (``QoS.restore_visible``).
    unacked_sweep_seconds = DEFAULT_SWEEP_SECONDS
    from_transport_options = (*kombu_redis.Channel.from_transport_options, "unacked_sweep_seconds")

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

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        # kombu's own timer fires every 10 s; a shorter sweep needs its own
        sweep = connection.client.transport_options.get("unacked_sweep_seconds")
        if sweep and float(sweep) < DEFAULT_SWEEP_SECONDS:
            loop.call_repeatedly(float(sweep), self.cycle.maybe_restore_messages)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def install() -> None:
    """Make kombu use this transport for ``redis://`` and ``rediss://`` broker URLs in this
    process (``TRANSPORT_ALIASES`` is kombu's table of URL schemes to transports)."""
    for scheme in SCHEMES:
        kombu_transports.TRANSPORT_ALIASES[scheme] = TRANSPORT
        # kombu remembers each name it resolved: one resolved before this would stay kombu's.
        kombu_transports._transport_cache.pop(scheme, None)
