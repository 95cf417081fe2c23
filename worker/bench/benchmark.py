"""``oppsync bench``: the real stack under load, each figure next to a ceiling from the same run.

The stack is started exactly as the Procfile runs it (gunicorn serving the web app, a Celery
worker on every queue) on a private Redis with an append-only file (docs/deploy.md's
production advice), against the five lean vendor simulators (``worker/bench/lean.py``)
answering after ``--latency-ms`` (default 50); ``worker/bench/rig.py`` holds that rig, the
load generator and the meters.
Phases, full size (``--quick`` scales them down):

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
7. scale: end to end again with two worker processes (``worker/bench/stress.py``);
8. faults: 2,000 events while every vendor answers 10 % 500, 3 % 429 and loses 3 % of
   writes' answers after committing them: lost and duplicated must stay 0;
9. backlog: 2,000 new deals at once, every vendor at its documented quota, two worker
   processes, watched for 120 s: quota use, 429s, extra calls, CPU while waiting.

Between phases Redis is emptied (FLUSHALL) with no oppsync process running, and from the
scale phase on the simulators are emptied too. The tables are
printed, written to the JSON and, for a full run, into ``docs/performance.md``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.bench import probe
from worker.bench.rig import NOOP_QUEUE, TARGETS, Plan, percentile, say, stop
from worker.bench.stress import StressPhases, stack_cpu
from worker.bench.tally import Tally
from worker.sandbox.files import ROOT
from worker.sandbox.stack import wait_for
from worker.store import keys, metrics


class Bench(StressPhases):
    """The phases, each a method returning its figures."""

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
        publisher = subprocess.Popen(
            [sys.executable, "-m", "worker.bench.ceilings", "publish", str(count)],
            cwd=ROOT,
            env=self.stack.env,
        )
        self.stack.start_procfile_web()  # meanwhile
        if publisher.wait() != 0:
            raise RuntimeError("publishing the no-op tasks failed")
        # The no-op task's module, through Celery's variable for ``--include``: no flag added.
        env = {**self.stack.env, "CELERY_WORKER_INCLUDE": "worker.bench.ceilings"}
        self.stack.start_procfile_worker(env=env, wait=False)
        # Timed between 90 % and 10 % of the queue left: the worker's start-up (imports,
        # connecting, the first prefetch) and the last stragglers are not its steady rate.
        high, low = 0.9 * count, 0.1 * count
        marks: dict[str, tuple[float, int]] = {}
        meter: probe.CpuMeter | None = None
        cpu: dict[str, float] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            waiting = probe.number(self.client.llen(NOOP_QUEUE))
            if "high" not in marks and waiting <= high:
                marks["high"] = (time.monotonic(), waiting)
                meter = probe.CpuMeter(self.pids("worker", "redis"))
            if "low" not in marks and waiting <= low and meter is not None:
                marks["low"] = (time.monotonic(), waiting)
                cpu = meter.stop()
            if waiting == 0 and not self.client.hlen(metrics.UNACKED):
                break
            time.sleep(0.005)
        else:
            raise RuntimeError("the worker did not drain the no-op tasks in 120 s")
        (t_high, n_high), (t_low, n_low) = marks["high"], marks["low"]
        wait_for(lambda: self.client.get(keys.HEARTBEAT), 30, "worker not ready")
        return {
            "rate": (n_high - n_low) / (t_low - t_high),
            "tasks": n_high - n_low,
            "queued": count,
            "seconds": t_low - t_high,
            "cpu": cpu,
        }

    def e2e_phase(
        self, *, count: int | None = None, rate: float = 0.0, seconds: float = 0.0
    ) -> dict[str, Any]:
        """Events (closed loop, or open at ``rate``) until each is in all four targets."""
        meter = probe.CpuMeter(self.pids("web", "worker", "worker1", "redis"))
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
        before = probe.used_memory(self.client)
        result = self.e2e_phase(count=self.plan.events)
        result["commands"] = probe.command_stats(self.client)
        result["rss"] = self.rss()
        result["redis_used_memory_delta"] = probe.used_memory(self.client) - before
        result["bytes_per_opportunity"] = probe.bytes_per_opportunity(self.client)
        say("reading every Redis key's expiry")
        result["key_families"] = probe.key_families(self.client, result["completed"])
        result["calls"] = {v: self.tally.calls_by_kind(v) for v in TARGETS} if self.tally else {}
        return result

    def phase(self, key: str, message: str, work: Any) -> Any:
        say(message)
        began = time.monotonic()
        self.results[key] = result = work()
        self.results.setdefault("phase_seconds", {})[key] = round(time.monotonic() - began, 1)
        return result

    def run(self) -> dict[str, Any]:
        plan, r = self.plan, self.results
        s = f"{plan.connections} connections for {plan.seconds:g} s"
        bare = "worker.bench.ceilings:lpush_app()"
        self.phase(
            "ingest_ceiling",
            f"ingest ceiling: bare LPUSH endpoint, {s}",
            lambda: self.ingest_phase(bare),
        )
        self.phase(
            "ingest",
            f"ingest: signed deliveries to oppsync's web, {s}",
            lambda: self.ingest_phase(None),
        )
        self.phase(
            "noop_ceiling",
            f"no-op ceiling: {plan.noop_tasks} tasks, Procfile worker",
            self.noop_phase,
        )
        self.tally = Tally({v: self.stack.sims[v] for v in TARGETS})
        thr = self.phase(
            "throughput",
            f"end-to-end: {plan.events} events, each to 4 vendors",
            self.throughput_phase,
        )
        at_first_sample = len(self.e2e_events)
        rate = thr["rate"]
        self.phase(
            "latency_light",
            f"latency at {plan.light_rate:g} events/s",
            lambda: self.e2e_phase(rate=plan.light_rate, seconds=plan.latency_seconds),
        )
        self.phase(
            "latency_half",
            f"latency at half the throughput ({rate / 2:.1f} events/s)",
            lambda: self.e2e_phase(rate=rate / 2, seconds=plan.latency_seconds),
        )
        remaining = plan.soak_events - len(self.e2e_events)
        if remaining > 0:
            soak = 0.9 * rate
            self.phase(
                "soak",
                f"soak: {remaining} more events at {soak:.0f}/s",
                lambda: self.e2e_phase(rate=soak, seconds=remaining / soak),
            )
        r["rss_end"] = self.rss()
        r["redis_end"] = {
            "used_memory": probe.used_memory(self.client),
            "opportunities": probe.number(self.client.scard(keys.OPPS_INDEX)),
            "bytes_per_opportunity": probe.bytes_per_opportunity(self.client),
            "grown_keys": probe.grown_keys(
                self.client, thr["key_families"], len(self.e2e_events) - at_first_sample
            ),
        }
        assert self.tally is not None
        self.tally.close()
        r["correctness"] = self.tally.correctness(self.e2e_events)
        r["dead_letters"] = probe.number(self.client.hlen(keys.DEADLETTER_ITEMS))
        self.phase(
            "scale",
            f"scale: {plan.scale_events} events end to end with two worker processes",
            self.scale_phase,
        )
        self.phase(
            "faults",
            f"faults: {plan.fault_events} events, vendors failing 10 % / 429 3 % / lost 3 %",
            self.fault_phase,
        )
        ingest = r["ingest"]
        per_delivery = stack_cpu(ingest["cpu"]) / max(1, ingest["accepted"])
        per_event = stack_cpu(thr["cpu"]) / max(1, thr["completed"])
        per_write = max(0.0, per_event - per_delivery) / len(TARGETS)
        self.phase(
            "backlog",
            f"backlog: {plan.quota_events} new deals, every vendor at its quota, two workers",
            lambda: self.backlog_phase(per_write),
        )
        return r


#: The page a full run rewrites (between its markers) unless told otherwise.
PERFORMANCE_PAGE = ROOT / "docs" / "performance.md"


def command_line(
    *, quick: bool, latency_ms: float, events: int | None, soak_events: int | None
) -> str:
    """The ``oppsync bench`` command that makes these figures, for the page's header."""
    words = ["oppsync", "bench"]
    if quick:
        words.append("--quick")
    if latency_ms != Plan(quick=quick).latency_ms:
        words.append(f"--latency-ms {latency_ms:g}")
    if events is not None:
        words.append(f"--events {events}")
    if soak_events is not None:
        words.append(f"--soak-events {soak_events}")
    return " ".join(words)


def run_benchmark(
    *,
    quick: bool,
    latency_ms: float,
    json_path: Path,
    events: int | None = None,
    soak_events: int | None = None,
    page_path: Path | None = None,
) -> dict[str, Any]:
    """Run every phase, print the table on stdout, write the JSON and the performance page
    (``page_path``; by default ``docs/performance.md`` for a full run, none for ``--quick``,
    whose short phases would replace the full figures); the results."""
    from worker.bench.report import page_section, render, write_page

    if page_path is None and not quick:
        page_path = PERFORMANCE_PAGE

    plan = Plan.short(latency_ms) if quick else Plan.full(latency_ms)
    if events is not None:
        plan = replace(plan, events=events)
    if soak_events is not None:
        plan = replace(plan, soak_events=soak_events)
    log_dir = Path(tempfile.mkdtemp(prefix="oppsync-bench-"))
    started = time.time()
    bench = Bench(plan, log_dir)
    try:
        results = bench.run()
    finally:
        bench.close()
        # Keep the processes' logs, not Redis' append-only file (hundreds of MB).
        shutil.rmtree(log_dir / "redis", ignore_errors=True)
    results["plan"] = asdict(plan)
    results["machine"] = probe.machine()
    results["wall_seconds"] = time.time() - started
    results["logs"] = str(log_dir)
    table = render(results)
    results["table"] = table
    print(table)
    json_path.write_text(json.dumps(results, indent=2, default=str))
    say(f"results in {json_path}; process logs in {log_dir}")
    if page_path is not None:
        command = command_line(
            quick=quick, latency_ms=latency_ms, events=events, soak_events=soak_events
        )
        section = page_section(
            table,
            command=command,
            finished=datetime.now(UTC),
            machine=results["machine"],
            wall_seconds=results["wall_seconds"],
        )
        write_page(page_path, section)
        say(f"tables written into {page_path}")
    return results
