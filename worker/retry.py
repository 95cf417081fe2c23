"""The one retry policy: what is retried, how long to wait, and when to give up.

Transient failures (network, 5xx, 429, a reset after sending) are retried with exponential
backoff and full jitter — ``OPPSYNC_RETRY_BASE_SECONDS`` doubling per attempt up to
``OPPSYNC_RETRY_MAX_SECONDS`` — and a vendor's ``Retry-After`` (or our own wait, such as an
unanswered create's settle time) wins when it is longer, even past that maximum, up to the
retry horizon. Past ``OPPSYNC_RETRY_HORIZON_HOURS`` since the first attempt, the job becomes
a dead letter.
Permanent failures and invalid payloads go to dead letters at once.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from worker.errors import InvalidPayload, OppsyncError, OwnQuota, Permanent, Transient
from worker.settings import Settings


@dataclass(frozen=True)
class Verdict:
    retry: bool
    delay: float = 0.0
    reason: str = ""


def backoff(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    limit: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Full-jitter delay before retry number ``attempt`` (1 for the first retry).

    ``retry_after`` (the vendor's ``Retry-After``) wins when longer, however long, up to
    ``limit`` (the time left before the retry horizon): a vendor that asks for an hour is
    not asked again after ``cap``, which would only be refused again and spend quota."""
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    delay = (rng or random).uniform(0, ceiling)
    if retry_after is not None and retry_after > delay:
        delay = retry_after
    return delay if limit is None else max(0.0, min(delay, limit))


def decide(
    error: BaseException,
    *,
    attempt: int,
    first_attempt_at: float,
    settings: Settings,
    now: float | None = None,
) -> Verdict:
    """Retry (and after how long) or give up, for one failed attempt."""
    reason = error.reason if isinstance(error, OppsyncError) else type(error).__name__
    if isinstance(error, InvalidPayload | Permanent):
        return Verdict(False, reason=reason)
    if not isinstance(error, Transient):
        return Verdict(False, reason=f"unexpected: {reason}")
    now = time.time() if now is None else now
    left = first_attempt_at + settings.retry_horizon_hours * 3600 - now
    if left < 0:
        return Verdict(False, reason=f"gave up after {attempt} attempts: {reason}")
    if isinstance(error, OwnQuota) and error.reserved and error.retry_after is not None:
        # A place kept in the vendor's line: exactly then (jitter would miss its hold).
        return Verdict(True, delay=max(0.0, min(error.retry_after, left)), reason=reason)
    delay = backoff(
        attempt,
        base=settings.retry_base_seconds,
        cap=settings.retry_max_seconds,
        retry_after=error.retry_after,
        limit=left,
    )
    return Verdict(True, delay=delay, reason=reason)
