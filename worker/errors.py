"""oppsync's one exception tree; every failure is classified here or at the vendor boundary.

    OppsyncError                 .reason: short text used in logs, metrics and dead letters
    ├── ConfigError              startup stops and names the variable
    ├── Rejected                 edge: bad signature, stale, unknown vendor (never queued)
    ├── DeliveryPending          edge: the delivery id is being queued by a poll (claimed,
    │                            not yet confirmed): answer "retry later"
    ├── InvalidPayload           worker: schema-invalid input -> dead letter, no retry
    ├── DeadLettered             worker: the job ended in a dead letter (recorded); raised
    │                            so Celery (and Flower) mark the task failed, never retried
    └── VendorError              a vendor call failed
        ├── Transient            retry with backoff (network, 5xx)
        │   ├── RateLimited      429; carries the vendor's ``retry_after``
        │   ├── OutcomeUnknown   the request may have been committed (timeout after send,
        │   │                    reset, 5xx): look before creating again
        │   └── OurOwnWait       we wait, the vendor did not fail (breaker and health ignore it)
        │       ├── Busy             the record's lock stays held by another job
        │       ├── OwnQuota         our count of the vendor's quota is used up (a RateLimited)
        │       ├── CreateInFlight   an unknown record while a create there is in flight
        │       ├── CreateSettling   such a create may still commit; retry once
        │       │                    ``OPPSYNC_CREATE_SETTLE_SECONDS`` have passed
        │       └── WriteSettling    a write to that vendor got no answer and may still
        │                            commit: the next one waits as long (it must land last)
        └── Permanent            4xx, auth failure -> dead letter with the vendor's answer

A duplicate delivery or an echo of our own write is an outcome, not an error. Outside the
tree, ``REDIS_UNREACHABLE``: oppsync's own Redis not answering is no vendor's failure and no
job's verdict; the job goes back to its queue (``worker/tasks.py``).
"""

from __future__ import annotations

from typing import Any

from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: Redis (broker and state alike) does not answer: a job can neither finish nor schedule
#: its own retry.
REDIS_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OperationalError)


class OppsyncError(Exception):
    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ConfigError(OppsyncError):
    """``problems``: one line per variable that is missing or invalid (all of them)."""

    reason = "config"

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: tuple[str, ...] = tuple(problems or [message])


class Rejected(OppsyncError):
    """Input refused at the edge; ``status`` is the HTTP answer."""

    reason = "rejected"

    def __init__(self, message: str, *, status: int = 400, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.status = status


class DeliveryPending(OppsyncError):
    """A delivery whose id is claimed and not yet queued (``Claim.PENDING``)."""

    reason = "delivery_pending"

    def __init__(self, delivery_id: str) -> None:
        super().__init__(f"delivery {delivery_id} is being queued; retry later")
        self.delivery_id = delivery_id


class InvalidPayload(OppsyncError):
    """Input that validation refused; ``fields`` maps each bad field to why."""

    reason = "invalid_payload"

    def __init__(
        self, message: str, *, fields: dict[str, Any] | None = None, reason: str | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.fields = fields or {}


class DeadLettered(OppsyncError):
    """The job gave up and its dead letter is recorded: the task ends failed, not retried
    (``throws`` on the task: logged without a traceback; acked, as every failure is)."""

    reason = "dead_letter"  # one message argument: Celery rebuilds it from its args


class VendorError(OppsyncError):
    reason = "vendor_error"

    def __init__(
        self,
        message: str,
        *,
        vendor: str,
        status: int | None = None,
        answer: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.vendor = vendor
        self.status = status
        self.answer = answer


class Transient(VendorError):
    reason = "transient"

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class RateLimited(Transient):
    reason = "rate_limited"


class OutcomeUnknown(Transient):
    reason = "outcome_unknown"


class OurOwnWait(Transient):
    """A retry that is our own waiting, not the vendor failing: the circuit breaker and the
    vendor's health on the status page leave it out."""

    reason = "our_own_wait"


class Busy(OurOwnWait):
    reason = "busy"


class OwnQuota(RateLimited, OurOwnWait):
    """``reserved``: the places kept for the job in the vendor's line
    (``worker/ratelimit.Reservation.as_job``); its retry runs exactly ``retry_after`` later."""

    reason = "own_quota"

    def __init__(self, message: str, *, reserved: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.reserved = reserved


class CreateInFlight(OurOwnWait):
    reason = "create_in_flight"


class CreateSettling(OurOwnWait):
    reason = "create_settling"


class WriteSettling(OurOwnWait):
    reason = "write_settling"


class Permanent(VendorError):
    reason = "permanent"

    def __init__(self, message: str, *, field: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.field = field
