"""How far polling of each polled vendor got: its mark and the ids its last scans saw."""

from __future__ import annotations

import time
from datetime import datetime

from worker.store.keys import poll_ids_key, poll_key
from worker.store.locks import Locks
from worker.store.records import PollMark


class Polls(Locks):
    """Poll marks and seen ids."""

    def poll_mark(self, vendor: str) -> PollMark:
        raw: dict[str, str] = self.redis.hgetall(poll_key(vendor))  # type: ignore[assignment]
        return PollMark(
            mark=datetime.fromisoformat(raw["mark"]) if raw.get("mark") else None,
            full_at=float(raw["full_at"]) if raw.get("full_at") else None,
        )

    def poll_ids(self, vendor: str) -> set[str]:
        return set(self.redis.smembers(poll_ids_key(vendor)))  # type: ignore[arg-type]

    def finish_poll(self, vendor: str, *, mark: datetime | None, ids: set[str], full: bool) -> None:
        """After a complete poll: keep the newest mark; a full scan replaces the id set,
        an incremental one adds to it."""
        current = self.poll_mark(vendor).mark
        pipe = self.redis.pipeline(transaction=False)
        if mark is not None and (current is None or mark > current):
            pipe.hset(poll_key(vendor), "mark", mark.isoformat())
        if full:
            pipe.hset(poll_key(vendor), "full_at", str(time.time()))
            pipe.delete(poll_ids_key(vendor))
        if ids:
            pipe.sadd(poll_ids_key(vendor), *ids)
        pipe.execute()
