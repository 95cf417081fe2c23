"""How integration tests drive the vendors: a person creating or editing a deal in a
vendor's UI, the vendor announcing it, and reading back what every vendor holds."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import threading
import uuid
from datetime import date
from decimal import Decimal
from typing import Any

import redis

from schemas.opportunity import SYNCED_FIELDS, Contact, Opportunity, Status
from tests.integration.conftest import wait_idle
from tests.strategies import EXAMPLE_MAPPING as MAPPING
from worker.sandbox.simulators.base import LoggedRequest
from worker.sandbox.stack import ROOT, VENDORS, Stack, wait_for
from worker.store.history import RECENT_EVENTS, TRIM_SLACK
from worker.store.state import Store

DEAL = Opportunity(
    name="Harbour View Conference",
    amount=Decimal("12500.00"),
    status=Status.OPEN,
    stage="proposal",
    close_date=date(2027, 3, 15),
    description="Three-day venue booking",
    probability=Decimal("60.00"),
    owner="alice@example.com",
    contact=Contact(name="Dana Smith", email="dana@harbour.example", phone="+61400111222"),
    company="Harbour Events",
)


def schema(vendor: str) -> Any:
    return importlib.import_module(f"schemas.{vendor}")


def held(stack: Stack, vendor: str) -> list[Opportunity]:
    """Every record the vendor holds, as the canonical value its schema reads."""
    return list(held_by_id(stack, vendor).values())


def held_by_id(stack: Stack, vendor: str) -> dict[str, Opportunity]:
    """Every record the vendor holds by its id, as the canonical value its schema reads."""
    with stack.sims[vendor].state_lock:
        records = {i: json.loads(json.dumps(r)) for i, r in stack.sims[vendor].records.items()}
    return {i: schema(vendor).to_canonical(r, MAPPING) for i, r in records.items()}


def synced(opp: Opportunity, vendor: str) -> dict[str, Any]:
    fields = schema(vendor).SYNCED_FIELDS
    return {f: getattr(opp, f) for f in SYNCED_FIELDS if f in fields}


def expected(vendor: str, opp: Opportunity = DEAL) -> dict[str, Any]:
    return synced(schema(vendor).project(opp, MAPPING), vendor)


def person_creates(stack: Stack, vendor: str, opp: Opportunity = DEAL) -> str:
    """A person creates the deal in the vendor's own UI (no oppsync involved)."""
    sim = stack.sims[vendor]
    mod = schema(vendor)
    if vendor == "siro":
        crm_id = f"crm-{uuid.uuid4().hex[:8]}"  # the customer's CRM id, not our key
        return str(sim.apply_sync(mod.to_body(opp, MAPPING, key=crm_id))[0]["id"])
    if vendor == "salescaling":
        return str(sim.write(mod.to_body(opp, MAPPING))["id"])
    if vendor == "icloudready":
        return str(sim.store_new(mod.to_body(opp, MAPPING, create=True))["_id"])
    if vendor == "leadway":
        contact = opp.contact or Contact()
        return str(
            sim.seed(
                {
                    "name": opp.name,
                    "status": opp.status.value if opp.status else "open",
                    "monetaryValue": float(opp.amount) if opp.amount is not None else None,
                    "pipelineId": sim.pipeline_id,
                    "pipelineStageId": MAPPING.stage_id("leadway", opp.stage),
                    "assignedTo": MAPPING.owner_id("leadway", opp.owner),
                    "contact": {
                        "name": contact.name,
                        "email": contact.email,
                        "phone": contact.phone,
                        "companyName": opp.company,
                    },
                }
            )
        )
    if vendor == "ivvy":
        first, _, last = (opp.contact.name or "").partition(" ") if opp.contact else ("", "", "")
        return str(
            sim.seed(
                {
                    "name": opp.name,
                    "description": opp.description,
                    "stageId": int(MAPPING.stage_id("ivvy", opp.stage) or 69),
                    "closedDate": opp.close_date.isoformat() if opp.close_date else None,
                    "ownerUserId": int(MAPPING.owner_id("ivvy", opp.owner) or 0) or None,
                    "contact": {
                        "firstName": first,
                        "lastName": last,
                        "email": opp.contact.email if opp.contact else None,
                        "phone": opp.contact.phone if opp.contact else None,
                    },
                    "company": {"businessName": opp.company},
                }
            )
        )
    raise AssertionError(vendor)


def announce(
    stack: Stack, vendor: str, vendor_id: str, *, created: bool = True, thin: bool = False
) -> int:
    """The vendor tells oppsync: its native webhook where it has one, else its automation
    (Standard Webhooks). Returns the receiver's answer."""
    sim = stack.sims[vendor]
    if vendor == "leadway" and not thin:
        return int(sim.emit(vendor_id, "OpportunityCreate" if created else "OpportunityUpdate"))
    if vendor == "ivvy" and not thin:
        return int(sim.emit(vendor_id, "OpportunityAdded" if created else "OpportunityUpdated"))
    return int(sim.emit_standard(vendor_id, thin=thin))


def others(vendor: str) -> list[str]:
    return [v for v in VENDORS if v != vendor]


def converged(stack: Stack, targets: list[str], opp: Opportunity) -> bool:
    """Each target holds one record with what ``opp`` looks like in that vendor."""
    for target in targets:
        records = held(stack, target)
        if len(records) != 1 or synced(records[0], target) != expected(target, opp):
            return False
    return True


def as_held_by(source: str, opp: Opportunity) -> Opportunity:
    """The deal as the source vendor can hold it: what the others can learn from it."""
    return schema(source).project(opp, MAPPING)


def wait_converged(stack: Stack, targets: list[str], opp: Opportunity) -> None:
    try:
        wait_for(lambda: converged(stack, targets, opp), 30, "vendors did not converge")
    except TimeoutError:
        report = {t: [synced(o, t) for o in held(stack, t)] for t in targets}
        wanted = {t: expected(t, opp) for t in targets}
        raise AssertionError(f"held: {report}\nwanted: {wanted}\n{stack.logs()[-3000:]}") from None


def writes(stack: Stack) -> int:
    """Write requests every simulator has answered so far."""
    return sum(
        1
        for sim in stack.sims.values()
        for r in sim.log
        if r.method in ("POST", "PUT", "PATCH", "DELETE")
        and "getOpportunityList" not in r.query
        and "List" not in r.query
        and "/search" not in r.path
        and "/signin" not in r.path
    )


# -- what a person does in each vendor, and what each vendor was sent ------------------------
def person_edits(
    stack: Stack, vendor: str, vendor_id: str, *, name: str, amount: int | None = None
) -> None:
    """A person renames the deal (and sets its amount, where the vendor has one)."""
    sim = stack.sims[vendor]
    money = (
        {}
        if amount is None
        else {
            "siro": {"amount": amount},
            "leadway": {"monetaryValue": amount},
            "salescaling": {"amount": amount},
            "icloudready": {"revenue": amount},
            "ivvy": {},
        }[vendor]
    )
    sim.edit(vendor_id, name=name, **money)


def upserts(stack: Stack, vendor: str) -> list[LoggedRequest]:
    """The opportunity writes (creates and updates) the vendor has answered."""

    def is_upsert(r: LoggedRequest) -> bool:
        if vendor == "siro":
            return r.method == "PUT" and r.path.endswith("/sync/opportunities")
        if vendor == "leadway":
            return r.method == "POST" and r.path == "/opportunities/upsert"
        if vendor == "ivvy":
            return "action=addOrUpdateOpportunity" in r.query
        if vendor == "salescaling":
            return r.method in ("POST", "PUT") and "/contacts" not in r.path
        return r.method in ("POST", "PATCH") and "/opportunities" in r.path

    return [r for r in list(stack.sims[vendor].log) if is_upsert(r)]


def written_name(vendor: str, request: LoggedRequest) -> str:
    body = request.body or {}
    if vendor == "icloudready":
        return str((body.get("opportunityInformation") or {}).get("name"))
    return str(body.get("name"))


def a_moment_later() -> None:
    """Let the clocks move on, so two edits get different times (the vendors keep ms)."""
    threading.Event().wait(0.01)


def only_id(stack: Stack, vendor: str) -> str:
    (vendor_id,) = list(stack.sims[vendor].records)
    return str(vendor_id)


def names(stack: Stack) -> dict[str, list[str | None]]:
    return {v: [o.name for o in held(stack, v)] for v in VENDORS}


def wait_names(stack: Stack, wanted: str, vendors: tuple[str, ...] = VENDORS) -> None:
    try:
        wait_for(lambda: all(names(stack)[v] == [wanted] for v in vendors), 30, "no convergence")
    except TimeoutError:
        raise AssertionError(f"wanted {wanted!r} everywhere, held {names(stack)}") from None


def everywhere(held_values: dict[str, list[Any]], wanted: Any) -> bool:
    """Each vendor holds exactly one record, with ``wanted``."""
    return all(values == [wanted] for values in held_values.values())


def settle(stack: Stack) -> None:
    wait_idle(redis.Redis.from_url(stack.redis.url), timeout=60)


def wait_quiet(stack: Stack, timeout: float = 60) -> None:
    """Until every simulator has answered every request it was holding (a held create may
    still commit) and the stack is idle: only then is "exactly one record" a fact."""
    with redis.Redis.from_url(stack.redis.url) as client:
        while True:
            wait_for(
                lambda: all(sim.held == 0 for sim in stack.sims.values()),
                timeout,
                "a simulator still holds a request",
            )
            wait_idle(client, timeout=timeout)  # what the held requests set off, done
            if all(sim.held == 0 for sim in stack.sims.values()):
                return


def synced_from(stack: Stack, source: str) -> str:
    """A deal a person created in ``source``, synced to all five; returns its key."""
    vendor_id = person_creates(stack, source)
    assert announce(stack, source, vendor_id) == 202
    wait_names(stack, DEAL.name or "")
    settle(stack)
    client = redis.Redis.from_url(stack.redis.url, decode_responses=True)
    key = Store(client).key_for(source, vendor_id)
    assert key
    return str(key)


def events(stack: Stack) -> list[dict[str, Any]]:
    """Every event outcome the status page keeps (``oppsync:events``), newest first."""
    with redis.Redis.from_url(stack.redis.url, decode_responses=True) as client:
        return Store(client).recent_events(RECENT_EVENTS + TRIM_SLACK)


# -- 1. per-record ordering -----------------------------------------------------------------


def run_cli(stack: Stack, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``oppsync <args>`` as an operator runs it, with the stack's environment."""
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def oppsync_show(stack: Stack, ref: str) -> str:
    answer = run_cli(stack, "show", ref, timeout=60)
    assert answer.returncode == 0, answer.stderr
    return answer.stdout
