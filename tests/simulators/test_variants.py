"""The simulators' answer variants: seeded, varied, and every one readable by the vendor's
schema as the record the simulator holds (a form it cannot read is a schema bug)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest

from schemas.opportunity import Opportunity
from tests.integration.drive import MAPPING, person_creates, schema
from worker.sandbox.simulators.base import Simulator
from worker.sandbox.simulators.icloudready import IcloudreadySimulator
from worker.sandbox.simulators.ivvy import IvvySimulator
from worker.sandbox.simulators.leadway import LeadwaySimulator
from worker.sandbox.simulators.salescaling import SalescalingSimulator
from worker.sandbox.simulators.siro import SiroSimulator
from worker.sandbox.simulators.variants import Variants
from worker.sandbox.stack import VENDORS, Stack

SIMULATORS: dict[str, type[Simulator]] = {
    "siro": SiroSimulator,
    "leadway": LeadwaySimulator,
    "ivvy": IvvySimulator,
    "salescaling": SalescalingSimulator,
    "icloudready": IcloudreadySimulator,
}


@pytest.fixture(params=VENDORS)
def written(request: pytest.FixtureRequest) -> Iterator[tuple[str, Simulator, str]]:
    """A simulator holding one deal as oppsync's last write left it."""
    vendor = str(request.param)
    sim = SIMULATORS[vendor]()
    vendor_id = person_creates(cast(Stack, SimpleNamespace(sims={vendor: sim})), vendor)
    sim.wrote(vendor_id)
    yield vendor, sim, vendor_id
    sim.stop()


def read(vendor: str, record: dict[str, Any]) -> Opportunity:
    opp: Opportunity = schema(vendor).to_canonical(json.loads(json.dumps(record)), MAPPING)
    return opp


def test_variants_off_answer_the_stored_record(written: tuple[str, Simulator, str]) -> None:
    _, sim, vendor_id = written
    assert sim.shown(sim.records[vendor_id]) == sim.records[vendor_id]


def test_variants_vary_answers_and_replay_by_seed(written: tuple[str, Simulator, str]) -> None:
    # given the same record answered 40 times under one seed
    _, sim, vendor_id = written

    def answers(seed: int) -> list[str]:
        sim.variants = Variants(seed)
        return [json.dumps(sim.shown(sim.records[vendor_id])) for _ in range(40)]

    first = answers(7)
    # then the forms differ between answers, and the same seed gives the same answers
    assert len(set(first)) > 5
    assert answers(7) == first
    assert answers(8) != first


def test_every_variant_reads_as_the_record_held(written: tuple[str, Simulator, str]) -> None:
    # given the record as stored, read by the vendor's schema
    vendor, sim, vendor_id = written
    held = read(vendor, sim.records[vendor_id])
    fields = schema(vendor).SYNCED_FIELDS
    module = schema(vendor)
    for seed in range(150):
        sim.variants = Variants(seed)
        answer = sim.shown(sim.records[vendor_id])
        # when an answer in variant forms is read
        opp = read(vendor, answer)
        # then it names the same record, at the same time, and each field it carries holds
        # the same value (what it leaves unknown is kept from what oppsync holds)
        assert module.record_id(answer) == vendor_id, answer
        assert opp.updated_at == held.updated_at, answer
        known = opp.completed(held)
        assert {f: getattr(known, f) for f in fields} == {f: getattr(held, f) for f in fields}, (
            seed,
            answer,
        )


def test_person_changed_keys_are_never_dropped_or_garbled(
    written: tuple[str, Simulator, str],
) -> None:
    # given a record a person changed after oppsync wrote it (every synced key replaced)
    vendor, sim, vendor_id = written
    changes: dict[str, dict[str, Any]] = {
        "siro": {"name": "Renamed", "disposition": "WON", "opportunityContacts": []},
        "leadway": {"name": "Renamed", "status": "won"},
        "ivvy": {"name": "Renamed", "stageId": 71},
        "salescaling": {"name": "Renamed", "status": "won"},
        "icloudready": {"name": "Renamed", "status": "won", "stage": "closed-won",
                        "revenue": 5, "opportunityDescription": "x"},
    }  # fmt: skip
    changed = changes[vendor]
    cast(Any, sim).edit(vendor_id, **changed)
    held = read(vendor, sim.records[vendor_id])
    for seed in range(100):
        sim.variants = Variants(seed)
        opp = read(vendor, sim.shown(sim.records[vendor_id]))
        # then every answer carries the person's values
        assert opp.name == "Renamed" and opp.status == held.status, seed
        assert not {"name", "status"} & opp.unknown, seed
