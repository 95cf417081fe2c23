"""What ``oppsync`` prints never drives the operator's terminal: vendor data carrying
``ESC[2J`` (clear the screen) or ``ESC]0;…BEL`` (set the window title) prints escaped."""

from __future__ import annotations

import pytest
import redis

from tests.integration.drive import (
    DEAL,
    announce,
    as_held_by,
    others,
    person_creates,
    wait_converged,
)
from tests.integration.test_cli import oppsync
from worker.errors import Permanent
from worker.sandbox.stack import Stack
from worker.store.deadletters import DeadLetters
from worker.store.keys import field, opp_key
from worker.store.state import Store

pytestmark = pytest.mark.integration

HOSTILE = "x\x1b[2J\x1b]0;title\x07\x9b31m"
SHOWN = "x\\x1b[2J\\x1b]0;title\\x07\\x9b31m"


def obeyable(text: str) -> list[str]:
    """The control characters a terminal would act on (newline aside)."""
    return [c for c in text if c != "\n" and (ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F)]


def test_terminal_show_prints_a_hostile_vendor_id_escaped(live: Stack) -> None:
    client = redis.Redis.from_url(live.redis.url, decode_responses=True)
    # given a synced deal whose SIRO id (linked before ids were checked) carries escapes
    vendor_id = person_creates(live, "salescaling")
    assert announce(live, "salescaling", vendor_id) == 202
    wait_converged(live, others("salescaling"), as_held_by("salescaling", DEAL))
    key = Store(client).key_for("salescaling", vendor_id)
    assert key is not None
    client.hset(opp_key(key), field("i", "siro"), HOSTILE)
    # when an operator shows it
    result = oppsync(live.env, "show", key)
    # then the id is printed with its escapes written out, none of them raw
    assert result.returncode == 0, result.stderr
    assert SHOWN in result.stdout
    assert obeyable(result.stdout) == []


def test_terminal_deadletters_list_prints_a_hostile_answer_escaped(live: Stack) -> None:
    client = redis.Redis.from_url(live.redis.url, decode_responses=True)
    # given a dead letter whose vendor answer (kept in its message) carries escapes
    refused = Permanent(
        f"salescaling PUT /api/v1/opportunities/1: refused with 400: {HOSTILE}",
        vendor="salescaling",
        status=400,
        answer=HOSTILE,
    )
    DeadLetters(client).add(kind="push", vendor="salescaling", job={}, attempts=1, error=refused)
    # when an operator lists the dead letters
    result = oppsync(live.env, "deadletters", "list")
    # then the answer is printed with its escapes written out, none of them raw
    assert result.returncode == 0, result.stderr
    assert SHOWN in result.stdout
    assert obeyable(result.stdout) == []
