"""The whole oppsync stack on one machine, for integration tests, the demo and the benchmark.

Starts a private Redis, the five vendor simulators, and the service exactly as the Procfile
runs it (gunicorn serving ``web.app:create_app()``, a Celery worker on every queue) with the
environment pointing every vendor at its simulator. Nothing here is mocked.
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

from tests.simulators.icloudready import IcloudreadySimulator
from tests.simulators.ivvy import IvvySimulator
from tests.simulators.leadway import LeadwaySimulator
from tests.simulators.salescaling import SalescalingSimulator
from tests.simulators.siro import SiroSimulator
from worker.embedded_redis import EmbeddedRedis, free_port, start_redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
VENDORS = ("siro", "leadway", "ivvy", "salescaling", "icloudready")
QUEUES = "ingest,push.siro,push.leadway,push.ivvy,push.salescaling,push.icloudready,poll"
#: Basic auth of the stack's /status and /metrics.
ADMIN_USER, ADMIN_PASSWORD = "ops", "status-page-password"


def whsec(seed: str) -> str:
    return "whsec_" + base64.b64encode(seed.encode().ljust(24, b"-")).decode()


def procfile_args(
    process: str, env: Mapping[str, str], *, extra: tuple[str, ...] = (), app: str | None = None
) -> list[str]:
    """The Procfile's line for ``process`` (``web``, ``worker``, ...) as a shell runs it
    (``sh -c``; the pre-flight check first, then ``exec`` of the server): each
    ``${VAR:-default}`` expanded from ``env``, every program taken from this virtualenv,
    ``extra`` appended to the server's arguments and ``app`` in place of the web's app."""
    for line in (ROOT / "Procfile").read_text().splitlines():
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
        server = [app if app and a == "web.app:create_app()" else a for a in steps[-1]]
        steps[-1] = [*server, *extra]
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
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("OPPSYNC_", "SIRO_", "LEADWAY_", "IVVY_", "SALESCALING_", "ICLOUDREADY_")
        )
    }
    env.update(
        {
            "REDIS_URL": redis_url,
            "OPPSYNC_VENDORS": ",".join(VENDORS),
            "OPPSYNC_MAPPING": str(ROOT / "mapping.example.toml"),
            "OPPSYNC_HTTP_TIMEOUT_SECONDS": "3",
            "OPPSYNC_RETRY_BASE_SECONDS": "0.3",
            "OPPSYNC_RETRY_MAX_SECONDS": "3",
            "OPPSYNC_VISIBILITY_TIMEOUT_SECONDS": "30",
            "OPPSYNC_RECONCILE_SECONDS": "0",
            "OPPSYNC_INGRESS_RATE_LIMIT": "10000/second",
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

    def start_web(self, workers: int = 2) -> None:
        self.web_port = self.web_port or free_port()
        self.web = self._spawn("web", [
            str(BIN / "gunicorn"), "web.app:create_app()", "--bind",
            f"127.0.0.1:{self.web_port}", "--workers", str(workers), "--threads", "4",
            "--log-level", "warning"], self.env)  # fmt: skip
        wait_for(lambda: _answers(f"{self.web_url}/healthz"), 30, "web did not start")
        for name, sim in self.sims.items():
            sim.webhook_url = f"{self.web_url}/webhooks/{name}"

    def start_worker(
        self, concurrency: int = 16, queues: str = QUEUES, extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        n = len(self.workers)
        process = self._spawn(f"worker{n}", [
            str(BIN / "celery"), "-A", "worker.celery_app", "worker", "--pool", "threads",
            "--concurrency", str(concurrency), "-Q", queues, "--without-mingle",
            "--without-gossip", "--loglevel", "INFO", "-n", f"worker{n}@%h"],
            {**self.env, **(extra_env or {})})  # fmt: skip
        self.workers.append(process)
        wait_for(lambda: _answers(f"{self.web_url}/readyz"), 60, "worker did not become ready")
        return process

    def start_procfile_web(self, app: str | None = None) -> subprocess.Popen[bytes]:
        """The Procfile's ``web`` line on ``web_port``; ``app`` swaps the WSGI app (the
        benchmark's bare ceiling) while every gunicorn setting stays the Procfile's."""
        self.web_port = self.web_port or free_port()
        args = procfile_args("web", {**self.env, "PORT": str(self.web_port)}, app=app)
        self.web = self._spawn("web", args, self.env)
        # Any answer will do: the bare app has no /healthz, its 404 says it serves.
        wait_for(lambda: _serves(f"{self.web_url}/healthz"), 30, "web did not start")
        for name, sim in self.sims.items():
            sim.webhook_url = f"{self.web_url}/webhooks/{name}"
        return self.web

    def start_procfile_worker(
        self,
        env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
        wait: bool = True,
    ) -> subprocess.Popen[bytes]:
        """The Procfile's ``worker`` line (``env`` replaces the stack's environment), named
        apart from the others as separate hosts would be; ``wait`` until this worker says
        it is ready (``/readyz`` is satisfied by any worker)."""
        n = len(self.workers)
        env = env or self.env
        log = self.log_dir / f"worker{n}.log"
        offset = log.stat().st_size if log.exists() else 0
        args = procfile_args("worker", env, extra=("-n", f"worker{n}@%h", *extra_args))
        process = self._spawn(f"worker{n}", args, env)
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
        stack.start_web()
        if worker:
            stack.start_worker()
    except Exception:
        print(stack.logs()[-5000:], file=sys.stderr)
        stack.stop()
        raise
    return stack
