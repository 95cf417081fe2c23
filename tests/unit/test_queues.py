"""The queue list is written once (``worker/queues.py``); the Procfile's worker consumes it all."""

from __future__ import annotations

import shlex

from schemas.mapping import VENDORS
from worker.queues import QUEUES
from worker.sandbox.stack import ROOT


def procfile_worker_queues() -> list[str]:
    (line,) = [
        line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("worker:")
    ]
    args = shlex.split(line.partition(":")[2].split("&&")[-1])
    return args[args.index("-Q") + 1].split(",")


def test_procfile_worker_consumes_exactly_the_defined_queues() -> None:
    # given the queues tasks are sent to, and the Procfile's worker line
    # then the worker listens on each of them, and on no other
    assert procfile_worker_queues() == list(QUEUES)


def test_every_vendor_has_its_push_queue() -> None:
    assert {f"push.{v}" for v in VENDORS} <= set(QUEUES)
