"""The benchmark's rig: the stack it measures, the load generator, and what it meters.

``Rig`` starts a private Redis with an append-only file (docs/deploy.md's production advice),
the vendor simulators (one process each, ``worker/bench/sims.py``) and holds the service's
environment; the web and worker processes are started by each phase from the Procfile's own
command lines (``worker/sandbox/stack.py``). The load generator (``worker/bench/load.py``) runs
as a process of its own for each batch of events; the simulators count where they landed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from worker.bench import probe
from worker.bench.sims import start_remote_simulators
from worker.bench.tally import Tally
from worker.sandbox.embedded_redis import start_redis
from worker.sandbox.files import ROOT
from worker.sandbox.stack import VENDORS, Stack, stack_env

SOURCE = "salescaling"
TARGETS = tuple(v for v in VENDORS if v != SOURCE)
#: The stack's test timings (short retries, short visibility): the benchmark runs with the
#: service's own defaults instead.
TEST_TIMINGS = (
    "OPPSYNC_HTTP_TIMEOUT_SECONDS",
    "OPPSYNC_RETRY_BASE_SECONDS",
    "OPPSYNC_RETRY_MAX_SECONDS",
    "OPPSYNC_VISIBILITY_TIMEOUT_SECONDS",
)
#: Far above anything the benchmark offers: it measures oppsync, not the limits it enforces
#: (the backlog phase runs with every vendor's documented quota).
UNLIMITED = "1000000/second"
#: Where the no-op ceiling's tasks wait (``worker/bench/ceilings.py`` publishes there; not
#: imported, as it builds the Celery app from the service's environment).
NOOP_QUEUE = "ingest"


@dataclass(frozen=True)
class Plan:
    """How big each phase is."""

    quick: bool
    latency_ms: float = 50.0
    connections: int = 50
    seconds: float = 30.0  # ingest ceiling and ingest
    noop_tasks: int = 10_000
    events: int = 10_000  # end-to-end throughput
    light_rate: float = 20.0
    latency_seconds: float = 30.0  # each latency phase
    soak_events: int = 100_000  # total events when memory is read the second time
    quota_events: int = 2_000  # the backlog, at every vendor's documented quota
    quota_seconds: float = 120.0  # how long the backlog is watched (it lasts longer)
    scale_events: int = 5_000  # end to end with two worker processes, then compared
    fault_events: int = 2_000
    quiet_seconds: float = 15.0  # no vendor request this long: the stack is idle
    stall_seconds: float = 60.0  # no progress this long: what is missing is lost

    @classmethod
    def full(cls, latency_ms: float) -> Plan:
        return cls(quick=False, latency_ms=latency_ms)

    @classmethod
    def short(cls, latency_ms: float) -> Plan:
        return cls(
            quick=True,
            latency_ms=latency_ms,
            seconds=3.0,
            noop_tasks=1_000,
            events=200,
            latency_seconds=3.0,
            soak_events=0,
            quota_events=100,
            quota_seconds=15.0,
            scale_events=200,
            fault_events=100,
            quiet_seconds=8.0,
            stall_seconds=20.0,
        )


def say(message: str) -> None:
    """Progress, on stderr: stdout carries only the tables."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], share: float) -> float:
    """The value below which ``share`` of ``values`` lie (nearest rank); NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def stop(process: subprocess.Popen[bytes] | None) -> None:
    """Stop one of the service's processes as the platform would (SIGTERM), then for good."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Rig:
    """The running rig: stack, simulators, load generator, counts."""

    def __init__(self, plan: Plan, log_dir: Path) -> None:
        self.plan = plan
        self.log_dir = log_dir
        server = start_redis(directory=log_dir / "redis", appendonly=True)
        # The simulators first, while this process has no thread (they are forked).
        sims: dict[str, Any] = start_remote_simulators(latency=plan.latency_ms / 1000)
        full_env = stack_env(server.url, sims)
        #: The stack's short test timings, for the fault phase (retries within seconds).
        self.test_timings = {k: full_env[k] for k in TEST_TIMINGS if k in full_env}
        env = {k: v for k, v in full_env.items() if k not in TEST_TIMINGS}
        env.update(
            {
                "OPPSYNC_INGRESS_RATE_LIMIT": UNLIMITED,
                "OPPSYNC_INGRESS_VENDOR_RATE_LIMIT": UNLIMITED,
                **{f"{v.upper()}_RATE_LIMIT": UNLIMITED for v in VENDORS},
            }
        )
        self.stack = Stack(redis=server, sims=sims, env=env, log_dir=log_dir)
        self.client = redis.Redis.from_url(server.url)
        self.run_id = time.strftime("%H%M%S")
        self.next_event = 1
        self.e2e_events: list[int] = []
        self.tally: Tally | None = None
        self.results: dict[str, Any] = {}

    # -- plumbing ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{self.stack.web_url}/webhooks/{SOURCE}"

    def load(
        self,
        *,
        mode: str = "closed",
        count: int | None = None,
        duration: float | None = None,
        rate: float = 0.0,
    ) -> dict[str, Any]:
        """Run the load generator once; its report, with the events it answered."""
        job = {
            "url": self.url,
            "secret": self.stack.sims[SOURCE].webhook_secret,
            "run": self.run_id,
            "first": self.next_event,
            "count": count,
            "duration": duration,
            "connections": self.plan.connections,
            "mode": mode,
            "rate": rate,
        }
        done = subprocess.run(
            [sys.executable, "-m", "worker.bench.load"],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=self.stack.env,
            check=True,
        )
        report: dict[str, Any] = json.loads(done.stdout)
        numbers = [int(e[0]) for e in report["events"]]
        self.next_event = max([self.next_event - 1, *numbers]) + 1
        return report

    def pids(self, *names: str) -> dict[str, list[int]]:
        """Process ids to meter by name; the simulators are always metered."""
        known = {
            "redis": [self.stack.redis.process.pid],
            "simulators": [sim.pid for sim in self.stack.sims.values()],
        }
        if self.stack.web is not None:
            known["web"] = [self.stack.web.pid]
        for n, worker in enumerate(self.stack.workers):
            known["worker" if n == 0 else f"worker{n}"] = [worker.pid]
        return {name: known[name] for name in (*names, "simulators") if name in known}

    def stop_service(self) -> None:
        for worker in list(self.stack.workers):
            stop(worker)
        self.stack.workers.clear()
        stop(self.stack.web)
        self.stack.web = None

    def wait_complete(self, accepted: dict[int, float]) -> dict[int, float]:
        """Until every accepted event is in all four targets, or nothing moved for
        ``stall_seconds``; when each completed."""
        assert self.tally is not None
        done: dict[int, float] = {}
        last_progress = time.monotonic()
        while len(done) < len(accepted):
            time.sleep(0.5)
            now_done = self.tally.completed(accepted)
            if len(now_done) > len(done):
                last_progress = time.monotonic()
            done = now_done
            if time.monotonic() - last_progress > self.plan.stall_seconds:
                say(f"{len(accepted) - len(done)} events not complete after a stall")
                break
        return done

    # -- phases --------------------------------------------------------------------------
    def rss(self) -> dict[str, int]:
        """Resident memory of web and worker, and how many events they have handled."""
        pids = self.pids("web", "worker")
        rss = {name: probe.rss_bytes(pids[name][0]) for name in ("web", "worker") if name in pids}
        return rss | {"events": len(self.e2e_events)}

    def fresh(self, **configure: Any) -> None:
        """Between phases: the service stopped, Redis emptied, every simulator emptied and
        configured (``RemoteSimulator.configure``: quota, faults, requests kept)."""
        self.stop_service()
        self.client.flushall()
        for sim in self.stack.sims.values():
            sim.reset()
            sim.configure(**configure)

    def close(self) -> None:
        self.stop_service()
        self.stack.stop()
