"""Writes whose answer was lost, decided on a real Redis with in-memory vendors: the next
write waits until the lost one can no longer commit, then sends the current state, and a late
commit's echo is ours (not a person's change) and is written over."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from tests.unit.test_pipeline import MemoryAdapter, deliver, sync
from worker.errors import OutcomeUnknown, WriteSettling
from worker.runtime import Runtime
from worker.sandbox.embedded_redis import EmbeddedRedis
from worker.settings import from_env
from worker.store.state import Store
from worker.sync import push
from worker.vendors.base import UpsertResult

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def rt(redis_server: EmbeddedRedis) -> Iterator[Runtime]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushdb()
    settings = from_env({"OPPSYNC_VENDORS": "leadway,salescaling"}, check=False)
    runtime = Runtime(settings=settings, redis=client, store=Store(client))
    runtime.adapters = {
        "leadway": MemoryAdapter("leadway"),
        "salescaling": MemoryAdapter("salescaling"),
    }
    yield runtime
    client.close()


def synced_deal(rt: Runtime) -> str:
    """A deal made in leadway and written to salescaling; returns its key."""
    outcome = deliver(
        rt, "leadway", {"id": "L1", "name": "Deal", "status": "open", "updated_at": T0}
    )
    sync(rt, outcome)
    return str(outcome.key)


def rename(rt: Runtime, name: str, minutes: int) -> None:
    deliver(
        rt,
        "leadway",
        {"id": "L1", "name": name, "status": "open", "updated_at": T0 + timedelta(minutes=minutes)},
    )


def hold_next_write(adapter: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[[], UpsertResult]:
    """The adapter's next write gets no answer (a timeout); it commits when the returned
    function is called (the vendor was only slow). Later writes go through."""
    real = adapter.upsert

    def lost(*args: Any, **kwargs: Any) -> UpsertResult:
        monkeypatch.setattr(adapter, "upsert", real)
        held.append(lambda: real(*args, **kwargs))
        raise OutcomeUnknown("no answer", vendor=adapter.name, reason="no_answer")

    held: list[Callable[[], UpsertResult]] = []
    monkeypatch.setattr(adapter, "upsert", lost)
    return lambda: held[0]()


def names(adapter: Any) -> list[str]:
    return [r["name"] for r in adapter.records.values()]


def test_update_without_an_answer_makes_the_next_write_wait_until_it_settles(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a synced deal whose rename was sent to salescaling and got no answer
    key = synced_deal(rt)
    salescaling: Any = rt.adapters["salescaling"]
    hold_next_write(salescaling, monkeypatch)
    rename(rt, "First rename", 1)
    with pytest.raises(OutcomeUnknown) as lost:
        push.push(rt, key, "salescaling", cause={"vendor": "test"})
    settle = rt.settings.create_settle_seconds
    # then its retry is asked for no sooner than the settle time after it was sent
    assert lost.value.retry_after is not None and lost.value.retry_after > settle - 1
    # and a newer change's write waits for that moment too, without a request
    rename(rt, "Second rename", 2)
    with pytest.raises(WriteSettling) as waiting:
        push.push(rt, key, "salescaling", cause={"vendor": "test"})
    assert settle - 1 < (waiting.value.retry_after or 0) <= settle
    assert names(salescaling) == ["Deal"]  # nothing sent (the held write never committed)


def test_write_after_a_lost_answer_is_sent_even_when_the_vendor_seems_to_hold_it(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a write to salescaling that got no answer (settled at once here)
    rt.settings = dataclasses.replace(rt.settings, create_settle_seconds=0)
    key = synced_deal(rt)
    salescaling: Any = rt.adapters["salescaling"]
    commit = hold_next_write(salescaling, monkeypatch)
    rename(rt, "Leadway's name", 1)
    with pytest.raises(OutcomeUnknown):
        push.push(rt, key, "salescaling", cause={"vendor": "test"})
    # and a person in salescaling then set a newer name, so we think it holds the deal
    (sid,) = salescaling.records
    deliver(
        rt,
        "salescaling",
        {"id": sid, "name": "Salescaling's name", "status": "open",
         "updated_at": datetime.now(UTC) + timedelta(minutes=5)},
    )  # fmt: skip
    # when the unanswered write commits after all, then the retry runs
    commit()
    assert names(salescaling) == ["Leadway's name"]
    push.push(rt, key, "salescaling", cause={"vendor": "test"})
    # then it writes the current state: what salescaling held was not known
    assert names(salescaling) == ["Salescaling's name"]


def test_late_commit_echo_is_ours_and_the_vendor_is_written_again(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a rename whose write to salescaling got no answer, then a newer rename written
    # there (no settle time here: the vendor is slower than any bound)
    rt.settings = dataclasses.replace(rt.settings, create_settle_seconds=0)
    key = synced_deal(rt)
    salescaling: Any = rt.adapters["salescaling"]
    commit = hold_next_write(salescaling, monkeypatch)
    rename(rt, "First rename", 1)
    with pytest.raises(OutcomeUnknown):
        push.push(rt, key, "salescaling", cause={"vendor": "test"})
    rename(rt, "Second rename", 2)
    push.push(rt, key, "salescaling", cause={"vendor": "test"})
    # when the first write commits after all and salescaling reports its record, stamped
    # later than anything we wrote
    commit()
    (late,) = salescaling.records.values()
    echo = deliver(
        rt, "salescaling", {**late, "updated_at": datetime.now(UTC) + timedelta(minutes=5)}
    )
    # then it is our own write's echo: nothing merged, and salescaling is written again
    assert echo.outcome == "echo"
    assert echo.targets == ("salescaling",)
    assert rt.store.load(key).state.name == "Second rename"
    sync(rt, echo)
    assert names(salescaling) == ["Second rename"]
