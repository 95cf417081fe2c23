"""The retry policy: what is retried, how long it waits, when it gives up."""

from __future__ import annotations

import random
import time

import pytest

from worker.errors import InvalidPayload, OutcomeUnknown, Permanent, RateLimited, Transient
from worker.retry import backoff, decide
from worker.settings import from_env

SETTINGS = from_env({"OPPSYNC_VENDORS": ""}, check=False)


def test_backoff_is_full_jitter_doubling_up_to_the_cap() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(1, 2), (2, 4), (3, 8), (10, 600), (30, 600)]:
        delays = [backoff(attempt, base=2, cap=600, rng=rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # jitter spreads over the whole range
        assert min(delays) < ceiling * 0.2


def test_backoff_honours_a_longer_retry_after() -> None:
    assert backoff(1, base=2, cap=600, retry_after=30, rng=random.Random(1)) == 30


def test_backoff_keeps_its_own_delay_when_retry_after_is_shorter() -> None:
    delays = {backoff(8, base=2, cap=600, retry_after=0.5, rng=random.Random(s)) for s in range(20)}
    assert max(delays) > 0.5


@pytest.mark.parametrize(
    "error",
    [
        Transient("down", vendor="siro"),
        RateLimited("slow down", vendor="leadway", retry_after=10),
        OutcomeUnknown("no answer", vendor="ivvy"),
    ],
)
def test_decide_retries_transient_failures(error: Transient) -> None:
    verdict = decide(error, attempt=1, first_attempt_at=time.time(), settings=SETTINGS)
    assert verdict.retry
    if error.retry_after:
        assert verdict.delay >= error.retry_after


@pytest.mark.parametrize(
    "error",
    [
        Permanent("bad request", vendor="salescaling", status=400),
        Permanent("auth", vendor="siro", status=401, reason="auth"),
        InvalidPayload("bad record"),
        ValueError("a bug"),
    ],
)
def test_decide_sends_permanent_failures_to_dead_letters(error: Exception) -> None:
    verdict = decide(error, attempt=1, first_attempt_at=time.time(), settings=SETTINGS)
    assert not verdict.retry


def test_decide_gives_up_after_the_horizon() -> None:
    # given a job first tried longer ago than the 72 h horizon
    first = time.time() - 73 * 3600
    verdict = decide(
        Transient("down", vendor="siro"), attempt=400, first_attempt_at=first, settings=SETTINGS
    )
    assert not verdict.retry and "gave up" in verdict.reason


def test_default_horizon_is_at_least_72_hours() -> None:
    assert SETTINGS.retry_horizon_hours >= 72


def test_decide_honours_a_retry_after_longer_than_the_maximum_delay() -> None:
    # given a vendor asking for an hour, longer than OPPSYNC_RETRY_MAX_SECONDS (600 s)
    error = RateLimited("slow down", vendor="leadway", retry_after=3600)
    # when the policy decides
    verdict = decide(error, attempt=1, first_attempt_at=time.time(), settings=SETTINGS)
    # then the retry waits the hour the vendor asked for, not the 600 s maximum
    assert verdict.retry and verdict.delay == 3600


def test_decide_cuts_a_retry_after_at_the_retry_horizon() -> None:
    # given a job first tried 71 h ago (horizon 72 h) and a vendor asking for 5 h
    now = time.time()
    error = RateLimited("slow down", vendor="leadway", retry_after=5 * 3600)
    verdict = decide(error, attempt=9, first_attempt_at=now - 71 * 3600, settings=SETTINGS, now=now)
    # then the last retry comes at the horizon, not after it
    assert verdict.retry and verdict.delay == pytest.approx(3600)
