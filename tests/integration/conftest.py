"""Fixtures for tests that run the real stack: Redis, gunicorn + Flask, a Celery worker,
and the five vendor simulators, all on loopback."""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import VARIANTS_SEED
from worker.sandbox.simulators.variants import Variants
from worker.sandbox.stack import Stack, start_stack, wait_for

QUEUE_KEYS = (
    "ingest",
    "push.siro",
    "push.leadway",
    "push.ivvy",
    "push.salescaling",
    "push.icloudready",
    "poll",
)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(Path(tmp_path_factory.mktemp("stack")))
    yield running
    running.stop()


def wait_idle(client: redis.Redis, timeout: float = 30.0) -> None:
    """Until no job is queued, scheduled or running (stable for half a second)."""
    deadline = time.monotonic() + timeout
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        pipe = client.pipeline(transaction=False)
        for queue in QUEUE_KEYS:
            pipe.llen(queue)
        pipe.hlen("unacked")
        busy = sum(pipe.execute())
        if busy == 0:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= 0.5:
                return
        else:
            quiet_since = None
        time.sleep(0.05)
    raise TimeoutError("the worker did not go idle")


def emptied(stack: Stack, variants_seed: int | None = None) -> Iterator[Stack]:
    """The running stack with empty simulators and no oppsync state; idle again after.
    With ``variants_seed``, each simulator answers in seeded variant forms."""
    client = redis.Redis.from_url(stack.redis.url)
    wait_idle(client)
    for key in client.scan_iter("oppsync:*"):
        client.delete(key)
    for name, sim in stack.sims.items():
        sim.reset()
        sim.faults.clear()
        sim.webhook_url = f"{stack.web_url}/webhooks/{name}"
        if hasattr(sim, "auto_emit"):
            sim.auto_emit = False
        seed = None if variants_seed is None else variants_seed + zlib.crc32(name.encode())
        # A late write is held past the service's HTTP timeout, then committed.
        late = float(stack.env["OPPSYNC_HTTP_TIMEOUT_SECONDS"]) + 1.5
        sim.variants = None if seed is None else Variants(seed, late_commit_delay=late)
    yield stack
    wait_for(lambda: all(sim.held == 0 for sim in stack.sims.values()), 60, "a request is held")
    wait_idle(client)
    for sim in stack.sims.values():
        sim.variants = None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``variants`` run twice: plain answers, then seeded variant answers."""
    if metafunc.definition.get_closest_marker("variants") and "live" in metafunc.fixturenames:
        metafunc.parametrize("answers", ["plain", "variants"], indirect=True)


@pytest.fixture
def answers(request: pytest.FixtureRequest) -> str:
    """How the simulators answer: "plain", or "variants" (seeded per run and per test)."""
    return str(getattr(request, "param", "plain"))


@pytest.fixture
def live(stack: Stack, answers: str, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The session's stack with empty simulators and no oppsync state."""
    seed = None
    if answers == "variants":
        seed = VARIANTS_SEED + zlib.crc32(request.node.nodeid.encode())
    yield from emptied(stack, seed)
