"""``oppsync bench``: the real stack under load, each figure next to a ceiling from the same run.

The stack is started exactly as the Procfile runs it (gunicorn serving the web app, a Celery
worker on every queue) on a private Redis with an append-only file (the README's production
advice), against the five vendor simulators answering after ``--latency-ms`` (default 50).
The load generator (``worker/benchload.py``) is a process of its own; the simulators run in
this one, so this process' CPU is theirs. Phases, full size (``--quick`` scales them down):

1. ingest ceiling: a bare Flask endpoint that only LPUSHes the body, under the Procfile's
   gunicorn settings, 50 connections for 30 s;
2. ingest: oppsync's web, signed ~2 KB Standard Webhooks deliveries of Salescaling records,
   50 connections for 30 s, no worker consuming (only the web is measured);
3. no-op ceiling: 10,000 no-op Celery tasks queued, then the Procfile's worker started: the
   rate it drains them;
4. end-to-end: 10,000 events, each fanned out to the four other vendors; an event counts
   when all four simulators acknowledged its write. CPU, Redis commands and memory here;
5. latency at 20 events/s and at half the measured throughput;
6. soak to 100,000 events: worker and web memory growth;
7. quota: a 2,000-event backlog against a Leadway simulator enforcing 100 requests per 10 s,
   with two worker processes.

Between phases Redis is emptied (FLUSHALL) with no oppsync process running.
"""

from __future__ import annotations

import bisect
import json
import logging
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from tests.simulators.leadway import LeadwaySimulator
from tests.stack import ROOT, VENDORS, Stack, stack_env, start_simulators, wait_for
from worker import benchprobe as probe
from worker.benchtally import Tally
from worker.embedded_redis import start_redis

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
#: (the quota phase runs with Leadway's real quota).
UNLIMITED = "1000000/second"
#: HighLevel's documented quota, enforced by the quota phase's simulator.
LEADWAY_QUOTA = (100, 10.0)


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
    quota_events: int = 2_000
    quota_seconds: float = 60.0
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
            noop_tasks=2_000,
            events=300,
            latency_seconds=3.0,
            soak_events=0,
            quota_events=200,
            quota_seconds=20.0,
            stall_seconds=20.0,
        )


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Bench:
    def __init__(self, plan: Plan, log_dir: Path) -> None:
        self.plan = plan
        self.log_dir = log_dir
        server = start_redis(directory=log_dir / "redis", appendonly=True)
        sims = start_simulators(latency=plan.latency_ms / 1000)
        env = {k: v for k, v in stack_env(server.url, sims).items() if k not in TEST_TIMINGS}
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
            [sys.executable, "-m", "worker.benchload"],
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

    def pids(self, *names: str) -> dict[str, int]:
        known = {"redis": self.stack.redis.process.pid}
        if self.stack.web is not None:
            known["web"] = self.stack.web.pid
        for n, worker in enumerate(self.stack.workers):
            known["worker" if n == 0 else f"worker{n}"] = worker.pid
        return {name: known[name] for name in names if name in known}

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
    def ingest_phase(self, app: str | None) -> dict[str, Any]:
        """Deliveries at ``connections`` for ``seconds``; ``app`` replaces oppsync's web."""
        self.client.flushall()
        self.stack.start_procfile_web(app=app)
        meter = probe.CpuMeter(self.pids("web", "redis"))
        report = self.load(duration=self.plan.seconds)
        cpu = meter.stop({"load generator": report["cpu_seconds"]})
        stop(self.stack.web)
        self.stack.web = None
        answered = [e for e in report["events"] if e[1] == 202]
        latencies = [(e[3] - e[2]) * 1000 for e in answered]
        statuses: dict[str, int] = {}
        for e in report["events"]:
            statuses[str(int(e[1]))] = statuses.get(str(int(e[1])), 0) + 1
        return {
            "rate": len(answered) / report["wall_seconds"],
            "accepted": len(answered),
            "statuses": statuses,
            "errors": report["errors"],
            "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99),
            "seconds": report["wall_seconds"],
            "cpu": cpu,
        }

    def noop_phase(self) -> dict[str, Any]:
        """Queue no-op tasks, start web and the Procfile's worker, time the drain."""
        self.client.flushall()
        count = self.plan.noop_tasks
        subprocess.run(
            [sys.executable, "-m", "worker.benchceilings", "publish", str(count)],
            cwd=ROOT,
            env=self.stack.env,
            check=True,
        )
        self.stack.start_procfile_web()
        self.stack.start_procfile_worker(
            extra_args=("--include", "worker.benchceilings"), wait=False
        )
        meter = probe.CpuMeter(self.pids("worker", "redis"))
        began = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            waiting, held = int(self.client.llen("ingest")), int(self.client.hlen("unacked"))
            if began is None and waiting < count:
                began = time.monotonic()
            if waiting == 0 and held == 0:
                break
            time.sleep(0.005)
        else:
            raise RuntimeError("the worker did not drain the no-op tasks in 120 s")
        seconds = time.monotonic() - (began or time.monotonic())
        cpu = meter.stop()
        wait_for(lambda: self.client.get("oppsync:worker:heartbeat"), 30, "worker not ready")
        return {"rate": count / seconds, "tasks": count, "seconds": seconds, "cpu": cpu}

    def e2e_phase(
        self, *, count: int | None = None, rate: float = 0.0, seconds: float = 0.0
    ) -> dict[str, Any]:
        """Events (closed loop, or open at ``rate``) until each is in all four targets."""
        meter = probe.CpuMeter(self.pids("web", "worker", "redis"))
        if rate:
            report = self.load(mode="open", count=max(1, round(rate * seconds)), rate=rate)
        else:
            report = self.load(count=count)
        accepted = {int(e[0]): e[3] for e in report["events"] if e[1] in (200, 202)}
        self.e2e_events.extend(accepted)
        done = self.wait_complete(accepted)
        cpu = meter.stop({"load generator": report["cpu_seconds"]})
        latencies = [(done[n] - accepted[n]) * 1000 for n in done]
        span = (max(done.values()) - min(accepted.values())) if done else float("nan")
        return {
            "sent": len(report["events"]),
            "accepted": len(accepted),
            "completed": len(done),
            "seconds": span,
            "rate": len(done) / span,
            "offered_rate": rate or None,
            "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99),
            "cpu": cpu,
        }

    def throughput_phase(self) -> dict[str, Any]:
        self.client.config_resetstat()
        before = int(self.client.info("memory")["used_memory"])
        result = self.e2e_phase(count=self.plan.events)
        result["commands"] = probe.command_stats(self.client)
        result["rss"] = self.rss()
        result["redis_used_memory_delta"] = int(self.client.info("memory")["used_memory"]) - before
        result["bytes_per_opportunity"] = probe.bytes_per_opportunity(self.client)
        say("reading every Redis key's expiry")
        result["key_families"] = probe.key_families(self.client, result["completed"])
        return result

    def rss(self) -> dict[str, int]:
        pids = self.pids("web", "worker")
        return {name: probe.rss_bytes(pid) for name, pid in pids.items()} | {
            "events": len(self.e2e_events)
        }

    def quota_phase(self) -> dict[str, Any]:
        """Two workers drain a backlog against HighLevel's quota, enforced by the simulator."""
        plan = self.plan
        self.stop_service()
        self.client.flushall()
        quota_sim = LeadwaySimulator(latency=plan.latency_ms / 1000, rate_limit=LEADWAY_QUOTA)
        quota_sim.start()
        env = {k: v for k, v in self.stack.env.items() if k != "LEADWAY_RATE_LIMIT"}
        env["LEADWAY_BASE_URL"] = quota_sim.url  # Leadway's default quota: 100/10 seconds
        sims = {v: self.stack.sims[v] for v in TARGETS} | {"leadway": quota_sim}
        self.tally = Tally(sims, keep_requests=True)
        try:
            self.stack.start_procfile_web()
            seen = {n: len(self._log(f"worker{n}")) for n in range(2)}
            for _ in range(2):
                self.stack.start_procfile_worker(env=env, wait=False)
            for n, offset in seen.items():
                wait_for(
                    lambda n=n, offset=offset: "ready" in self._log(f"worker{n}")[offset:],
                    60,
                    "a worker did not become ready",
                )
            report = self.load(count=plan.quota_events)
            backlog = [int(e[0]) for e in report["events"] if e[1] in (200, 202)]
            wait_for(lambda: self.tally.requests["leadway"], 60, "Leadway got no request")  # type: ignore[union-attr]
            first = min(t for t, _ in self.tally.requests["leadway"])
            time.sleep(max(0.0, first + plan.quota_seconds - time.time()) + 1.5)
            others = {v: self.tally.acknowledged(v, backlog) for v in TARGETS if v != "leadway"}
        finally:
            self.stop_service()
            self.tally.close()
            quota_sim.stop()
        requests = self.tally.requests["leadway"]
        use = quota_use(requests, first, plan.quota_seconds, LEADWAY_QUOTA)
        leadway_records = self.tally.records["leadway"]
        return {
            "backlog": len(backlog),
            "quota": f"{LEADWAY_QUOTA[0]}/{LEADWAY_QUOTA[1]:g} s",
            "rate_limited": sum(1 for _, s in requests if s == 429),
            **use,
            "deals_written": len(leadway_records),
            "duplicated": sum(n - 1 for n in leadway_records.values() if n > 1),
            "others_written_in_window": others,
        }

    def _log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- the run -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        plan, r = self.plan, self.results
        s = f"{plan.connections} connections for {plan.seconds:g} s"
        say(f"ingest ceiling: bare LPUSH endpoint, {s}")
        r["ingest_ceiling"] = self.ingest_phase("worker.benchceilings:lpush_app()")
        say(f"ingest: signed deliveries to oppsync's web, {s}")
        r["ingest"] = self.ingest_phase(None)
        say(f"no-op ceiling: {plan.noop_tasks} no-op tasks through the Procfile's worker")
        r["noop_ceiling"] = self.noop_phase()
        self.tally = Tally({v: self.stack.sims[v] for v in TARGETS})
        say(f"end-to-end: {plan.events} events, each to {len(TARGETS)} vendors")
        r["throughput"] = self.throughput_phase()
        rate = r["throughput"]["rate"]
        say(f"latency at {plan.light_rate:g} events/s for {plan.latency_seconds:g} s")
        r["latency_light"] = self.e2e_phase(rate=plan.light_rate, seconds=plan.latency_seconds)
        say(f"latency at half the throughput ({rate / 2:.0f} events/s)")
        r["latency_half"] = self.e2e_phase(rate=rate / 2, seconds=plan.latency_seconds)
        remaining = plan.soak_events - len(self.e2e_events)
        if remaining > 0:
            say(f"soak: {remaining} more events at {0.9 * rate:.0f}/s, to {plan.soak_events}")
            r["soak"] = self.e2e_phase(rate=0.9 * rate, seconds=remaining / (0.9 * rate))
        r["rss_end"] = self.rss()
        r["redis_end"] = {
            "used_memory": int(self.client.info("memory")["used_memory"]),
            "opportunities": int(self.client.scard("oppsync:opps")),
            "bytes_per_opportunity": probe.bytes_per_opportunity(self.client),
        }
        assert self.tally is not None
        self.tally.close()
        r["correctness"] = self.tally.correctness(self.e2e_events)
        r["dead_letters"] = int(self.client.hlen("oppsync:deadletter") or 0)
        say(f"quota: {plan.quota_events}-event backlog, Leadway at 100 per 10 s, two workers")
        r["quota"] = self.quota_phase()
        return r

    def close(self) -> None:
        self.stop_service()
        self.stack.stop()


def quota_use(
    requests: list[tuple[float, int]], first: float, seconds: float, quota: tuple[int, float]
) -> dict[str, Any]:
    """The share of the quota used: the vendor's sliding window, sampled every 50 ms from
    one window after the first request to the end, averaged (a client that always has a
    full window in flight scores 100 %)."""
    limit, window = quota
    accepted = sorted(t for t, status in requests if status != 429 and t <= first + seconds)
    samples, peak = [], 0
    moment = first + window
    while moment <= first + seconds:
        held = bisect.bisect_right(accepted, moment) - bisect.bisect_right(
            accepted, moment - window
        )
        samples.append(held)
        peak = max(peak, held)
        moment += 0.05
    used = sum(samples) / len(samples) / limit if samples else float("nan")
    return {"used": used, "peak_window": peak, "requests": len(accepted), "seconds": seconds}


def run_benchmark(*, quick: bool, latency_ms: float, json_path: Path) -> dict[str, Any]:
    """Run every phase, print the table on stdout, write the JSON; the results."""
    from worker.benchreport import render

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the simulators' access log
    plan = Plan.short(latency_ms) if quick else Plan.full(latency_ms)
    log_dir = Path(tempfile.mkdtemp(prefix="oppsync-bench-"))
    started = time.time()
    bench = Bench(plan, log_dir)
    try:
        results = bench.run()
    finally:
        bench.close()
    results["plan"] = asdict(plan)
    results["machine"] = probe.machine()
    results["wall_seconds"] = time.time() - started
    results["logs"] = str(log_dir)
    table = render(results)
    results["table"] = table
    print(table)
    json_path.write_text(json.dumps(results, indent=2, default=str))
    say(f"results in {json_path}; process logs in {log_dir}")
    return results
