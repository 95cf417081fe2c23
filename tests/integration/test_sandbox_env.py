"""``oppsync run --sandbox`` as a newcomer runs it, and the CLI pointed at it with ``source``.

The sandbox writes what the CLI needs (the embedded Redis's URL with its password, the
simulators' URLs and credentials, the admin credentials) to ``.oppsync/sandbox.env``, mode
0600, prints the ``source`` line and nothing else carrying the password; its Redis refuses a
connection without the password; what the stack writes under ``.oppsync`` is 0600.
"""

from __future__ import annotations

import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import pytest
import redis

from worker.sandbox.embedded_redis import free_port
from worker.sandbox.localrun import SANDBOX_ENV, STATE_DIR
from worker.sandbox.stack import ROOT, wait_for

pytestmark = pytest.mark.integration

VENDOR_PREFIXES = ("OPPSYNC_", "SIRO_", "LEADWAY_", "IVVY_", "SALESCALING_", "ICLOUDREADY_")


class Sandbox:
    def __init__(self, process: subprocess.Popen[bytes], output: Path, port: int) -> None:
        self.process, self.output, self.port = process, output, port

    def printed(self) -> str:
        return self.output.read_text(errors="replace")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    output = tmp_path_factory.mktemp("sandbox") / "out.log"
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "FLOWER_BASIC_AUTH") and not k.startswith(VENDOR_PREFIXES)
    }
    env["FLOWER_PORT"] = str(free_port())
    with output.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "run", "--sandbox", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = Sandbox(process, output, port)
    try:
        wait_for(lambda: "source " in running.printed(), 60, "the source line")
        wait_for(lambda: _ready(port), 90, "the sandbox's web to be ready")
        yield running
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def sourced(*args: str) -> subprocess.CompletedProcess[str]:
    """``oppsync`` run in a shell that sourced the sandbox's file, and nothing else."""
    bare = {
        k: v
        for k, v in os.environ.items()
        if k != "REDIS_URL" and not k.startswith(VENDOR_PREFIXES)
    }
    command = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "worker.cli", *args))
    return subprocess.run(
        ["bash", "-c", f"source {shlex.quote(str(SANDBOX_ENV))} && {command}"],
        cwd=ROOT,
        env=bare,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sandbox_env_file_points_the_cli_at_the_running_sandbox(sandbox: Sandbox) -> None:
    # then the file is its owner's only and the sandbox said how to use it
    assert stat.S_IMODE(SANDBOX_ENV.stat().st_mode) == 0o600
    assert f"source {SANDBOX_ENV}" in sandbox.printed()
    # when an operator sources it and runs the CLI / then it reaches the sandbox's Redis
    listed = sourced("deadletters", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "No dead letters."
    # and the simulated vendors (a reconciliation lists every one of them)
    reconciled = sourced("reconcile")
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    assert reconciled.stdout.startswith("Reconciled 0 opportunities in siro, leadway, ivvy")


def test_sandbox_redis_requires_its_password_which_is_never_printed(sandbox: Sandbox) -> None:
    url = next(
        shlex.split(line.removeprefix("export "))[0].split("=", 1)[1]
        for line in SANDBOX_ENV.read_text().splitlines()
        if line.startswith("export REDIS_URL=")
    )
    parts = urlsplit(url)
    password = unquote(parts.password or "")
    # then the Redis the sandbox started has a password, which a local user does not know
    assert len(password) >= 32
    with pytest.raises((redis.AuthenticationError, redis.ResponseError)):
        redis.Redis(host="127.0.0.1", port=parts.port or 0, socket_timeout=2).lpush("ingest", "x")
    assert redis.Redis.from_url(url).ping()
    # and neither the sandbox's output nor its processes' logs carry it
    time.sleep(1)
    assert password not in sandbox.printed()


def test_sandbox_state_files_are_the_owners_only(sandbox: Sandbox) -> None:
    # then .oppsync and the embedded Redis's folder are 0700, and their files 0600
    folders = [STATE_DIR, STATE_DIR / "redis"]
    assert {str(f): stat.S_IMODE(f.stat().st_mode) for f in folders} == {
        str(f): 0o700 for f in folders
    }
    files = [p for p in STATE_DIR.rglob("*") if p.is_file()]
    assert any(p.name.startswith("flower") for p in files), files
    assert {str(p): stat.S_IMODE(p.stat().st_mode) for p in files} == {str(p): 0o600 for p in files}
