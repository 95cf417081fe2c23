"""The deploy files agree with the code: ``.env.example`` names every variable oppsync reads,
each with a comment; the Dockerfile, ``docker-compose.yml`` and ``render.yaml`` run the
Procfile's processes from one image or build, on a Redis that keeps what it is given."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from worker import preflight
from worker.errors import ConfigError
from worker.sandbox.stack import ROOT
from worker.settings import from_env

PROCESSES = ("web", "worker", "beat", "flower")
APP_SOURCES = [*ROOT.joinpath("worker").rglob("*.py"), *ROOT.joinpath("web").rglob("*.py")]


#: What a WSGI server puts in a request's environ (PEP 3333), read by the access log.
WSGI_KEYS = {"REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "REMOTE_ADDR", "SERVER_PROTOCOL"}


class Recorder(dict[str, str]):
    """An empty environment that notes every variable it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return default

    def __contains__(self, key: object) -> bool:
        self.asked.add(str(key))
        return False


def variables_read() -> set[str]:
    """Every variable the settings, the pre-flight and the Procfile read, and every vendor
    variable the code asks a vendor's settings for by name."""
    env = Recorder()
    with pytest.raises(ConfigError):  # an empty environment lacks every vendor's variables
        from_env(env)
    for check in preflight.CHECKS:
        check(env)
    source = "\n".join(path.read_text() for path in APP_SOURCES)
    by_name = set(re.findall(r"\.(?:get|require)\(\s*\"([A-Z][A-Z0-9_]{2,})\"", source))
    by_name -= WSGI_KEYS  # a request's keys (web/serverlog.py), not configuration
    procfile = re.findall(r"\$\{(\w+)", (ROOT / "Procfile").read_text())
    return env.asked | by_name | set(procfile)


VARIABLE_LINE = re.compile(r"^(?:# )?([A-Z][A-Z0-9_]+)=")


def env_example() -> dict[str, str]:
    """Each variable of .env.example (set or commented out) and the comment line nearest
    above it, past the variables listed with it ("" when a blank line comes first)."""
    found: dict[str, str] = {}
    lines = (ROOT / ".env.example").read_text().splitlines()
    for n, line in enumerate(lines):
        if match := VARIABLE_LINE.match(line):
            assert match.group(1) not in found, f"{match.group(1)} twice"
            above = (x for x in reversed(lines[:n]) if not VARIABLE_LINE.match(x))
            found[match.group(1)] = next(above, "")
    return found


def test_env_example_lists_every_variable_with_a_comment() -> None:
    listed = env_example()
    read = variables_read()
    assert len(read) > 60  # the recorder saw the settings
    assert sorted(read - listed.keys()) == [], "missing from .env.example"
    assert sorted(listed.keys() - read) == [], "in .env.example but read by nothing"
    uncommented = [name for name, above in listed.items() if not above.startswith("# ")]
    assert uncommented == []


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def procfile_processes() -> set[str]:
    return {line.split(":", 1)[0] for line in (ROOT / "Procfile").read_text().splitlines()}


def test_compose_runs_every_process_from_one_image_on_a_safe_redis() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", *PROCESSES}
    assert set(PROCESSES) == procfile_processes()
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command
    assert "--maxmemory-policy noeviction" in redis_command
    assert services["redis"]["volumes"]
    images = {services[p]["image"] for p in PROCESSES}
    assert len(images) == 1
    for process in PROCESSES:
        service = services[process]
        assert service["command"][-1] == process and service["command"][:2] == ["honcho", "start"]
        assert service["build"] == "." and service["depends_on"]["redis"]
        assert service["environment"]["REDIS_URL"].endswith("redis://redis:6379/0}")


def test_dockerfile_is_slim_non_root_and_installs_the_lock() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    python = (ROOT / ".python-version").read_text().strip()
    assert re.search(rf"^FROM python:{re.escape(python)}-slim$", dockerfile, re.M)
    assert re.search(
        r"pip install --require-hashes --no-deps -r requirements.txt -r requirements-build.txt",
        dockerfile,
    )
    # the project is built with those pinned packages: nothing fetched without a hash
    assert "pip install --no-deps --no-build-isolation --no-index ." in dockerfile
    users = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    (cmd,) = re.findall(r"^CMD (.+)$", dockerfile, re.M)
    assert yaml.safe_load(cmd)[-1] in procfile_processes()
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in ignored and ".venv" in ignored


def test_render_blueprint_runs_every_process_on_a_keyvalue_that_never_evicts() -> None:
    blueprint = yaml.safe_load((ROOT / "render.yaml").read_text())
    services = blueprint["services"]
    started = {s["startCommand"].split()[-1] for s in services if "startCommand" in s}
    assert started == procfile_processes()
    for service in services:
        if "startCommand" in service:
            assert "--require-hashes" in service["buildCommand"]
            assert "--no-build-isolation --no-index ." in service["buildCommand"]
    (redis,) = [s for s in services if s["type"] == "keyvalue"]
    assert redis["maxmemoryPolicy"] == "noeviction"
    listed = env_example()
    for item in blueprint["envVarGroups"][0]["envVars"]:
        assert item["key"] in listed or item["key"] == "PYTHON_VERSION"


def compose_client() -> list[str] | None:
    """The Compose command line on this machine: the docker plugin, else docker-compose."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_file_validates_with_the_compose_client(tmp_path: Path) -> None:
    client = compose_client()
    if client is None:
        pytest.skip("no Docker Compose client on this machine (the YAML is checked above)")
    # Compose validates without an engine; it needs the .env the file names
    for name in ("docker-compose.yml", "Dockerfile"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    result = subprocess.run(
        [*client, "config", "--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
