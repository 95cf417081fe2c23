"""The product stands on its own: a wheel built from the repository, installed (not editable)
into a fresh virtualenv, runs ``oppsync demo`` from a directory that is not the checkout.

Marked ``install`` (``-m 'not install'`` leaves it out): it needs the package index (uv's
cache makes later runs quick).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from worker.sandbox.embedded_redis import free_port
from worker.sandbox.stack import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.install]

UV = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
#: What must not leak into the installed run: the checkout on the path, the dev venv.
LEAKS = ("PYTHONPATH", "VIRTUAL_ENV", "REDIS_URL")
VENDOR_PREFIXES = ("OPPSYNC_", "SIRO_", "LEADWAY_", "IVVY_", "SALESCALING_", "ICLOUDREADY_")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [UV, "build", "--wheel", "--out-dir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=180,
    )
    (built,) = out.glob("oppsync-*.whl")
    return built


def test_wheel_ships_the_product_only(wheel: Path) -> None:
    # given the wheel built from the repository
    names = zipfile.ZipFile(wheel).namelist()
    # then no test package is installed, and the sandbox brings what it runs
    assert not [n for n in names if n.startswith("tests/")]
    assert "worker/sandbox/Procfile" in names
    assert "worker/sandbox/mapping.example.toml" in names
    assert "worker/sandbox/simulators/ivvy.py" in names


def test_installed_wheel_runs_the_demo_from_another_directory(wheel: Path, tmp_path: Path) -> None:
    # given the wheel installed into a fresh virtualenv, and a directory that is not the repo
    venv = tmp_path / "venv"
    subprocess.run([UV, "venv", "--python", sys.executable, str(venv)], check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    install = subprocess.run(
        [UV, "pip", "install", "--python", str(venv / "bin" / "python"), str(wheel)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert install.returncode == 0, install.stderr[-4000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        k: v for k, v in os.environ.items() if k not in LEAKS and not k.startswith(VENDOR_PREFIXES)
    }
    env["FLOWER_PORT"] = str(free_port())
    # when a newcomer runs the demo there
    result = subprocess.run(
        [str(venv / "bin" / "oppsync"), "demo", "--exit-when-converged",
         "--port", str(free_port())],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    # then every vendor agrees on every sample deal, run from the installed code only
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "All five vendors agree on all five deals: converged in" in result.stdout
    assert str(ROOT) not in result.stdout + result.stderr
