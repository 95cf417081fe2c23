"""The Celery tasks' own contract: a job that loses Redis halfway goes back to its queue.

The task bodies run in-process (Celery's ``apply``) on a runtime pointed at a Redis of the
test's own, which is stopped at the moment under test, and at real simulators.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.exceptions import Reject

from tests.strategies import envelope
from worker.errors import DeadLettered
from worker.runtime import Runtime, build_runtime
from worker.sandbox.embedded_redis import EmbeddedRedis, start_redis
from worker.sandbox.stack import stack_env, start_simulators
from worker.settings import from_env, get_settings
from worker.store.deadletters import DeadLetters
from worker.sync import fanout, push

#: A new Salescaling deal, as its API returns it.
DEAL = {
    "id": "5ca1e5ca-0000-4000-8000-00000000beef",
    "name": "Harbour View Conference",
    "amount": 12500,
    "closeDate": "2027-03-15T00:00:00.000Z",
    "closeProbability": 60,
    "status": "open",
    "createdAt": "2026-01-05T10:00:00.000Z",
    "updatedAt": "2026-01-05T10:00:00.000Z",
}


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = start_redis(directory=tmp_path)
    yield server
    server.stop()


@pytest.fixture
def sims() -> Iterator[dict[str, Any]]:
    started = start_simulators()
    yield started
    for sim in started.values():
        sim.stop()


@pytest.fixture
def tasks(
    own_redis: EmbeddedRedis, sims: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """``worker.tasks`` with its runtime on the test's Redis (and no pause before requeue)."""
    env = stack_env(own_redis.url, sims)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    rt: Runtime = build_runtime(from_env(env))
    import worker.tasks

    monkeypatch.setattr(worker.tasks, "get_runtime", lambda: rt)
    monkeypatch.setattr(worker.tasks, "REQUEUE_PAUSE_SECONDS", 0.0)
    yield worker.tasks
    for adapter in rt.adapters.values():
        adapter.close()
    get_settings.cache_clear()


@pytest.fixture
def redis_stops_before_fan_out(own_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ingest's merge is saved, then Redis stops before its targets are written."""
    push_all = fanout.push_all

    def redis_stops_first(*args: Any, **kwargs: Any) -> Any:
        own_redis.stop()
        return push_all(*args, **kwargs)

    monkeypatch.setattr(fanout, "push_all", redis_stops_first)


def _push_retry(tasks: Any, key: str) -> Any:
    """Run one retry of a push to iVvy in-process; its result."""
    cause = {"vendor": "salescaling", "delivery": f"msg_{key}", "correlation_id": key}
    return tasks.push_to_vendor.apply(
        kwargs={
            "key": key,
            "vendor": "ivvy",
            "cause": cause,
            "first_attempt_at": 0.0,
            "attempt": 2,
        }
    )


def _rejected_for_requeue(result: Any) -> bool:
    return (
        result.state == "REJECTED" and isinstance(result.result, Reject) and result.result.requeue
    )


def test_an_ingest_that_loses_redis_before_its_fan_out_goes_back_to_its_queue(
    tasks: Any, sims: dict[str, Any], redis_stops_before_fan_out: None
) -> None:
    # given an event whose merge is saved, and Redis stops before its targets are written
    result = tasks.ingest_change.apply(kwargs={"envelope": envelope("salescaling", DEAL).to_dict()})
    # then the job is rejected for requeueing (not failed, which would ack it and lose the
    # event's writes), and no target was written
    assert _rejected_for_requeue(result), (result.state, result.result)
    assert all(not sims[v].records for v in ("siro", "leadway", "ivvy", "icloudready"))


def test_a_push_that_loses_redis_goes_back_to_its_queue(
    tasks: Any, own_redis: EmbeddedRedis
) -> None:
    # given a retry of one push, and Redis stopped
    own_redis.stop()
    result = _push_retry(tasks, "opp_1")
    # then it is rejected for requeueing too
    assert _rejected_for_requeue(result), (result.state, result.result)


def test_a_push_whose_redis_answers_again_is_requeued_not_dead_lettered(
    tasks: Any, own_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a retry of one push that finds Redis down, and Redis back a moment later,
    # before the failure is classified and recorded
    restarted: list[EmbeddedRedis] = []
    real_push = push.push

    def redis_blips(*args: Any, **kwargs: Any) -> str:
        own_redis.stop()
        try:
            return real_push(*args, **kwargs)
        finally:
            restarted.append(start_redis(port=own_redis.port, directory=own_redis.directory))

    monkeypatch.setattr(push, "push", redis_blips)
    try:
        result = _push_retry(tasks, "opp_3")
        # then the job goes back to its queue: no verdict on the vendor, no dead letter
        assert _rejected_for_requeue(result), (result.state, result.result)
        rt = tasks.get_runtime()
        assert DeadLetters(rt.redis, rt.settings.secret_values()).list() == []
    finally:
        for server in restarted:
            server.stop()


def test_a_job_failing_for_another_reason_is_not_requeued(
    tasks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a push that fails with a bug of ours while Redis is fine
    def broken(*args: Any, **kwargs: Any) -> str:
        raise KeyError("a bug")

    monkeypatch.setattr(fanout, "_attempt", broken)
    result = _push_retry(tasks, "opp_2")
    # then it fails as it would have (no endless redelivery of a job that cannot succeed)
    assert result.state == "FAILURE" and isinstance(result.result, KeyError)


def test_an_ingest_run_in_process_that_loses_redis_raises_to_its_caller(
    tasks: Any, redis_stops_before_fan_out: None
) -> None:
    # given reconciliation or backfill running an ingest in-process, and Redis stops
    # then the caller gets an error to report (there is no queue to put the job back on)
    with pytest.raises(Reject):
        tasks.ingest_now(envelope("salescaling", DEAL))


def test_push_retry_longer_than_the_broker_allows_waits_in_hops(
    tasks: Any, sims: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a vendor asked for an hour, longer than a countdown may last (retry max: 3 s)
    published: list[dict[str, Any]] = []
    monkeypatch.setattr(tasks.push_to_vendor, "apply_async", lambda **job: published.append(job))
    tasks.schedule_push_retry("opp_1", "salescaling", {}, time.time(), 2, 3600.0)
    (first,) = published
    assert first["countdown"] <= 3.0
    not_before = first["kwargs"]["not_before"]
    assert not_before == pytest.approx(time.time() + 3600, abs=5)
    # when that hop arrives early
    outcome = tasks.push_to_vendor.apply(kwargs=first["kwargs"]).get()
    # then it only schedules the next hop, for the same moment, and calls no vendor
    assert outcome == "waiting"
    assert published[1]["countdown"] <= 3.0
    assert published[1]["kwargs"]["not_before"] == pytest.approx(not_before, abs=0.1)
    assert sims["salescaling"].log == []


def test_an_ingest_that_ends_in_a_dead_letter_is_a_failed_task_not_retried(
    tasks: Any, own_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given an event whose record does not validate (no name): no retry can fix it
    retried: list[dict[str, Any]] = []
    monkeypatch.setattr(tasks.ingest_change, "apply_async", lambda **job: retried.append(job))
    bad = {**DEAL, "name": ""}
    # when its ingest task runs
    result = tasks.ingest_change.apply(kwargs={"envelope": envelope("salescaling", bad).to_dict()})
    # then the task ends FAILED (as Flower shows it), with the dead letter recorded first,
    # and nothing is queued again
    assert result.state == "FAILURE", (result.state, result.result)
    assert isinstance(result.result, DeadLettered)
    assert [
        letter.kind
        for letter in DeadLetters(redis.Redis.from_url(own_redis.url, decode_responses=True)).list()
    ] == ["ingest"]
    assert retried == []


def test_ingest_now_reports_a_dead_letter_as_its_outcome(tasks: Any) -> None:
    # given the in-process ingest that reconcile and backfill use, and an invalid record
    bad = {**DEAL, "name": ""}
    # then it reports the dead letter instead of raising
    assert tasks.ingest_now(envelope("salescaling", bad)) == "dead_letter"


def test_an_ingest_whose_fan_out_dead_letters_a_push_is_a_failed_task(
    tasks: Any, own_redis: EmbeddedRedis, sims: dict[str, Any]
) -> None:
    # given iVvy refusing every write as invalid (a permanent answer: no retry can fix it)
    sims["ivvy"].faults.add("error", status=400, times=100, path_contains="addOrUpdate")
    # when a new Salescaling deal's ingest task runs
    result = tasks.ingest_change.apply(kwargs={"envelope": envelope("salescaling", DEAL).to_dict()})
    # then the task ends FAILED (as Flower shows it), naming the push that dead-lettered,
    assert result.state == "FAILURE", (result.state, result.result)
    assert isinstance(result.result, DeadLettered) and "push to ivvy" in str(result.result)
    # with that push's dead letter only, and the other vendors written all the same
    letters = DeadLetters(redis.Redis.from_url(own_redis.url, decode_responses=True)).list()
    assert [(letter.kind, letter.vendor) for letter in letters] == [("push", "ivvy")]
    for vendor in ("siro", "leadway", "icloudready"):
        assert sims[vendor].records, vendor


def test_a_retried_job_shows_its_name_in_flower_not_its_payload(
    tasks: Any, own_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kombu import Connection

    from worker import broker
    from worker.celery_app import app as celery

    broker.install()
    with Connection(own_redis.url) as connection:
        for task in (tasks.push_to_vendor, tasks.ingest_change):
            real = task.apply_async

            def publish(real: Any = real, **job: Any) -> Any:
                return real(**job, producer=celery.amqp.Producer(connection), declare=[])

            monkeypatch.setattr(task, "apply_async", publish)
        cause = {"vendor": "salescaling", "delivery": "msg_1", "fields": ["name", "amount"]}
        event = envelope("salescaling", {**DEAL, "contact": "dana@harbour.example"})
        # when a push and an ingest are retried
        tasks.schedule_push_retry("opp_1", "ivvy", cause, time.time(), 3, 0.0)
        tasks.schedule_ingest_retry(event.to_dict(), time.time(), 2, 0.0)
    client = redis.Redis.from_url(own_redis.url)
    push = json.loads(client.lrange("push.ivvy", 0, -1)[0])  # type: ignore[index]
    ingest = json.loads(client.lrange("ingest", 0, -1)[0])  # type: ignore[index]
    # then Flower names each job by what identifies it ...
    assert push["headers"]["kwargsrepr"] == "{'key': 'opp_1', 'vendor': 'ivvy', 'attempt': 3}"
    assert ingest["headers"]["kwargsrepr"] == (
        f"{{'envelope': 'salescaling {event.delivery_id}', 'attempt': 2}}"
    )
    # ... and shows none of the record or the cause, which travel in the body only
    for message in (push, ingest):
        assert message["headers"]["argsrepr"] == "()"
        assert "dana@harbour.example" not in message["headers"]["kwargsrepr"]
        assert "fields" not in message["headers"]["kwargsrepr"]
    body = json.loads(base64.b64decode(ingest["body"]))
    assert body[1]["envelope"]["payload"]["contact"] == "dana@harbour.example"
