"""How each vendor is doing, for the status page: last success, recent errors, quota headroom.

Every push records its result here (``worker/sync/fanout.py``), in Redis so the web app sees what
every worker saw. Results are counted per minute in keys that expire, so the error rate is
over a recent window rather than since the service started. Failures that are not the
vendor's (our own lock or quota, waiting for a create in flight) are not counted against it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis

from worker.errors import OppsyncError, OurOwnWait, VendorError
from worker.ratelimit import VendorQuota
from worker.settings import Settings
from worker.store import metrics
from worker.store.keys import health_calls_key, health_key
from worker.sync.outcomes import WRITES
from worker.vendors.registry import FACTS

WINDOW_MINUTES = 15
# Workers finish out of order: a time (and the reason that goes with it) only moves forward.


@dataclass(frozen=True)
class VendorHealth:
    vendor: str
    last_success: float | None = None
    last_error: float | None = None
    last_error_reason: str = ""
    ok: int = 0
    errors: int = 0
    errors_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float | None:
        """Errors per vendor call in the window; ``None`` without calls."""
        total = self.ok + self.errors
        return self.errors / total if total else None


def record_push(
    client: redis.Redis,
    vendor: str,
    *,
    outcome: str | None = None,
    error: BaseException | None = None,
    now: float | None = None,
) -> None:
    """Count one push's result: a write the vendor accepted, or a failure that was its own."""
    now = time.time() if now is None else now
    calls = health_calls_key(vendor, int(now // 60))
    keep = (WINDOW_MINUTES + 1) * 60
    if error is None:
        if outcome not in WRITES:
            return  # nothing was written: says nothing about the vendor
        metrics.batch.newest(client, health_key(vendor), "last_success", now)
        metrics.batch.incr(client, calls, "ok", expire=keep)
        return
    reason = error.reason if isinstance(error, OppsyncError) else type(error).__name__
    if not isinstance(error, VendorError) or isinstance(error, OurOwnWait):
        return
    metrics.batch.newest(client, health_key(vendor), "last_error", now,
                         "last_error_reason", reason)  # fmt: skip
    metrics.batch.incr(client, calls, "error", expire=keep)
    metrics.batch.incr(client, calls, f"error:{reason}", expire=keep)


def read_health(
    client: redis.Redis,
    vendors: tuple[str, ...],
    *,
    window_minutes: int = WINDOW_MINUTES,
    now: float | None = None,
) -> dict[str, VendorHealth]:
    """Each vendor's last success and error, and its calls in the last ``window_minutes``."""
    now = time.time() if now is None else now
    minute = int(now // 60)
    pipe = client.pipeline(transaction=False)
    for vendor in vendors:
        pipe.hgetall(health_key(vendor))
        for m in range(minute - window_minutes + 1, minute + 1):
            pipe.hgetall(health_calls_key(vendor, m))
    answers = iter(pipe.execute())
    result = {}
    for vendor in vendors:
        last: dict[str, str] = next(answers)
        ok = errors = 0
        by_reason: dict[str, int] = {}
        for _ in range(window_minutes):
            bucket: dict[str, str] = next(answers)
            ok += int(bucket.get("ok", 0))
            errors += int(bucket.get("error", 0))
            for name, value in bucket.items():
                if name.startswith("error:"):
                    reason = name.removeprefix("error:")
                    by_reason[reason] = by_reason.get(reason, 0) + int(value)
        result[vendor] = VendorHealth(
            vendor=vendor,
            last_success=float(last["last_success"]) if "last_success" in last else None,
            last_error=float(last["last_error"]) if "last_error" in last else None,
            last_error_reason=last.get("last_error_reason", ""),
            ok=ok,
            errors=errors,
            errors_by_reason=by_reason,
        )
    return result


@dataclass(frozen=True)
class Headroom:
    """One quota of one vendor: how much of it is left now."""

    limit: str  # e.g. "100/10s"
    amount: int
    remaining: int

    @property
    def share_left(self) -> float:
        return self.remaining / self.amount if self.amount else 1.0


class QuotaReader:
    """Reads the shared per-vendor quotas (``worker/ratelimit.py``) without drawing on them."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.quotas = {}
        for vendor in settings.vendors:
            vs = settings.vendor[vendor]
            # The same scope and margin as the workers' quotas (``build_runtime``).
            scope_variable = FACTS[vendor].quota_scope_variable
            scope = (vs.get(scope_variable) or "") if scope_variable else ""
            self.quotas[vendor] = VendorQuota(
                client, vendor, vs.rate_limit, scope=scope, margin=settings.quota_margin_seconds
            )

    def headroom(self, vendor: str) -> list[Headroom]:
        return [
            Headroom(limit=limit, amount=allowed, remaining=max(0, allowed - used))
            for limit, used, allowed in self.quotas[vendor].headroom()
        ]
