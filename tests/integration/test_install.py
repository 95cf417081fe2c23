"""Installing as a new user or a PaaS does: a fresh virtualenv with the pip that Python ships
(``python3 -m venv``: pip 23.2 for Python 3.11) resolves ``pip install .`` without
backtracking and without test tools, and installs the deploy lock exactly as written.

Marked ``install`` (``-m 'not install'`` leaves it out): it needs the package index.
"""

from __future__ import annotations

import ensurepip
import json
import shutil
import subprocess
import venv
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.unit.test_lock import TEST_TOOLS, lock_entries
from worker.sandbox.stack import ROOT

pytestmark = pytest.mark.install

#: What pip prints when it backtracks (pip 23.2 up to today's).
#: What a copy of the checkout to build from leaves out.
NOT_SOURCE = (".git", ".venv", ".oppsync", "build", "*.egg-info", "__pycache__", ".*_cache")
BACKTRACKING = ("looking at multiple versions", "taking longer than usual")


@pytest.fixture(scope="module")
def stock_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv's python, with the pip this Python bundles (not upgraded)."""
    where = tmp_path_factory.mktemp("stock-venv")
    venv.EnvBuilder(with_pip=True).create(where)
    python = where / "bin" / "python"
    said = subprocess.run(
        [python, "-m", "pip", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert said.startswith(f"pip {ensurepip.version()} "), said
    return python


def dry_run(python: Path, report: Path, *args: str) -> tuple[str, dict[str, str]]:
    """``pip install --dry-run`` of ``args``: pip's output and what it would install. Stops
    pip at its first backtracking message (it can go on for many minutes)."""
    said: list[str] = []
    with subprocess.Popen(
        [python, "-m", "pip", "install", "--dry-run", "--report", str(report), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as pip:
        assert pip.stdout is not None
        for line in pip.stdout:
            said.append(line)
            if any(words in line for words in BACKTRACKING):
                pip.kill()
                raise AssertionError(f"pip backtracks: {line.strip()}\n{''.join(said[-30:])}")
        returncode = pip.wait(timeout=240)
    assert returncode == 0, "".join(said[-60:])
    installs = json.loads(report.read_text())["install"]
    versions = {
        str(canonicalize_name(i["metadata"]["name"])): str(i["metadata"]["version"])
        for i in installs
    }
    return "".join(said), versions


def test_install_stock_pip_resolves_the_project_without_backtracking(
    stock_python: Path, tmp_path: Path
) -> None:
    # when a new user installs the project with the pip that came with their Python
    said, versions = dry_run(stock_python, tmp_path / "report.json", ".")
    # then pip found one answer at once, and it holds the service but no test tool
    for words in BACKTRACKING:
        assert words not in said, said[-3000:]
    assert {"oppsync", "celery", "kombu", "redis", "limits", "gunicorn"} <= versions.keys()
    assert not TEST_TOOLS & versions.keys()


def test_install_lock_installs_exactly_what_it_pins(stock_python: Path, tmp_path: Path) -> None:
    # when a deploy installs the lock (pip refuses, in hash mode, any package not pinned)
    said, versions = dry_run(
        stock_python, tmp_path / "report.json", "--require-hashes", "-r", "requirements.txt"
    )
    # then it installs every pinned version and nothing else, without backtracking
    for words in BACKTRACKING:
        assert words not in said, said[-3000:]
    pinned = {e.name: e.version for e in lock_entries() if e.applies()}
    assert versions == pinned


def test_install_builds_the_project_offline_from_the_hashed_build_lock(
    stock_python: Path, tmp_path: Path
) -> None:
    # given the build lock installed as the Dockerfile does (hash mode)
    pip = [str(stock_python), "-m", "pip", "install", "--no-deps"]
    subprocess.run([*pip, "--require-hashes", "-r", "requirements-build.txt"], cwd=ROOT, check=True)
    # when the project is built without isolation and without the package index (from a
    # copy: an in-tree build leaves build/ and *.egg-info behind)
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    built = subprocess.run(
        [*pip, "--no-build-isolation", "--no-index", "."],
        cwd=source,
        capture_output=True,
        text=True,
    )
    # then it builds and installs with nothing else fetched
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    shown = subprocess.run(
        [stock_python, "-m", "pip", "show", "oppsync"], capture_output=True, text=True
    )
    assert shown.returncode == 0 and "Name: oppsync" in shown.stdout
