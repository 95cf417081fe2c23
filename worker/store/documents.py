"""The canonical document of each opportunity: read, and saved with the lock hand-over."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from schemas.opportunity import dump
from worker.store.keys import OPPS_INDEX, field, lock_name, opp_key
from worker.store.locks import LOCK_TIMEOUT_SECONDS, Locks
from worker.store.packing import joined, micros, pack_dense, pieces, short_digest, unpack
from worker.store.records import SAME_AS_CHANGE, HandedOver, HeldLock, Record, record_from


class Documents(Locks):
    """Load and save the merged state; the index of every opportunity."""

    def load(self, key: str) -> Record:
        return record_from(key, self.redis.hgetall(opp_key(key)))  # type: ignore[arg-type]

    def save_state(
        self,
        record: Record,
        *,
        source: str,
        source_seen: datetime | None,
        source_holds: str,
        event: dict[str, Any],
        unlock: HeldLock | None = None,
        hand_over: tuple[str, ...] = (),
    ) -> HandedOver | None:
        """Store the merged canonical state and what the source vendor now holds; free
        ``unlock`` in the same round trip. With ``hand_over`` (the vendors to write next),
        that round trip also takes each of their (record, vendor) locks that is free and
        reads the record under them: the fan-out's pushes start with
        their lock and the record instead of a round trip each."""
        changed = bool(event.get("fields"))
        doc = {
            "state": dump(record.state),
            "times": record.times,
            "rules": record.rules,
            "sources": record.sources,
            "last_change": event if changed else record.last_change,
            "last_event": SAME_AS_CHANGE if changed else event,
        }
        if record.unmapped:
            doc["unmapped"] = record.unmapped
        stored = pieces(pack_dense(doc))
        values = {**stored, field("w", source): short_digest(source_holds)}
        if record.deleted:
            values["deleted"] = "1"
        if source_seen is not None:
            values[field("n", source)] = micros(source_seen)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(opp_key(record.key), mapping=values)
        # The document ends at its first missing piece: delete the one after it (and any
        # left from a longer one), in the same round trip.
        after = range(len(stored), max(len(stored), record.pieces) + 1)
        pipe.hdel(opp_key(record.key), *(f"d{n}" for n in after))
        record.pieces = len(stored)
        if not record.exists:
            pipe.sadd(OPPS_INDEX, record.key)
        if unlock is None or not unlock.held or not hand_over:
            if unlock is not None:
                self.unlock(unlock, pipe)
            self.run(pipe, self._unlock_again(unlock))
            return None
        unlock.held = False
        locks = {v: HeldLock(lock_name(record.key, v), uuid.uuid4().hex) for v in hand_over}
        keys = [unlock.name, opp_key(record.key), *(lock.name for lock in locks.values())]
        args = [unlock.token, str(LOCK_TIMEOUT_SECONDS * 1000)]
        args += [lock.token for lock in locks.values()]
        # evalsha directly: a Script in a pipeline costs a SCRIPT EXISTS round trip.
        pipe.evalsha(self._hand_over.sha, len(keys), *keys, *args)
        answer = self.run(pipe, lambda: self._hand_over(keys=keys, args=args))[-1]
        if not answer:
            return None  # our lock had expired: each push takes its own
        taken, fields = answer
        pairs = iter(fields)
        return HandedOver(
            record=record_from(record.key, dict(zip(pairs, pairs, strict=True))),
            locks={v: lock for (v, lock), won in zip(locks.items(), taken, strict=True) if won},
        )

    def last_change(self, key: str) -> dict[str, Any] | None:
        doc, _ = joined(self.redis.hgetall(opp_key(key)))  # type: ignore[arg-type]
        if doc is None:  # not stored yet
            return None
        return unpack(doc).get("last_change")  # type: ignore[arg-type,no-any-return]

    def exists(self, key: str) -> bool:
        return bool(self.redis.exists(opp_key(key)))

    def all_keys(self) -> list[str]:
        return sorted(self.redis.smembers(OPPS_INDEX))  # type: ignore[arg-type]
