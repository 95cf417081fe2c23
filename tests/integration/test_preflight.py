"""The pre-flight check, as an operator meets it: each class of configuration mistake stops
``oppsync run``, ``oppsync config check`` and the Procfile's processes before anything
starts, with one line naming the variable and a valid value, exit status 2 and no traceback.
Each command runs as its own process (the Procfile's lines through ``sh -c``, as honcho and a
PaaS run them)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.test_cli import oppsync
from worker.sandbox.embedded_redis import EmbeddedRedis, free_port
from worker.sandbox.stack import ROOT, procfile_args, wait_for

pytestmark = pytest.mark.integration

SERVICE_PREFIXES = ("OPPSYNC_", "SIRO_", "LEADWAY_", "IVVY_", "SALESCALING_", "ICLOUDREADY_")
HEADING = re.compile(r"^oppsync cannot start: \d+ configuration problems? \(docs/configuration\.md")

#: A mapping file with a typo: "leadwy" for "leadway".
TYPO_MAPPING = """
[[stages]]
name = "new"
status = "open"
leadwy = "7915dedc-8f18-44d5-8bc3-77c04e994a10"
"""


def clean_env(**values: str) -> dict[str, str]:
    """This machine's environment without any oppsync setting, plus ``values``; a port of
    its own for the web and Flower, in case a process gets as far as listening."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SERVICE_PREFIXES)}
    env.pop("REDIS_URL", None)
    env.update({"PORT": str(free_port()), "FLOWER_PORT": str(free_port()), "PYTHONPATH": str(ROOT)})
    env.update(values)
    return env


def one_vendor(**values: str) -> dict[str, str]:
    """A whole configuration (SIRO alone) with ``values`` on top."""
    return (
        clean_env(
            OPPSYNC_VENDORS="siro", SIRO_API_TOKEN="t0ken", REDIS_URL="redis://127.0.0.1:6399/0"
        )
        | values
    )


def run_oppsync(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return oppsync(env, *args, timeout=90)


def run_procfile(process: str) -> Callable[[dict[str, str]], subprocess.CompletedProcess[str]]:
    def start(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            procfile_args(process, env), cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=90,
        )  # fmt: skip

    return start


COMMANDS: dict[str, Callable[[dict[str, str]], subprocess.CompletedProcess[str]]] = {
    "run": lambda env: run_oppsync(env, "run", "--port", env["PORT"]),
    "config check": lambda env: run_oppsync(env, "config", "check"),
    "procfile web": run_procfile("web"),
    "procfile worker": run_procfile("worker"),
}


def mistakes(tmp: Path) -> dict[str, tuple[dict[str, str], str]]:
    """Each class of mistake: its environment, and the start of the one line it gets."""
    typo = tmp / "mapping.toml"
    typo.write_text(TYPO_MAPPING)
    ivvy = {
        "OPPSYNC_VENDORS": "ivvy", "IVVY_API_KEY": "k", "IVVY_API_SECRET": "s",
        "IVVY_VENUE_ID": "107", "IVVY_SOURCE_ID": "25",
    }  # fmt: skip
    return {
        "missing variable": (
            clean_env(**ivvy, REDIS_URL="redis://127.0.0.1:6399/0"),
            "IVVY_TYPE_ID is required when ivvy is enabled",
        ),
        "invalid rate limit": (
            one_vendor(LEADWAY_RATE_LIMIT="garbage"),
            "LEADWAY_RATE_LIMIT='garbage' is not a rate: use COUNT/PERIOD",
        ),
        "bad REDIS_URL": (
            one_vendor(REDIS_URL="localhost:6379"),
            "REDIS_URL='localhost:6379' is not a Redis URL: use redis://",
        ),
        "mapping typo": (
            one_vendor(OPPSYNC_MAPPING=str(typo)),
            f"OPPSYNC_MAPPING={str(typo)!r} is invalid: stages.0.leadwy: Unknown field.",
        ),
        "invalid number": (
            one_vendor(OPPSYNC_HTTP_TIMEOUT_SECONDS="ten"),
            "OPPSYNC_HTTP_TIMEOUT_SECONDS='ten' is not a number above 0: use e.g.",
        ),
        "invalid policy": (
            one_vendor(SIRO_DELETE_POLICY="destroy"),
            "SIRO_DELETE_POLICY='destroy' is not one of: mark-lost, delete, ignore",
        ),
    }


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    "mistake",
    ["missing variable", "invalid rate limit", "bad REDIS_URL", "mapping typo", "invalid number",
     "invalid policy"],
)  # fmt: skip
def test_preflight_refuses_each_mistake_in_one_line(
    command: str, mistake: str, tmp_path: Path
) -> None:
    # given a configuration with one mistake
    env, expected = mistakes(tmp_path)[mistake]
    # when the command starts
    result = COMMANDS[command](env)
    # then it says so in one line under the heading, exits 2, and starts nothing
    said = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, said[-3000:]
    assert "Traceback" not in said, said[-3000:]
    lines = said.splitlines()
    assert len(lines) == 2 and HEADING.match(lines[0]), said[-3000:]
    assert lines[1].strip().startswith(expected), lines[1]
    assert "Configuration: OK" not in said


def test_preflight_lists_every_problem_at_once(tmp_path: Path) -> None:
    # given three mistakes at once
    env = one_vendor(
        LEADWAY_RATE_LIMIT="garbage", REDIS_URL="localhost:6379", OPPSYNC_DELETE_POLICY="nuke"
    )
    # when the Procfile's web starts
    result = run_procfile("web")(env)
    # then each has its line
    said = result.stderr
    assert result.returncode == 2 and "Traceback" not in said
    assert "3 configuration problems" in said
    for variable in ("LEADWAY_RATE_LIMIT=", "REDIS_URL=", "OPPSYNC_DELETE_POLICY="):
        assert len([line for line in said.splitlines() if variable in line]) == 1, said


def test_preflight_passes_a_whole_configuration_to_the_worker(redis_server: EmbeddedRedis) -> None:
    # given a whole configuration whose Redis answers
    env = one_vendor(REDIS_URL=redis_server.url)
    # when the Procfile's worker starts, it gets past the check and serves
    process = subprocess.Popen(
        procfile_args("worker", env), cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("ready" in line for line in seen):
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
        assert any("ready" in line for line in seen), "".join(seen)[-3000:]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        process.stdout.close()  # type: ignore[union-attr]


def test_config_check_stops_at_redis_when_it_does_not_answer() -> None:
    # given a whole configuration whose Redis is not there
    env = one_vendor(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    # when the operator checks it
    result = run_oppsync(env, "config", "check")
    # then the configuration is OK, Redis is blamed, and no vendor is tried
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Configuration: OK" in result.stdout
    assert "Redis: cannot reach" in result.stdout
    assert not [line for line in result.stdout.splitlines() if line.startswith("siro:")]


@pytest.mark.parametrize(
    "args", [("reconcile",), ("backfill", "--from", "siro", "--dry-run")], ids=" ".join
)
def test_operator_commands_refuse_a_bad_configuration_like_the_service(
    args: tuple[str, ...],
) -> None:
    # given a rate limit that does not parse (it used to end backfill with a traceback)
    env = one_vendor(SIRO_RATE_LIMIT="garbage")
    result = run_oppsync(env, *args)
    said = result.stdout + result.stderr
    assert result.returncode == 2, said
    assert "Traceback" not in said
    assert "SIRO_RATE_LIMIT='garbage' is not a rate" in said


def test_run_no_sandbox_refuses_to_start_without_vendors() -> None:
    # given a deploy where every vendor variable was forgotten
    env = clean_env()
    # when it is started with --no-sandbox
    result = run_oppsync(env, "run", "--no-sandbox", "--port", env["PORT"])
    # then it names what is missing, starts nothing (no Redis, no simulators) and exits 2
    said = result.stdout + result.stderr
    assert result.returncode == 2, said
    assert "Traceback" not in said and "started Redis" not in said
    assert "SIRO_API_TOKEN is required when siro is enabled" in said
    assert "sandbox" not in result.stdout.lower()


def test_run_says_it_runs_the_sandbox_and_cleans_up_a_failed_start() -> None:
    # given no vendor configured, and a Procfile value the sandbox keeps from the user's
    env = clean_env(WEB_CONCURRENCY="many")
    # when run starts: the sandbox (Redis, simulators) comes up, then the start is refused
    result = run_oppsync(env, "run", "--port", env["PORT"])
    said = result.stdout + result.stderr
    # then the sandbox was announced in one line, the refusal is one line, exit 2
    assert result.returncode == 2, said
    assert "Traceback" not in said
    (notice,) = [line for line in said.splitlines() if "SANDBOX" in line]
    assert "No vendor is configured" in notice and "--no-sandbox" in notice
    assert "WEB_CONCURRENCY='many' is not a whole number" in said
    # and the Redis it started is stopped
    redis_port = int(re.search(r"started Redis at redis://127.0.0.1:(\d+)", said).group(1))  # type: ignore[union-attr]
    assert not answers(redis_port)


def test_demo_refused_start_stops_its_redis_and_removes_its_folder() -> None:
    # given a Procfile value the demo keeps from the user's environment
    env = clean_env(WEB_CONCURRENCY="many")
    # when the demo starts (its Redis and simulators come up, then the start is refused)
    result = run_oppsync(env, "demo", "--exit-when-converged", "--port", env["PORT"])
    said = result.stdout + result.stderr
    # then one line says why, exit 2, and nothing it made is left
    assert result.returncode == 2, said[-3000:]
    assert "Traceback" not in said
    assert "WEB_CONCURRENCY='many' is not a whole number" in said
    folder = Path(re.search(r"their output: (\S+)/stack\.log", said).group(1))  # type: ignore[union-attr]
    assert not folder.exists()


def answers(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_run_stops_everything_it_started_when_terminated() -> None:
    # given the sandbox running
    env = clean_env()
    web_port, flower_port = int(env["PORT"]), int(env["FLOWER_PORT"])
    process = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "run", "--sandbox", "--port", str(web_port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any("listening on" in x for x in lines):
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
        said = "".join(lines)
        # then it printed where the web and Flower really listen
        assert f"web listening on 0.0.0.0:{web_port}" in said, said[-3000:]
        assert f"Flower on 0.0.0.0:{flower_port}" in said
        assert answers(web_port)
        redis_port = int(re.search(r"started Redis at redis://127.0.0.1:(\d+)", said).group(1))  # type: ignore[union-attr]
        # when a supervisor stops it (SIGTERM to this process only, not its group)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        # then Redis and every Procfile process are gone with it
        wait_for(lambda: not answers(web_port) and not answers(redis_port), 30, "left running")
        assert not answers(flower_port)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.stdout.close()  # type: ignore[union-attr]
