"""``oppsync`` as an operator runs it: a subprocess with the service's environment, against the
real stack (``show``, ``deadletters``, ``config check``) or a stack of its own (``demo``)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from typing import Any

import click
import httpx
import pytest
import redis
import yaml
from click.testing import CliRunner

from tests.integration.drive import (
    DEAL,
    announce,
    as_held_by,
    held,
    others,
    person_creates,
    wait_converged,
)
from worker.cli import main
from worker.errors import InvalidPayload
from worker.sandbox.board import SAMPLES
from worker.sandbox.embedded_redis import free_port
from worker.sandbox.stack import ROOT, VENDORS, Stack, wait_for
from worker.store.deadletters import DeadLetters

pytestmark = pytest.mark.integration

VENDOR_PREFIXES = ("OPPSYNC_", "SIRO_", "LEADWAY_", "IVVY_", "SALESCALING_", "ICLOUDREADY_")


def oppsync(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the command line as a separate process (``python -m worker.cli`` is ``oppsync``)."""
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_show_prints_every_vendors_id_and_provenance(live: Stack) -> None:
    # given a deal created in Salescaling and synced to the other four
    vendor_id = person_creates(live, "salescaling")
    assert announce(live, "salescaling", vendor_id) == 202
    wait_converged(live, others("salescaling"), as_held_by("salescaling", DEAL))
    # when an operator asks for it by its Salescaling id
    result = oppsync(live.env, "show", f"salescaling:{vendor_id}")
    # then every vendor's id is listed, and each write says which delivery caused it
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert vendor_id in lines["salescaling"]
    for target in others("salescaling"):
        (target_id,) = list(live.sims[target].records)
        assert str(target_id) in lines[target], result.stdout
        assert "because of salescaling delivery" in lines[target], result.stdout
    assert result.stdout.startswith("opportunity opp_")
    assert DEAL.name and DEAL.name in result.stdout


def test_cli_show_says_when_nothing_is_known(live: Stack) -> None:
    result = oppsync(live.env, "show", "siro:no-such-id")
    assert result.returncode == 1
    assert "no opportunity known as 'siro:no-such-id'" in result.stderr


def test_cli_deadletters_list_show_replay_and_purge(live: Stack) -> None:
    client = redis.Redis.from_url(live.redis.url, decode_responses=True)
    # given Salescaling and iCloudReady refusing creates, and a deal from SIRO
    live.sims["salescaling"].faults.add(
        "error", status=400, times=5, methods=("POST",), path_contains="/opportunities"
    )
    live.sims["icloudready"].faults.add(
        "error", status=422, times=5, methods=("POST",), path_contains="/api/v2/opportunities"
    )
    assert announce(live, "siro", person_creates(live, "siro")) == 202
    letters = wait_for(
        lambda: len(found := DeadLetters(client).list()) == 2 and found, 30, "no dead letters"
    )
    by_vendor = {x.vendor: x for x in letters}
    assert set(by_vendor) == {"salescaling", "icloudready"}
    for sim in live.sims.values():
        sim.faults.clear()

    # list: one line per letter
    listed = oppsync(live.env, "deadletters", "list")
    assert listed.returncode == 0, listed.stderr
    for letter in letters:
        (line,) = [x for x in listed.stdout.splitlines() if x.startswith(letter.id)]
        assert letter.vendor in line and letter.reason in line
    # show: the whole letter
    shown = oppsync(live.env, "deadletters", "show", by_vendor["salescaling"].id)
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["vendor"] == "salescaling" and detail["job"]["key"]
    assert "400" in detail["message"]
    # replay: once, and the vendor now holds the deal
    replayed = oppsync(live.env, "deadletters", "replay", by_vendor["salescaling"].id)
    assert replayed.stdout.strip().endswith("replayed"), replayed.stdout + replayed.stderr
    wait_for(lambda: len(held(live, "salescaling")) == 1, 30, "the replay did not reach it")
    again = oppsync(live.env, "deadletters", "replay", by_vendor["salescaling"].id)
    assert "not found" in again.stdout
    # purge: gone without being replayed
    purged = oppsync(live.env, "deadletters", "purge", "--vendor", "icloudready", "--yes")
    assert purged.returncode == 0 and "Purged 1 dead letters." in purged.stdout
    assert oppsync(live.env, "deadletters", "list").stdout.strip() == "No dead letters."
    assert held(live, "icloudready") == []


def test_cli_deadletters_purge_takes_single_letters(live: Stack) -> None:
    # given two dead letters of one vendor
    letters = DeadLetters(redis.Redis.from_url(live.redis.url, decode_responses=True))
    made = [
        letters.add(
            kind="ingest", vendor="siro", job={"n": n}, attempts=1, error=InvalidPayload("bad")
        )
        for n in range(2)
    ]
    # when the operator purges one of them by id (as Troubleshooting says to)
    purged = oppsync(live.env, "deadletters", "purge", made[0].id, "no-such-letter", "--yes")
    # then that one is gone, the other is kept, and an unknown id is said to be unknown
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert purged.stdout.splitlines() == [f"{made[0].id}: purged", "no-such-letter: not found"]
    assert [x.id for x in letters.list()] == [made[1].id]
    # and without ids, vendor or --all, nothing is purged
    refused = oppsync(live.env, "deadletters", "purge", "--yes")
    assert refused.returncode == 2 and "--all" in refused.stderr
    assert [x.id for x in letters.list()] == [made[1].id]
    letters.take(made[1].id)


def test_cli_version_and_openapi_version_follow_the_package(live: Stack) -> None:
    package = importlib.metadata.version("oppsync")
    said = oppsync(live.env, "--version")
    assert said.returncode == 0 and said.stdout.strip() == f"oppsync, version {package}"
    spec = yaml.safe_load(httpx.get(f"{live.web_url}/openapi.yaml").text)
    assert spec["info"]["version"] == package


def test_cli_config_check_reports_each_vendor_working(live: Stack) -> None:
    result = oppsync(live.env, "config", "check")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Configuration: OK" in out and "Redis: answers" in out
    for vendor in VENDORS:
        (line,) = [x for x in out.splitlines() if x.startswith(f"{vendor}: ")]
        assert "FAILED" not in line, line


def test_cli_config_check_names_a_missing_variable(live: Stack) -> None:
    env = {k: v for k, v in live.env.items() if k != "LEADWAY_PIPELINE_ID"}
    result = oppsync(env, "config", "check")
    assert result.returncode == 2
    assert "LEADWAY_PIPELINE_ID is required" in result.stdout


def test_cli_config_check_says_which_vendor_refuses_the_credentials(live: Stack) -> None:
    env = {**live.env, "SALESCALING_API_KEY": "a-key-salescaling-does-not-know"}
    result = oppsync(env, "config", "check")
    assert result.returncode == 1
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("salescaling: ")]
    assert "FAILED" in line
    others_ok = [x for x in result.stdout.splitlines() if x.startswith("siro: ")]
    assert others_ok and "FAILED" not in others_ok[0]


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


@pytest.mark.parametrize("path", _commands(main), ids=lambda p: " ".join(p) or "oppsync")
def test_cli_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert len(result.output.split("Usage:", 1)[1].strip().splitlines()) > 2


def test_cli_demo_converges_and_exits_when_asked() -> None:
    # given a newcomer's machine: no Redis configured, no vendor configured
    env: dict[str, Any] = {
        k: v
        for k, v in os.environ.items()
        if k != "REDIS_URL" and not k.startswith(VENDOR_PREFIXES)
    }
    env["FLOWER_PORT"] = str(free_port())
    # when they run the demo (asking it to stop once the deals agree)
    result = oppsync(env, "demo", "--exit-when-converged", "--port", str(free_port()), timeout=150)
    # then it printed a table where every vendor holds every sample deal, and exited 0
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    out = result.stdout
    assert "All five vendors agree on all five deals: converged in" in out
    rows = [
        line
        for line in out.splitlines()
        if any(d.name and d.name in line for d in SAMPLES.values())
    ]
    table_rows = [row for row in rows if row.startswith("│")]
    assert len(table_rows) == len(SAMPLES), out
    for row in table_rows:
        assert row.count("✓") == len(VENDORS), row
        # and each deal's key, to pass to oppsync show
        assert re.search(r"│ opp_[0-9a-f]{20} +│", row), row
