"""Worker-side validation: bad values never reach a vendor, and every refusal names its field.

A record that does not validate (wrong types, lengths, ranges, dates) becomes a dead letter
listing each bad field and why, and no vendor is called; a vendor's own 4xx about a field is
kept in its dead letter under that field. Real Redis, real adapters, real simulators; the
ingest task runs in-process with its runtime pointed at them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.strategies import EXAMPLE_MAPPING as MAPPING
from tests.strategies import envelope
from worker.errors import DeadLettered, InvalidPayload
from worker.runtime import Runtime, build_runtime
from worker.sandbox.embedded_redis import EmbeddedRedis
from worker.sandbox.simulators.leadway import LeadwaySimulator
from worker.sandbox.simulators.salescaling import SalescalingSimulator
from worker.sandbox.stack import VENDORS, stack_env, start_simulators, whsec
from worker.settings import from_env, get_settings
from worker.store.deadletters import DeadLetter, DeadLetters
from worker.sync import fanout, ingest
from worker.sync.outcomes import PushOutcome

DB = 7
TOO_LONG = "x" * 300


class StrictLeadway(LeadwaySimulator):
    """A HighLevel location that refuses large values with HighLevel's 422 shape."""

    LIMIT = 1_000_000

    def problems(self, body: dict[str, Any], creating: bool) -> list[str]:
        found = super().problems(body, creating)
        value = body.get("monetaryValue")
        if isinstance(value, int | float) and value > self.LIMIT:
            found.append(f"monetaryValue must not be greater than {self.LIMIT}")
        return found


@pytest.fixture(scope="module")
def sims() -> Iterator[dict[str, Any]]:
    started = start_simulators()
    # A Salescaling tenant without "abandoned", and a Leadway location with a value cap:
    # both accept what the canonical schema accepts, then refuse a field themselves.
    for name, replacement in (
        ("salescaling", SalescalingSimulator(statuses=("open", "won", "lost"))),
        ("leadway", StrictLeadway(rate_limit=None)),
    ):
        started[name].stop()
        started[name] = replacement.start()
        replacement.webhook_secret = whsec(f"{name}-secret")
    yield started
    for sim in started.values():
        sim.stop()


@pytest.fixture(scope="module")
def env(redis_server: EmbeddedRedis, sims: dict[str, Any]) -> dict[str, str]:
    return stack_env(redis_server.url.rsplit("/", 1)[0] + f"/{DB}", sims)


@pytest.fixture(scope="module")
def runtime(env: dict[str, str]) -> Iterator[Runtime]:
    rt = build_runtime(from_env(env))
    yield rt
    for adapter in rt.adapters.values():
        adapter.close()


@pytest.fixture
def rt(runtime: Runtime, sims: dict[str, Any]) -> Runtime:
    runtime.redis.flushdb()
    for sim in sims.values():
        sim.reset()
    return runtime


@pytest.fixture
def ingest_task(rt: Runtime, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The real ``ingest_change`` task body, run in-process on ``rt``."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    import worker.tasks

    monkeypatch.setattr(worker.tasks, "get_runtime", lambda: rt)
    yield worker.tasks.ingest_change
    get_settings.cache_clear()


#: One valid record per vendor, as its API returns it.
VALID: dict[str, dict[str, Any]] = {
    "siro": {
        "id": "068dfa39-e2a3-4b81-9332-1a40d0dc27c7",
        "externalId": "crm-4711",
        "createdAt": "2026-01-05T10:00:00.000Z",
        "updatedAt": "2026-01-05T10:00:00.000Z",
        "name": "Harbour View Conference",
        "amount": 12500,
        "closedAt": "2027-03-15T00:00:00.000Z",
        "disposition": "OPEN",
        "account": {"externalId": "crm-4711:account", "name": "Harbour Events"},
        "opportunityUsers": [],
        "opportunityContacts": [],
        "deletedAt": None,
    },
    "leadway": {
        "id": "urmx5M85lIRAmgNYgCXG",
        "name": "Harbour View Conference",
        "status": "open",
        "pipelineId": "VDm7RPYC2GLUvdpKmBfC",
        "pipelineStageId": MAPPING.stage_id("leadway", "proposal"),
        "monetaryValue": 12500.0,
        "createdAt": "2026-01-05T10:00:00.000Z",
        "updatedAt": "2026-01-05T10:00:00.000Z",
        "contact": {"name": "Dana Smith", "email": "dana@harbour.example"},
    },
    "ivvy": {
        "id": 1,
        "venueId": 107,
        "name": "Harbour View Conference",
        "description": "Three-day venue booking",
        "stageId": int(MAPPING.stage_id("ivvy", "proposal") or 70),
        "closedDate": "2027-03-15",
        "createdDate": "2026-01-05 10:00:00",
        "modifiedDate": "2026-01-05 10:00:00",
        "externalUrls": [],
    },
    "salescaling": {
        "id": "feef27c1-487e-489a-9b6c-21d1b6594f64",
        "name": "Harbour View Conference",
        "amount": 12500,
        "closeProbability": 60,
        "description": "Three-day venue booking",
        "closeDate": "2027-03-15T00:00:00.000Z",
        "status": "open",
        "createdAt": "2026-01-05T10:00:00.000Z",
        "updatedAt": "2026-01-05T10:00:00.000Z",
    },
    "icloudready": {
        "_id": "6b046fa06697f76b77000001",
        "opportunityInformation": {"name": "Harbour View Conference"},
        "opportunityDescription": "Three-day venue booking",
        "revenue": 12500,
        "probability": 0.6,
        "closeDate": "2027-03-15",
        "status": "active",
        "stage": "stage2",
        "createdAt": "2026-01-05T10:00:00.000Z",
        "updatedAt": "2026-01-05T10:00:00.000Z",
    },
}

#: (vendor, change to the valid record, a field the dead letter must name)
BAD: list[tuple[str, dict[str, Any], str]] = [
    # wrong types
    ("siro", {"amount": "lots"}, "amount"),
    ("leadway", {"monetaryValue": "lots"}, "monetaryValue"),
    ("ivvy", {"stageId": "proposal"}, "stageId"),
    ("salescaling", {"amount": "a lot"}, "amount"),
    ("icloudready", {"revenue": "a lot"}, "revenue"),
    # dates
    ("siro", {"closedAt": "2027-13-45T00:00:00Z"}, "closedAt"),
    ("ivvy", {"closedDate": "15/03/2027"}, "closedDate"),
    ("salescaling", {"closeDate": "someday"}, "closeDate"),
    ("icloudready", {"closeDate": "someday"}, "closeDate"),
    ("leadway", {"updatedAt": "yesterday"}, "updatedAt"),
    # numeric ranges
    ("siro", {"amount": -5}, "amount"),
    ("salescaling", {"closeProbability": 250}, "closeProbability"),
    ("icloudready", {"revenue": -5}, "revenue"),
    ("leadway", {"monetaryValue": 1e15}, "amount"),
    # lengths
    ("siro", {"name": TOO_LONG}, "name"),
    ("leadway", {"name": TOO_LONG}, "name"),
    ("ivvy", {"name": TOO_LONG}, "name"),
    ("salescaling", {"name": TOO_LONG}, "name"),
    ("icloudready", {"opportunityInformation": {"name": TOO_LONG}}, "name"),
    ("ivvy", {"description": "d" * 20_000}, "description"),
]


def vendor_requests(sims: dict[str, Any]) -> int:
    return sum(len(sim.log) for sim in sims.values())


def letters(client: redis.Redis) -> list[DeadLetter]:
    return DeadLetters(client).list()


def named(fields: dict[str, Any], name: str) -> Any:
    """The messages kept for ``name``, wherever the schema nested it."""
    if name in fields:
        return fields[name]
    for value in fields.values():
        if isinstance(value, dict):
            found = named(value, name)
            if found is not None:
                return found
    return None


@pytest.mark.parametrize("vendor", VENDORS)
def test_validation_accepts_the_valid_records(rt: Runtime, vendor: str) -> None:
    # the baseline every bad case below changes one field of
    opportunity = ingest.canonical_of(rt.adapters[vendor], VALID[vendor])
    assert opportunity.name == "Harbour View Conference"


@pytest.mark.parametrize(("vendor", "change", "field"), BAD)
def test_validation_bad_record_is_a_dead_letter_naming_the_field(
    rt: Runtime, sims: dict[str, Any], ingest_task: Any, vendor: str, change: Any, field: str
) -> None:
    # given a vendor's record with one bad value, delivered whole (no fetch needed)
    record = {**VALID[vendor], **change}
    before = vendor_requests(sims)
    # when the ingest task runs, it ends failed (DeadLettered)
    with pytest.raises(DeadLettered):
        ingest_task(envelope=envelope(vendor, record).to_dict())
    # as one dead letter, no retry, naming the field and why
    (letter,) = letters(rt.redis)
    assert (letter.kind, letter.vendor, letter.reason) == ("ingest", vendor, "invalid_payload")
    why = named(letter.fields, field)
    assert why, letter.fields
    assert str(why).strip("[]'\" ")
    # and no vendor was called: not the source, not a target
    assert vendor_requests(sims) == before
    assert not rt.store.all_keys()


def test_validation_lists_every_bad_field_at_once(rt: Runtime) -> None:
    # given a record with three bad values
    record = {**VALID["salescaling"], "amount": "a lot", "closeProbability": 250, "name": 7}
    # then one error lists all three (the sender fixes them in one go)
    with pytest.raises(InvalidPayload) as refused:
        ingest.canonical_of(rt.adapters["salescaling"], record)
    assert {"amount", "closeProbability", "name"} <= set(refused.value.fields)


def test_validation_canonical_ranges_are_checked_before_any_vendor_call(
    rt: Runtime, sims: dict[str, Any]
) -> None:
    # given values each vendor schema takes but the canonical one does not
    before = vendor_requests(sims)
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("siro", {"amount": 10**14}, "amount"),
        ("leadway", {"name": TOO_LONG}, "name"),
        ("icloudready", {"opportunityDescription": "d" * 20_000}, "description"),
    ]
    for vendor, change, field in cases:
        # when validated / then refused by field, with nothing sent anywhere
        with pytest.raises(InvalidPayload) as refused:
            ingest.ingest(rt, envelope(vendor, {**VALID[vendor], **change}))
        assert named(refused.value.fields, field), refused.value.fields
    assert vendor_requests(sims) == before


def no_retry(*_args: Any, **_kwargs: Any) -> None:
    raise AssertionError("a vendor's refusal of a field must not be retried")


@pytest.mark.parametrize(
    ("source", "change", "target", "field"),
    [
        # Leadway says "abandoned"; this Salescaling tenant has no such status (400)
        ("leadway", {"status": "abandoned"}, "salescaling", "status"),
        # Salescaling holds 5 million; this HighLevel location caps values (422)
        ("salescaling", {"amount": 5_000_000}, "leadway", "monetaryValue"),
    ],
)
def test_validation_vendor_refusal_names_the_field_in_the_dead_letter(
    rt: Runtime, source: str, change: dict[str, Any], target: str, field: str
) -> None:
    # given a valid change from the source, merged
    outcome = ingest.ingest(rt, envelope(source, {**VALID[source], **change}))
    assert outcome.key is not None and target in outcome.targets
    # when it is pushed to a target that refuses one field of it
    result = fanout.push_once(
        rt,
        outcome.key,
        target,
        cause={"vendor": source},
        attempt=1,
        first_attempt_at=time.time(),
        schedule_retry=no_retry,
    )
    # then the push is a dead letter whose fields name that field with the vendor's words
    assert result.outcome is PushOutcome.DEAD_LETTER
    (letter,) = letters(rt.redis)
    assert (letter.kind, letter.vendor) == ("push", target)
    assert field in letter.fields, letter.fields
    assert field in str(letter.fields[field])
    assert letter.answer and field in letter.answer
    assert f"(field {field!r})" in letter.message
