"""Per-record and per-(record, vendor) locks in Redis, taken with a read, freed by token."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

import redis
from redis.exceptions import NoScriptError

from worker.store.keys import lock_name, opp_key, pushing_key
from worker.store.records import HeldLock, Record, record_from

#: How long a per-record lock is held at most (a crashed holder frees it by then).
LOCK_TIMEOUT_SECONDS = 60


PUSH_PENDING_SECONDS = 30  # longer than a push waits for its lock (runtime.LOCK_WAIT_SECONDS)


# KEYS: the lock, the opportunity's hash. ARGV: token, lock time in ms. The hash's fields
# when the lock was free (taken now), else false: one round trip for the common case.
LOCK_AND_READ = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('HGETALL', KEYS[2])
end
return false
"""


# KEYS: the record's lock, its hash, then one lock per vendor. ARGV: the record lock's
# token, lock time in ms, then one token per vendor lock. While the record's lock is still
# ours: free it, take each vendor's lock that is free, and read the hash under them (a push
# that held one of them may have written it since we read). False when the lock was lost.
HAND_OVER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return false
end
redis.call('DEL', KEYS[1])
local taken = {}
for i = 3, #KEYS do
  taken[i - 2] = redis.call('SET', KEYS[i], ARGV[i], 'NX', 'PX', ARGV[2]) and 1 or 0
end
return {taken, redis.call('HGETALL', KEYS[2])}
"""


# KEYS: the lock. ARGV: its holder's token. Frees the lock only if that holder still has it.
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Locks:
    """The store's base: the Redis client, its scripts, locks and the pushes that wait."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._lock_and_read = client.register_script(LOCK_AND_READ)
        self._unlock = client.register_script(UNLOCK)
        self._hand_over = client.register_script(HAND_OVER)

    def lock_and_read(
        self, key: str, vendor: str | None, ttl_seconds: float
    ) -> tuple[HeldLock, Record] | None:
        """Take the record's lock (or its lock for one vendor) and read the record in one
        round trip; None when the lock is held."""
        lock = HeldLock(lock_name(key, vendor), uuid.uuid4().hex)
        fields = self._lock_and_read(
            keys=[lock.name, opp_key(key)], args=[lock.token, int(ttl_seconds * 1000)]
        )
        if fields is None:
            return None
        pairs = iter(fields)  # type: ignore[call-overload]
        return lock, record_from(key, dict(zip(pairs, pairs, strict=True)))

    def unlock(self, lock: HeldLock, pipe: redis.client.Pipeline | None = None) -> None:
        """Free ``lock``; within ``pipe`` when given (no round trip of its own: run the
        pipeline with ``run``, which loads the script if Redis lost it)."""
        if not lock.held:
            return
        lock.held = False
        if pipe is None:
            self._unlock(keys=[lock.name], args=[lock.token])
        else:
            # evalsha directly: a Script in a pipeline costs a SCRIPT EXISTS round trip.
            pipe.evalsha(self._unlock.sha, 1, lock.name, lock.token)

    def run(
        self,
        pipe: redis.client.Pipeline,
        again: Callable[[], Any] | Mapping[int, Callable[[], Any] | None] | None = None,
    ) -> list[Any]:
        """Execute ``pipe``, whose scripts are called by their hash; when Redis lacks a
        script (a new or restarted Redis), its ``again`` (the one, or the one at its
        position) runs it through the loading path and its answer takes the script's
        place. The results."""
        results: list[Any] = pipe.execute(raise_on_error=False)
        for at, result in enumerate(results):
            fix = again.get(at) if isinstance(again, Mapping) else again
            if isinstance(result, NoScriptError) and fix is not None:
                results[at] = fix()
            elif isinstance(result, Exception):
                raise result
        return results

    def _unlock_again(self, lock: HeldLock | None) -> Callable[[], Any] | None:
        """What frees ``lock`` when a pipeline's ``unlock`` found the script missing."""
        if lock is None:
            return None
        return lambda: self._unlock(keys=[lock.name], args=[lock.token])

    def claim_push(self, key: str, vendor: str) -> bool:
        """True when no other push of ``key`` to ``vendor`` is waiting for its turn."""
        return bool(self.redis.set(pushing_key(key, vendor), "1", nx=True, ex=PUSH_PENDING_SECONDS))

    def release_push(self, key: str, vendor: str) -> None:
        self.redis.delete(pushing_key(key, vendor))
