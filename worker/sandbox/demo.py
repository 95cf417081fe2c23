"""``oppsync demo``: the whole stack on five simulated vendors, watched until they agree.

One sample deal from each vendor, and a live table of every deal in every vendor until they
all agree.

Runs what ``oppsync run`` runs (``worker/sandbox/localrun.py``: web, worker, beat, Flower under
honcho) on a private Redis (unless ``REDIS_URL`` is set) and the five vendor simulators of the
test suite. Once the service answers ``/readyz``, a person "creates" one deal in each vendor's
own records and the vendor announces it (its signed webhook, or its automation's Standard
Webhooks delivery), exactly as the integration tests drive them. The table reads every
vendor's records back through that vendor's schema. Then the stack stays up for poking at
(``/status``, Flower, ``oppsync show``) until Ctrl-C, which stops everything.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
from rich.console import Console
from rich.live import Live
from rich.markup import escape

from schemas.mapping import Mapping
from worker.sandbox.board import SAMPLES, Board, announce, person_creates
from worker.settings import load_mapping
from worker.store.state import Store
from worker.terminal import printable

CONVERGE_SECONDS = 120
READY_SECONDS = 120


class Finished(KeyboardInterrupt):
    """Stop the stack the way Ctrl-C does (``--exit-when-converged``)."""


def _child_exited() -> bool:
    """Whether a process this one started (honcho, Redis) has ended; it stays reapable."""
    try:
        return os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return False


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if _child_exited():
            raise RuntimeError("the stack stopped while starting")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the service did not become ready at {url} in {READY_SECONDS} s")


class ProcessLog:
    """The stack's output (honcho's four processes, Redis, the simulators) goes to a file
    while the table is drawn, so their lines cannot tear it; afterwards it is followed on
    the terminal as ``oppsync run`` would show it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved = (os.dup(1), os.dup(2))
        self.terminal = os.fdopen(os.dup(self._saved[0]), "w", buffering=1)
        self._stop = threading.Event()

    def __enter__(self) -> ProcessLog:
        sys.stdout.flush()
        sys.stderr.flush()
        target = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(target, 1)  # children inherit these: honcho and what it starts
        os.dup2(target, 2)
        os.close(target)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self._saved, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        self.terminal.close()

    def follow(self) -> None:
        """From now on, copy what the processes write to the terminal."""
        start = self.path.stat().st_size
        threading.Thread(target=self._copy, args=(start,), daemon=True).start()

    def _copy(self, offset: int) -> None:
        with self.path.open(errors="replace") as log:
            log.seek(offset)
            while not self._stop.is_set():
                line = log.readline()
                if line:
                    self.terminal.write(line)
                else:
                    time.sleep(0.2)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.path.read_text(errors="replace").splitlines()[-lines:])


def show_convergence(
    sims: dict[str, Any], mapping: Mapping, console: Console, *, started: float, store: Store
) -> bool:
    """Create and announce the sample deals, then redraw the table until all agree; each
    deal's key (from the link map) is shown for ``oppsync show``."""
    created: dict[str, str] = {}
    board = Board(sims, mapping, lambda source: store.key_for(source, created[source]))
    for vendor, deal in SAMPLES.items():
        created[vendor] = person_creates(sims[vendor], vendor, deal, mapping)
        answer = announce(sims[vendor], vendor, created[vendor])
        console.print(f"{vendor}: a person created “{deal.name}”; the webhook got {answer}")
    cells = board.cells()
    with Live(board.table(cells, 0.0), console=console, refresh_per_second=4) as live:
        while not board.converged(cells) and time.monotonic() - started < CONVERGE_SECONDS:
            time.sleep(0.5)
            cells = board.cells()
            live.update(board.table(cells, time.monotonic() - started))
    console.line()
    return board.converged(cells)


def _environment(
    redis_url: str, sims: dict[str, Any], workdir: Path, flower_port: int
) -> dict[str, str]:
    """The service's environment: every vendor pointed at its simulator, admin credentials
    (the user's, or made up now) for /status, /metrics and Flower."""
    from worker.sandbox.stack import stack_env

    user = os.environ.get("OPPSYNC_ADMIN_USER") or "admin"
    password = os.environ.get("OPPSYNC_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
    env = stack_env(redis_url, sims)
    env.update({
        "OPPSYNC_ADMIN_USER": user, "OPPSYNC_ADMIN_PASSWORD": password,
        "FLOWER_BASIC_AUTH": os.environ.get("FLOWER_BASIC_AUTH") or f"{user}:{password}",
        "FLOWER_PORT": str(flower_port), "FLOWER_DB": str(workdir / "flower.db"),
        "OPPSYNC_BEAT_SCHEDULE": str(workdir / "beat-schedule"),
    })  # fmt: skip
    return env


def demo(*, port: int, exit_when_converged: bool) -> int:
    """Run the demo; returns the process exit code (0: every vendor agreed)."""
    from worker.sandbox.localrun import port_conflict

    if conflict := port_conflict(port, os.environ):
        print(conflict, file=sys.stderr)
        return 2
    flower_port = int(os.environ.get("FLOWER_PORT", "5555"))
    workdir = Path(tempfile.mkdtemp(prefix="oppsync-demo-"))
    log = ProcessLog(workdir / "stack.log")
    # Piped into a file or CI log, a table 80 columns wide would wrap every cell.
    console = Console(file=log.terminal, width=None if log.terminal.isatty() else 170)
    console.print(f"Starting Redis, five simulated vendors, web, worker, beat and Flower "
                  f"(their output: {log.path}) …")  # fmt: skip
    with log:
        try:
            converged = _run(DemoRun(port, flower_port, workdir, console, log, exit_when_converged))
        except ConfigRefused as exc:
            console.print(str(exc))
            shutil.rmtree(workdir, ignore_errors=True)
            return 2
        except RuntimeError as exc:
            console.print(
                escape(printable(f"{log.tail()}\n\ndemo: {exc} (the whole log: {log.path})"))
            )
            _keep_only(workdir, log.path)
            return 1
    if not converged:
        console.print(f"The stack's output is kept in {log.path}.")
        _keep_only(workdir, log.path)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


class ConfigRefused(RuntimeError):
    """The pre-flight check refused what the demo took from the user's environment."""


def _keep_only(workdir: Path, log: Path) -> None:
    """After a failed demo, its temporary folder keeps only the log it points the user to."""
    for child in workdir.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        elif child != log:
            child.unlink()


@dataclass(frozen=True)
class DemoRun:
    """What one demo run was asked for, and where it writes."""

    port: int
    flower_port: int
    workdir: Path
    console: Console
    log: ProcessLog
    exit_when_converged: bool


def _run(run: DemoRun) -> bool:
    from worker.sandbox.embedded_redis import start_redis
    from worker.sandbox.stack import start_simulators

    with ExitStack() as started:  # whatever starts is stopped, however the demo ends
        redis_url = os.environ.get("REDIS_URL", "")
        if redis_url:
            run.console.print("Using REDIS_URL: the demo's links and events stay in that Redis.")
        else:
            redis_server = start_redis(directory=run.workdir / "redis")
            started.callback(redis_server.stop)
            redis_url = redis_server.url
        sims = start_simulators()
        for sim in sims.values():
            started.callback(sim.stop)
        return _run_on(run, redis_url, sims)


def _run_on(run: DemoRun, redis_url: str, sims: dict[str, Any]) -> bool:
    from worker.preflight import explain, problems
    from worker.sandbox.localrun import run_stack, source_line, write_sandbox_env

    for name, sim in sims.items():
        sim.webhook_url = f"http://127.0.0.1:{run.port}/webhooks/{name}"
        if hasattr(sim, "auto_emit"):
            sim.auto_emit = True  # Leadway and iVvy announce our own writes too, as in life
    env = _environment(redis_url, sims, run.workdir, run.flower_port)
    if found := problems(env):  # what the demo takes from the user's environment
        raise ConfigRefused(explain(found))
    env_file = write_sandbox_env(env)
    os.environ.clear()
    os.environ.update(env)  # run_stack starts the Procfile with this process's environment
    mapping = load_mapping(env["OPPSYNC_MAPPING"])
    outcome = {"converged": False}

    def after_start(_: dict[str, str]) -> None:
        web = f"http://127.0.0.1:{run.port}"
        _wait_ready(web)
        started = time.monotonic()
        store = Store(redis.Redis.from_url(redis_url, decode_responses=True))
        outcome["converged"] = show_convergence(
            sims, mapping, run.console, started=started, store=store
        )
        store.redis.close()
        took = time.monotonic() - started
        run.console.print(
            f"All five vendors agree on all five deals: converged in {took:.1f} s."
            if outcome["converged"]
            else f"Not converged after {CONVERGE_SECONDS} s: see {web}/status."
        )
        run.console.print(
            f"Status page {web}/status and Flower http://127.0.0.1:{run.flower_port} (user "
            f"{env['OPPSYNC_ADMIN_USER']}, password {env['OPPSYNC_ADMIN_PASSWORD']}); metrics "
            f"at {web}/metrics. The stack keeps running; Ctrl-C stops everything.\n"
        )
        run.console.print(escape(source_line(env_file)) + "\n")
        if run.exit_when_converged:
            raise Finished
        run.log.follow()

    try:
        run_stack(sandbox=False, port=run.port, after_start=after_start)
    finally:
        env_file.unlink(missing_ok=True)
    return outcome["converged"]
