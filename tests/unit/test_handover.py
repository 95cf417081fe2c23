"""An event's task hands a slow vendor's write over: after waiting for it once, no longer than
for the event's other writes while the vendor stays slow, and fully again once it is prompt."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from worker.sync import fanout
from worker.sync.fanout import PushResult
from worker.sync.outcomes import PushOutcome

TARGETS = ("leadway", "ivvy", "salescaling", "icloudready")
SLOW = "icloudready"
HANDOVER = 2.0


class Vendors:
    """Writes that end at once, but ``SLOW``'s, which end only when ``answer`` is set."""

    def __init__(self) -> None:
        self.answer = threading.Event()
        self.ended: list[str] = []

    def push_once(self, rt: Any, key: str, vendor: str, **_: Any) -> PushResult:
        if vendor == SLOW:
            assert self.answer.wait(30), "the test never let the slow vendor answer"
        self.ended.append(vendor)
        return PushResult(vendor, PushOutcome.UPDATED)


@pytest.fixture
def vendors(monkeypatch: pytest.MonkeyPatch) -> Iterator[Vendors]:
    fake = Vendors()
    monkeypatch.setattr(fanout, "push_once", fake.push_once)
    monkeypatch.setattr(fanout, "HANDOVER_SECONDS", HANDOVER)
    monkeypatch.setattr(fanout, "slow_vendors", fanout.SlowVendors())
    yield fake
    fake.answer.set()


def _runtime() -> Any:
    settings = SimpleNamespace(
        push_threads=8, http_timeout_seconds=5.0, visibility_timeout_seconds=60
    )
    store = SimpleNamespace(add_history=lambda *a: None, end_handover=lambda *a: None)
    return SimpleNamespace(settings=settings, store=store, redis=None)


def _event(rt: Any, key: str, handed: list[str]) -> tuple[float, dict[str, PushOutcome]]:
    """One event's fan-out: how long its task waited, and each target's outcome."""

    def schedule_retry(*args: Any, handover: str | None = None, **_: Any) -> None:
        if handover:
            handed.append(args[1])

    began = time.monotonic()
    results = fanout.push_all(rt, key, TARGETS, cause={}, schedule_retry=schedule_retry)
    return time.monotonic() - began, {r.vendor: r.outcome for r in results}


def test_a_vendor_seen_slow_is_handed_over_without_waiting_until_it_is_prompt_again(
    vendors: Vendors,
) -> None:
    rt, handed = _runtime(), list[str]()
    # given a vendor that has not answered: the first event waits for it, then hands it over
    waited, outcomes = _event(rt, "opp_1", handed)
    assert waited >= HANDOVER
    assert outcomes[SLOW] is PushOutcome.HANDED_OVER and handed == [SLOW]
    assert all(outcomes[v] is PushOutcome.UPDATED for v in TARGETS if v != SLOW)
    # when the next events come while it is still slow
    for n in (2, 3):
        waited, outcomes = _event(rt, f"opp_{n}", handed)
        # then each task waits only for the event's other writes, and hands the slow one over
        assert waited < HANDOVER / 2, f"event {n} waited {waited:.2f} s for the slow vendor"
        assert outcomes[SLOW] is PushOutcome.HANDED_OVER
        assert all(outcomes[v] is PushOutcome.UPDATED for v in TARGETS if v != SLOW)
    assert handed == [SLOW] * 3
    # and once the vendor answers (its writes handed over end), it is waited for again
    vendors.answer.set()
    deadline = time.monotonic() + 10
    while vendors.ended.count(SLOW) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert vendors.ended.count(SLOW) == 3
    waited, outcomes = _event(rt, "opp_4", handed)
    assert outcomes[SLOW] is PushOutcome.UPDATED
    assert handed == [SLOW] * 3  # nothing handed over this time


def test_a_vendor_seen_slow_is_forgotten_after_a_while(
    vendors: Vendors, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a vendor seen slow a moment ago, with a memory shorter than that moment
    monkeypatch.setattr(fanout, "SLOW_MEMORY_SECONDS", 0.0)
    slow = fanout.SlowVendors()
    slow.saw_slow(SLOW)
    # then it is waited for again as any vendor is
    assert not slow.is_slow(SLOW)
    monkeypatch.setattr(fanout, "SLOW_MEMORY_SECONDS", 30.0)
    slow.saw_slow(SLOW)
    assert slow.is_slow(SLOW)
    slow.saw_prompt(SLOW)
    assert not slow.is_slow(SLOW)
