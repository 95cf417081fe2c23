"""The whole oppsync stack on one machine, for integration tests, the demo and the benchmark.

Starts a private Redis, the five vendor simulators, and the service exactly as the Procfile
runs it: its own ``web:`` and ``worker:`` command lines, read from the Procfile, with no flag
added or dropped; only the environment differs (every vendor pointed at its simulator, the
port, the worker's name). The integration suite, the benchmark rig and the demo all start the
service this way. Nothing here is mocked.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from schemas.mapping import VENDORS as MAPPED_VENDORS
from worker import queues
from worker.sandbox.embedded_redis import EmbeddedRedis, free_port, start_redis
from worker.sandbox.files import MAPPING_EXAMPLE, PROCFILE, ROOT
from worker.sandbox.simulators import tls
from worker.sandbox.simulators.icloudready import IcloudreadySimulator
from worker.sandbox.simulators.ivvy import IvvySimulator
from worker.sandbox.simulators.leadway import LeadwaySimulator
from worker.sandbox.simulators.salescaling import SalescalingSimulator
from worker.sandbox.simulators.siro import SiroSimulator
from worker.vendors.registry import VARIABLE_PREFIXES

BIN = Path(sys.executable).parent
VENDORS = MAPPED_VENDORS  # the sandbox runs every vendor
QUEUES = ",".join(queues.QUEUES)
#: Basic auth of the stack's /status and /metrics.
ADMIN_USER, ADMIN_PASSWORD = "ops", "status-page-password"


def whsec(seed: str) -> str:
    return "whsec_" + base64.b64encode(seed.encode().ljust(24, b"-")).decode()


def procfile_args(process: str, env: Mapping[str, str], *, app: str | None = None) -> list[str]:
    """The Procfile's line for ``process`` (``web``, ``worker``, ...) as a shell runs it
    (``sh -c``; the pre-flight check first, then ``exec`` of the server): each
    ``${VAR:-default}`` expanded from ``env``, every program taken from this virtualenv,
    and ``app`` in place of the web's app (the benchmark's bare ceiling)."""
    for line in PROCFILE.read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() != process:
            continue
        expanded = re.sub(
            r"\$\{(\w+)(?::-([^}]*))?\}",
            lambda m: env.get(m.group(1)) or m.group(2) or "",
            command,
        )
        steps = [shlex.split(step) for step in expanded.split("&&")]
        steps = [step[1:] if step[0] == "exec" else step for step in steps]
        steps[-1] = [app if app and a == "web.app:create_app()" else a for a in steps[-1]]
        local = [[str(BIN / s[0]) if (BIN / s[0]).exists() else s[0], *s[1:]] for s in steps]
        script = " && ".join([*map(shlex.join, local[:-1]), "exec " + shlex.join(local[-1])])
        return ["/bin/sh", "-c", script]
    raise KeyError(f"no {process!r} process in the Procfile")


def start_simulators(
    latency: float = 0.0, leadway_quota: tuple[int, float] | None = None
) -> dict[str, Any]:
    sims: dict[str, Any] = {
        "siro": SiroSimulator(latency=latency),
        "leadway": LeadwaySimulator(latency=latency, rate_limit=leadway_quota),
        "ivvy": IvvySimulator(latency=latency),
        "salescaling": SalescalingSimulator(latency=latency),
        "icloudready": IcloudreadySimulator(latency=latency, rate_limit=None),
    }
    for name, sim in sims.items():
        sim.start()
        sim.webhook_secret = whsec(f"{name}-secret")
    return sims


def stack_env(redis_url: str, sims: dict[str, Any], **overrides: str) -> dict[str, str]:
    """The environment the service runs with: every vendor pointed at its simulator."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("OPPSYNC_", *VARIABLE_PREFIXES))
    }
    env.update(
        {
            "REDIS_URL": redis_url,
            "OPPSYNC_VENDORS": ",".join(VENDORS),
            "OPPSYNC_MAPPING": str(MAPPING_EXAMPLE),
            "OPPSYNC_HTTP_TIMEOUT_SECONDS": "3",
            "OPPSYNC_RETRY_BASE_SECONDS": "0.3",
            "OPPSYNC_RETRY_MAX_SECONDS": "3",
            # Twice the HTTP timeout: the faults' late commits (tests/integration/test_faults.py)
            # land inside it, or, on purpose, after it.
            "OPPSYNC_CREATE_SETTLE_SECONDS": "6",
            "OPPSYNC_VISIBILITY_TIMEOUT_SECONDS": "30",
            "OPPSYNC_RECONCILE_SECONDS": "0",
            "OPPSYNC_INGRESS_RATE_LIMIT": "10000/second",
            # Tests sign in wrongly on purpose, many times a minute from one address.
            "OPPSYNC_ADMIN_AUTH_RATE_LIMIT": "1000/minute",
            "OPPSYNC_ADMIN_USER": ADMIN_USER,
            "OPPSYNC_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "SIRO_BASE_URL": sims["siro"].url,
            "SIRO_API_TOKEN": "siro-test-token",
            "LEADWAY_BASE_URL": sims["leadway"].url,
            "LEADWAY_API_TOKEN": "leadway-test-token",
            "LEADWAY_LOCATION_ID": sims["leadway"].location_id,
            "LEADWAY_PIPELINE_ID": sims["leadway"].pipeline_id,
            "LEADWAY_WEBHOOK_PUBLIC_KEY": sims["leadway"].public_key_pem,
            "LEADWAY_WEBHOOK_RSA_PUBLIC_KEY": sims["leadway"].rsa_public_key_pem,
            "IVVY_BASE_URL": sims["ivvy"].url,
            "IVVY_API_KEY": "ivvy-test-key",
            "IVVY_API_SECRET": "ivvy-test-secret",
            "IVVY_VENUE_ID": "107",
            "IVVY_TYPE_ID": "18",
            "IVVY_SOURCE_ID": "25",
            "IVVY_SNS_TOPIC_ARN": sims["ivvy"].topic_arn,
            "IVVY_SNS_CERT_HOSTS": "127.0.0.1",
            "IVVY_SNS_CA_BUNDLE": tls.ca_bundle(),
            "SALESCALING_BASE_URL": sims["salescaling"].url,
            "SALESCALING_API_KEY": "salescaling-test-key",
            "ICLOUDREADY_BASE_URL": sims["icloudready"].url,
            "ICLOUDREADY_EMAIL": "ops@example.com",
            "ICLOUDREADY_PASSWORD": "icr-test-password",
            "PYTHONPATH": str(ROOT),
        }
    )
    for name, sim in sims.items():
        env[f"{name.upper()}_WEBHOOK_SECRET"] = sim.webhook_secret
        env[f"{name.upper()}_POLL_SECONDS"] = "0"
    env.update(overrides)
    return env


@dataclass
class Stack:
    """A running stack; ``web_url`` is where vendors deliver webhooks."""

    redis: EmbeddedRedis
    sims: dict[str, Any]
    env: dict[str, str]
    log_dir: Path
    web_port: int = 0
    web: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    owns_sims: bool = True

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start_procfile_web(self, app: str | None = None) -> subprocess.Popen[bytes]:
        """The Procfile's ``web`` line, as it stands, on ``web_port`` (set through ``PORT``,
        as a PaaS does); ``app`` swaps the WSGI app (the benchmark's bare ceiling) while every
        server setting stays the Procfile's."""
        self.web_port = self.web_port or free_port()
        env = {**self.env, "PORT": str(self.web_port)}
        args = _on_loopback(procfile_args("web", env, app=app))
        self.web = self._spawn("web", args, env)
        # The bare app has no /healthz: any answer says it serves; oppsync's must be healthy.
        up = _answers if app is None else _serves
        wait_for(lambda: up(f"{self.web_url}/healthz"), 30, "web did not start")
        for name, sim in self.sims.items():
            sim.webhook_url = f"{self.web_url}/webhooks/{name}"
        return self.web

    def start_procfile_worker(
        self, env: dict[str, str] | None = None, wait: bool = True
    ) -> subprocess.Popen[bytes]:
        """The Procfile's ``worker`` line, as it stands (``env`` replaces the stack's
        environment; ``OPPSYNC_WORKER_CONCURRENCY`` sets its threads). It is named apart from
        the others as separate hosts would be, through Celery's own environment variable
        for ``--hostname`` (click reads ``CELERY_WORKER_<OPTION>``), not an added flag;
        ``wait`` until this worker says it is ready (``/readyz`` is satisfied by any)."""
        n = len(self.workers)
        env = {**(env or self.env), "CELERY_WORKER_HOSTNAME": f"worker{n}@%h"}
        log = self.log_dir / f"worker{n}.log"
        offset = log.stat().st_size if log.exists() else 0
        process = self._spawn(f"worker{n}", procfile_args("worker", env), env)
        self.workers.append(process)

        def ready() -> bool:
            with open(log, "rb") as lines:
                lines.seek(offset)
                return b"ready." in lines.read()

        if wait:
            wait_for(ready, 60, f"worker{n} did not become ready")
        return process

    def restart_redis(self, down_for: float = 0.0) -> None:
        """Stop Redis, wait, and start it again on the same port and data directory."""
        self.redis.stop()
        time.sleep(down_for)
        appendonly = (self.redis.directory / "appendonly.aof").exists()
        self.redis = start_redis(port=self.redis.port, directory=self.redis.directory,
                                 appendonly=appendonly)  # fmt: skip

    def kill_worker(self, process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        process.send_signal(sig)
        process.wait(timeout=60)
        self.workers.remove(process)

    def stop(self) -> None:
        for process in [*self.workers, self.web]:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in [*self.workers, self.web]:
            if process is not None:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
        self.workers.clear()
        if self.owns_sims:
            for sim in self.sims.values():
                sim.stop()
        self.redis.stop()

    def _spawn(self, name: str, args: list[str], env: dict[str, str]
               ) -> subprocess.Popen[bytes]:  # fmt: skip
        """Start a process with its output appended to ``<log_dir>/<name>.log``."""
        with open(self.log_dir / f"{name}.log", "ab") as log:
            return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT)  # fmt: skip

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


def _on_loopback(args: list[str]) -> list[str]:
    """A server command line bound to loopback instead of every interface."""
    return [a.replace("0.0.0.0:", "127.0.0.1:", 1) for a in args]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _serves(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code < 500
    except httpx.HTTPError:
        return False


def wait_for(
    predicate: Callable[[], Any], timeout: float, message: str = "timed out", interval: float = 0.1
) -> Any:
    """Poll ``predicate`` until it returns something truthy; raise after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(message)
        time.sleep(interval)


def start_stack(
    log_dir: Path,
    *,
    latency: float = 0.0,
    worker: bool = True,
    appendonly: bool = False,
    leadway_quota: tuple[int, float] | None = None,
    **env_overrides: str,
) -> Stack:
    """Redis, simulators, web and (unless ``worker=False``) one worker; ``appendonly`` gives
    Redis an AOF so a restart keeps what was queued."""
    log_dir.mkdir(parents=True, exist_ok=True)
    redis_server = start_redis(directory=log_dir / "redis", appendonly=appendonly)
    sims = start_simulators(latency=latency, leadway_quota=leadway_quota)
    stack = Stack(
        redis=redis_server,
        sims=sims,
        env=stack_env(redis_server.url, sims, **env_overrides),
        log_dir=log_dir,
    )
    try:
        stack.start_procfile_web()
        if worker:
            stack.start_procfile_worker()
    except Exception:
        print(stack.logs()[-5000:], file=sys.stderr)
        stack.stop()
        raise
    return stack
