"""The deploy lock (``requirements.txt``) pins every runtime package with its hashes, agrees
with ``pyproject.toml``'s ranges, and holds no test tool. ``python3 dev.py lock`` writes it;
``tests/integration/test_install.py`` installs it with the stock pip."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from worker.sandbox.stack import ROOT

LOCK = ROOT / "requirements.txt"
#: What builds the package (``[build-system] requires``), pinned the same way.
BUILD_LOCK = ROOT / "requirements-build.txt"
#: The lock is for the deploy target: Python 3.11 on Linux (.python-version, Dockerfile).
TARGET = {"python_version": "3.11", "python_full_version": "3.11.7", "sys_platform": "linux",
          "platform_system": "Linux", "os_name": "posix"}  # fmt: skip
#: Tools of the ``test`` extra that a runtime install must not pull in.
TEST_TOOLS = {"pytest", "pytest-timeout", "hypothesis", "schemathesis", "selenium", "ruff",
              "mypy", "uv"}  # fmt: skip


@dataclass(frozen=True)
class Entry:
    name: str
    version: str
    marker: str
    hashes: tuple[str, ...]

    def applies(self) -> bool:
        return not self.marker or Marker(self.marker).evaluate(TARGET)


def lock_entries(lock: Path = LOCK) -> list[Entry]:
    """Each ``name==version [; marker]`` of a lock with the hashes that follow it."""
    entries: list[Entry] = []
    text = lock.read_text()
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        first = block.splitlines()[0]
        if first.startswith("#"):
            continue
        pin = re.match(r"([A-Za-z0-9._-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$", first)
        assert pin, f"not a pin with hashes: {first!r}"
        entries.append(
            Entry(
                name=canonicalize_name(pin.group(1)),
                version=pin.group(2),
                marker=(pin.group(3) or "").strip(),
                hashes=tuple(re.findall(r"--hash=sha256:([0-9a-f]{64})", block)),
            )
        )
    return entries


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(line) for line in project["dependencies"]]


def test_lock_pins_every_package_with_a_hash() -> None:
    entries = lock_entries()
    assert entries
    assert [e.name for e in entries if not e.hashes] == []
    assert len({e.name for e in entries if e.applies()}) == len([e for e in entries if e.applies()])


def test_lock_agrees_with_pyproject_ranges() -> None:
    # given what pyproject.toml asks for at run time
    pinned = {e.name: e.version for e in lock_entries() if e.applies()}
    for requirement in runtime_requirements():
        if requirement.marker and not requirement.marker.evaluate(TARGET):
            continue
        # then the lock pins it, inside the declared range
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is not in requirements.txt: run python3 dev.py lock"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"requirements.txt pins {name}=={pinned[name]}, outside {requirement.specifier}: "
            "run python3 dev.py lock"
        )


def test_lock_holds_no_test_tool_and_names_its_command() -> None:
    assert not TEST_TOOLS & {e.name for e in lock_entries()}
    assert "python3 dev.py lock" in LOCK.read_text().split("\n", 3)[1]


def test_build_lock_pins_every_build_requirement_with_hashes() -> None:
    # given what pyproject.toml says builds the package
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    pinned = {e.name: e for e in lock_entries(BUILD_LOCK) if e.applies()}
    # then each is pinned to a version its range allows, with hashes
    for line in build:
        wanted = Requirement(line)
        entry = pinned[canonicalize_name(wanted.name)]
        assert wanted.specifier.contains(entry.version), (line, entry.version)
        assert entry.hashes, entry.name
