"""The worker process hands the interpreter between its threads quickly.

Every vendor request goes to the event loop's thread and its answer comes back
(``worker/vendors/looptransport.py``); Python's default 5 ms switch interval made woken
writes start late enough to waste places in Leadway's quota line (docs/performance.md).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from celery.signals import worker_init

from worker.celery_factory import SWITCH_INTERVAL_SECONDS, hand_over_quickly, make_celery
from worker.settings import from_env


@pytest.fixture
def default_interval() -> Iterator[float]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    yield 0.005
    sys.setswitchinterval(before)


def test_a_starting_worker_switches_threads_every_millisecond(default_interval: float) -> None:
    # given the Celery app as the Procfile's worker makes it
    make_celery(from_env({"OPPSYNC_VENDORS": ""}, check=False))
    assert sys.getswitchinterval() == default_interval  # making the app changes nothing
    # then its worker, starting, runs the hand-over setting
    assert any(uid == "oppsync-switch-interval" for (uid, _), _ in worker_init.receivers)
    hand_over_quickly()
    assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL_SECONDS)
    assert SWITCH_INTERVAL_SECONDS <= 0.001
