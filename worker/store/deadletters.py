"""Dead letters: jobs that will not succeed by waiting, kept with why, until replayed or purged.

Each holds the job (an ingest envelope, or a push of one opportunity to one vendor), the
target, the reason, the attempts and the vendor's last answer. Replay re-enqueues the job
and removes the letter in one step, so replaying twice cannot run it twice; and the jobs
themselves are idempotent, so a replay never creates a duplicate record.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from worker.errors import OppsyncError, Permanent, VendorError
from worker.store.keys import DEADLETTER_INDEX, DEADLETTER_ITEMS


@dataclass(frozen=True)
class DeadLetter:
    id: str
    kind: str  # "ingest" | "push"
    vendor: str  # source vendor (ingest) or target vendor (push)
    reason: str
    message: str
    attempts: int
    job: dict[str, Any]
    answer: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0


def describe(error: BaseException) -> dict[str, Any]:
    """The parts of an error a dead letter keeps (never credentials: answers are vendor
    bodies and messages are ours)."""
    details: dict[str, Any] = {
        "reason": error.reason if isinstance(error, OppsyncError) else type(error).__name__,
        "message": str(error)[:1000],
    }
    if isinstance(error, VendorError):
        details["answer"] = error.answer
    fields = getattr(error, "fields", None)
    if fields:
        details["fields"] = fields
    if isinstance(error, Permanent) and error.field:
        details["fields"] = {error.field: [error.answer or "refused by the vendor"]}
    return details


class DeadLetters:
    def __init__(self, client: redis.Redis, secrets: Iterable[str] = ()) -> None:
        self.redis = client
        #: Configured secrets never stored in a letter (an iVvy event names our API key
        #: as its author; a vendor may echo a token in its answer).
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def _scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[secret]")
        return text

    def add(
        self, *, kind: str, vendor: str, job: dict[str, Any], attempts: int, error: BaseException
    ) -> DeadLetter:
        letter = DeadLetter(
            id=uuid.uuid4().hex[:12],
            kind=kind,
            vendor=vendor,
            attempts=attempts,
            job=job,
            at=time.time(),
            **describe(error),
        )
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(DEADLETTER_ITEMS, letter.id, self._scrub(json.dumps(asdict(letter), default=str)))
        pipe.zadd(DEADLETTER_INDEX, {letter.id: letter.at})
        pipe.execute()
        return letter

    def list(self, *, vendor: str | None = None, limit: int = 100) -> list[DeadLetter]:
        ids = self.redis.zrevrange(DEADLETTER_INDEX, 0, -1)
        letters = [self.get(i) for i in ids]  # type: ignore[union-attr]
        chosen = [x for x in letters if x is not None and (vendor is None or x.vendor == vendor)]
        return chosen[:limit]

    def get(self, letter_id: str) -> DeadLetter | None:
        raw = self.redis.hget(DEADLETTER_ITEMS, letter_id)
        return DeadLetter(**json.loads(raw)) if raw else None  # type: ignore[arg-type]

    def take(self, letter_id: str) -> DeadLetter | None:
        """Remove and return a letter (atomically: only one caller gets it)."""
        pipe = self.redis.pipeline()
        pipe.hget(DEADLETTER_ITEMS, letter_id)
        pipe.hdel(DEADLETTER_ITEMS, letter_id)
        pipe.zrem(DEADLETTER_INDEX, letter_id)
        raw, removed, _ = pipe.execute()
        if not removed:
            return None
        return DeadLetter(**json.loads(raw))

    def purge(self, *, vendor: str | None = None) -> int:
        count = 0
        for letter in self.list(vendor=vendor, limit=1_000_000):
            if self.take(letter.id) is not None:
                count += 1
        return count

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for letter in self.list(limit=1_000_000):
            counts[letter.vendor] = counts.get(letter.vendor, 0) + 1
        return counts
