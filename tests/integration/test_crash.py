"""Crash safety: a worker killed mid-push, and Redis stopped and restarted during ingest and
during a push.

These run on stacks of their own: Redis with an append-only file (as production should run
it), short retry delays, and a one-second sweep for a killed worker's jobs. The killed
worker's stack keeps the production broker visibility timeout (an hour): its job must come
back because its worker stopped saying it lives, not because the hour passed. Redis's
restarts need the short one (six seconds): a job whose acknowledgement a Redis outage lost
comes back only once that timeout passes.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.integration.drive import DEAL, held, held_by_id, person_creates
from worker.sandbox.simulators.base import sign_standard_webhook
from worker.sandbox.stack import Stack, start_stack, wait_for
from worker.store.keys import field
from worker.store.state import Store

pytestmark = pytest.mark.integration

TARGETS = ("leadway", "ivvy", "salescaling", "icloudready")


def crash_stack_with(tmp_path_factory: pytest.TempPathFactory, visibility: str) -> Stack:
    return start_stack(
        Path(tmp_path_factory.mktemp("crash")),
        appendonly=True,
        OPPSYNC_VISIBILITY_TIMEOUT_SECONDS=visibility,
        OPPSYNC_RETRY_MAX_SECONDS="2",
        OPPSYNC_RETRY_BASE_SECONDS="0.2",
        OPPSYNC_UNACKED_SWEEP_SECONDS="1",
    )


@pytest.fixture(scope="module")
def crash_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = crash_stack_with(tmp_path_factory, visibility="6")
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def kill_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = crash_stack_with(tmp_path_factory, visibility="3600")
    yield stack
    stack.stop()


def names_held(stack: Stack, vendor: str) -> list[str]:
    return sorted(str(o.name) for o in held(stack, vendor))


def new_deal_while_slow(stack: Stack, vendor: str, latency: float, name: str) -> Any:
    """Make ``vendor`` answer after ``latency`` seconds, then announce a new SIRO deal
    ``name``; the slow vendor's simulator (set its latency back to 0 when done)."""
    slow = stack.sims[vendor]
    slow.latency = latency
    vendor_id = person_creates(stack, "siro", DEAL.replace(name=name))
    assert stack.sims["siro"].emit_standard(vendor_id) == 202
    return slow


def test_crash_sigkill_mid_push_loses_and_duplicates_nothing(kill_stack: Stack) -> None:
    stack = kill_stack
    # given iCloudReady answers slowly, so a push to it is in flight for seconds
    slow = new_deal_while_slow(stack, "icloudready", 2.0, "Killed Mid Push")
    # when the fast vendors are written and the worker is killed while iCloudReady's push
    # is still waiting for its answer
    wait_for(
        lambda: all(
            names_held(stack, v) == ["Killed Mid Push"] for v in ("leadway", "ivvy", "salescaling")
        ),
        30,
        "fast pushes",
    )
    stack.kill_worker(stack.workers[0], signal.SIGKILL)
    slow.latency = 0.0
    stack.start_procfile_worker()
    # then the job comes back (late ack) once the killed worker missed six one-second
    # sweeps (the record's lock it held expires in a minute), and iCloudReady ends with
    # exactly one record
    wait_for(
        lambda: names_held(stack, "icloudready") == ["Killed Mid Push"],
        120,
        "the killed push was not redone",
    )
    time.sleep(2)  # anything still queued would show up as a second record
    for vendor in TARGETS:
        assert names_held(stack, vendor) == ["Killed Mid Push"], vendor


def test_crash_redis_restart_mid_push_keeps_the_write_it_made(crash_stack: Stack) -> None:
    stack = crash_stack
    store = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    # given iCloudReady answers slowly, so a create there is in flight for seconds
    slow = new_deal_while_slow(stack, "icloudready", 2.0, "Restart Mid Push")
    wait_for(lambda: _creating_in(store, "icloudready"), 30, "no create in iCloudReady started")
    time.sleep(0.5)  # past the quota check: the request is with iCloudReady
    # when Redis stops while that create waits, and iCloudReady makes the deal and answers
    # while Redis is still down (so the worker can record neither the write nor a retry)
    stack.redis.stop()
    created = wait_for(lambda: _named(stack, "icloudready", "Restart Mid Push"), 30)
    time.sleep(2)  # the worker gets the answer and fails to record it
    stack.restart_redis()
    slow.latency = 0.0
    # then the job came back and oppsync knows iCloudReady's record (so a later change or
    # delete in SIRO reaches it), and iCloudReady holds the deal once
    wait_for(
        lambda: Store(store).key_for("icloudready", created[0]) is not None,
        120,
        "the create made while Redis was down was never recorded",
    )
    assert _named(stack, "icloudready", "Restart Mid Push") == created


def _named(stack: Stack, vendor: str, name: str) -> list[str]:
    """Ids of ``vendor``'s records named ``name``."""
    return [vendor_id for vendor_id, opp in held_by_id(stack, vendor).items() if opp.name == name]


def _creating_in(store: redis.Redis, vendor: str) -> bool:
    """Whether a create in ``vendor`` was sent and has no answer yet (its in-flight mark)."""
    for name in store.scan_iter("oppsync:opp:*"):
        marks = store.hmget(name, [field("g", vendor), field("i", vendor)])
        if marks[0] and not marks[1]:  # type: ignore[index]
            return True
    return False


def _deliver(url: str, secret: str, record: dict[str, object]) -> int:
    body = json.dumps(record).encode()
    try:
        return httpx.post(
            url, content=body, headers=sign_standard_webhook(secret, body), timeout=10
        ).status_code
    except httpx.HTTPError:
        return 0


def test_crash_redis_restart_during_ingest_answers_no_2xx_it_did_not_queue(
    crash_stack: Stack,
) -> None:
    stack = crash_stack
    siro = stack.sims["siro"]
    url = f"{stack.web_url}/webhooks/siro"
    ids = [
        person_creates(stack, "siro", DEAL.replace(name=f"Restart Deal {n:02}")) for n in range(30)
    ]
    answers: dict[str, int] = {}

    def send_all() -> None:
        for vendor_id in ids:
            answers[vendor_id] = _deliver(url, siro.webhook_secret, dict(siro.records[vendor_id]))
            time.sleep(0.05)

    # given a stream of deliveries, when Redis stops for two seconds in the middle of it
    sender = threading.Thread(target=send_all)
    sender.start()
    wait_for(lambda: len(answers) >= 8, 30, "deliveries did not start")
    stack.restart_redis(down_for=2.0)
    sender.join(timeout=120)
    # then some deliveries were refused, none of them with a 2xx
    refused = [i for i, status in answers.items() if status not in (200, 202)]
    assert refused, "Redis was down but every delivery was accepted"
    assert all(answers[i] == 503 for i in refused if answers[i] != 0)
    # and when the vendor redelivers what was refused, every deal lands exactly once
    for vendor_id in refused:
        assert _deliver(url, siro.webhook_secret, dict(siro.records[vendor_id])) == 202
    expected = sorted(f"Restart Deal {n:02}" for n in range(30))

    def restart_deals(vendor: str) -> list[str]:
        return [n for n in names_held(stack, vendor) if n.startswith("Restart Deal")]

    for vendor in TARGETS:
        try:
            wait_for(partial(lambda v: restart_deals(v) == expected, vendor), 120)
        except TimeoutError:
            held_now = Counter(restart_deals(vendor))
            missing = sorted(set(expected) - set(held_now))
            doubled = sorted(n for n, count in held_now.items() if count > 1)
            raise AssertionError(
                f"{vendor} did not get every deal exactly once: missing {missing}, "
                f"duplicated {doubled}"
            ) from None


def test_crash_sigterm_mid_push_finishes_the_push_before_exiting(crash_stack: Stack) -> None:
    stack = crash_stack
    # given iVvy answers slowly, so a push to it is in flight for seconds
    slow = new_deal_while_slow(stack, "ivvy", 1.5, "Stopped Politely")
    wait_for(lambda: "Stopped Politely" in names_held(stack, "salescaling"), 30, "fast pushes")
    # when the platform stops the worker (SIGTERM, as a PaaS does on deploy)
    worker = stack.workers[0]
    stack.kill_worker(worker, signal.SIGTERM)
    # then it finished the push in flight before exiting: iVvy already holds the deal once
    assert [n for n in names_held(stack, "ivvy") if n == "Stopped Politely"] == ["Stopped Politely"]
    slow.latency = 0.0
    stack.start_procfile_worker()
    time.sleep(2)
    for vendor in TARGETS:
        assert names_held(stack, vendor).count("Stopped Politely") == 1, vendor
