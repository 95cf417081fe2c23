"""The webhook path end to end: one Redis round trip per delivery, queued once, run by the
Procfile's worker.

A stack of its own: Redis, the simulators and the Procfile's ``web`` line; the Procfile's
``worker`` starts only once the deliveries are queued, so what the web alone did to Redis
is what is counted (MONITOR lists every command a client sent, and apart from them the
commands a script ran).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.integration.conftest import wait_idle
from tests.integration.drive import DEAL, held, person_creates
from worker.sandbox.simulators.base import sign_standard_webhook
from worker.sandbox.stack import Stack, start_stack, wait_for

pytestmark = pytest.mark.integration

TARGETS = ("leadway", "ivvy", "salescaling", "icloudready")


@pytest.fixture
def web_only(tmp_path: Path) -> Iterator[Stack]:
    stack = start_stack(tmp_path, worker=False, appendonly=True)
    yield stack
    stack.stop()


def delivery(stack: Stack, name: str) -> tuple[bytes, dict[str, str]]:
    """A new SIRO deal ``name``, as its automation posts it (Standard Webhooks)."""
    siro = stack.sims["siro"]
    vendor_id = person_creates(stack, "siro", DEAL.replace(name=name))
    body = json.dumps(dict(siro.records[vendor_id])).encode()
    return body, sign_standard_webhook(siro.webhook_secret, body)


def post(stack: Stack, body: bytes, headers: dict[str, str]) -> int:
    answer = httpx.post(f"{stack.web_url}/webhooks/siro", content=body, headers=headers)
    return answer.status_code


class Monitor:
    """Every command Redis runs while it is on, as MONITOR reports them."""

    def __init__(self, url: str) -> None:
        # The connection that stops it, opened first: its own AUTH is not counted.
        self.stopper = redis.Redis.from_url(url)
        self.stopper.ping()
        self.client = redis.Redis.from_url(url)
        self.monitor = self.client.monitor()
        self.monitor.__enter__()
        self.commands: list[dict[str, Any]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for command in self.monitor.listen():
                self.commands.append(command)
                if command["command"] == "ECHO monitor-stop":
                    return
        except (redis.RedisError, OSError):
            return

    def stop(self) -> list[dict[str, Any]]:
        """The commands seen, up to the one that stops the monitor (not included)."""
        self.stopper.echo("monitor-stop")
        self.thread.join(timeout=10)
        self.client.close()
        self.stopper.close()
        return [c for c in self.commands if c["command"] != "ECHO monitor-stop"]


def test_ingest_a_delivery_is_one_redis_round_trip_and_the_worker_runs_it(
    web_only: Stack,
) -> None:
    stack = web_only
    # given a web server that has answered before: each of its processes connected to Redis
    # and loaded the script (a new connection each time, so both processes get some)
    for n in range(16):
        assert post(stack, *delivery(stack, f"Warm-up Deal {n}")) == 202
    # when ten deliveries arrive one after another
    deliveries = [delivery(stack, f"Round Trip Deal {n}") for n in range(10)]
    monitor = Monitor(stack.redis.url)
    answers = [post(stack, body, headers) for body, headers in deliveries]
    commands = monitor.stop()
    # then each was queued with one command sent to Redis: the script (its own commands
    # run inside Redis, listed as the script's)
    assert answers == [202] * 10
    sent = [c["command"].split()[0].upper() for c in commands if c.get("client_type") != "lua"]
    assert sent == ["EVALSHA"] * 10, sent
    # and the Procfile's worker runs every queued message: each deal lands in every target
    stack.start_procfile_worker()
    names = sorted(f"Round Trip Deal {n}" for n in range(10))

    def has_every_deal(target: str) -> bool:
        return sorted(str(o.name) for o in held(stack, target) if "Round" in str(o.name)) == names

    for target in TARGETS:
        wait_for(partial(has_every_deal, target), 60, f"{target} did not get the deals")


def test_ingest_a_delivery_sent_many_times_at_once_is_queued_once(web_only: Stack) -> None:
    stack = web_only
    body, headers = delivery(stack, "Twenty Times Deal")
    answers: list[int] = []
    lock = threading.Lock()

    def send() -> None:
        status = post(stack, body, headers)
        with lock:
            answers.append(status)

    # when the same delivery arrives on twenty connections at once
    senders = [threading.Thread(target=send) for _ in range(20)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=30)
    # then one answer says queued and every other says duplicate, and one message waits
    assert sorted(answers) == [200] * 19 + [202]
    client = redis.Redis.from_url(stack.redis.url)
    assert client.llen("ingest") == 1
    # and once the worker ran it, each target holds the deal once
    stack.start_procfile_worker()
    wait_for(lambda: all(held(stack, t) for t in TARGETS), 60, "the deal did not land")
    wait_for(lambda: all(s.held == 0 for s in stack.sims.values()), 60, "a request is held")
    wait_idle(client)
    assert {t: [str(o.name) for o in held(stack, t)] for t in TARGETS} == {
        t: ["Twenty Times Deal"] for t in TARGETS
    }
    client.close()
