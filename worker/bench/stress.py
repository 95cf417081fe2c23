"""The benchmark's stress phases: faults, a backlog at the vendors' quotas, two workers.

* faults: every vendor answers 10 % of requests 500 and 3 % 429 with ``Retry-After`` (nothing
  committed either way), and loses the answer of 3 % of writes after committing them (the
  connection dropped), seeded; the stack runs with its test timings (retries within seconds)
  until no vendor has seen a request for ``quiet_seconds``; then every deal must be exactly
  one record in every target;
* backlog: every vendor enforcing its documented quota (``worker/vendors/*.py`` FACTS, the
  service's defaults), ``quota_events`` new deals at once, two worker processes; watched for
  ``quota_seconds`` from when the backlog is queued: quota use, 429s and every call beyond
  the writes per vendor and kind, and the stack's CPU while it waits (``waiting_cores``);
* scale: end to end again with a second worker process beside the throughput phase's
  one, compared with it.
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import asdict
from typing import Any

from worker.bench import probe
from worker.bench.lean import Faults
from worker.bench.rig import TARGETS, Rig, say
from worker.bench.tally import Tally
from worker.sandbox.stack import VENDORS
from worker.settings import DEFAULT_RATE_LIMITS

#: The fault phase's shares: 500s, 429s, and writes committed whose answer is lost.
FAULTS = Faults(seed=18, error=0.10, throttle=0.03, lost=0.03)
#: The processes whose CPU is the stack's own.
STACK = ("web", "worker", "worker1", "redis")


def stack_cpu(cpu: dict[str, float]) -> float:
    return sum(cpu.get(name, 0.0) for name in STACK)


class StressPhases(Rig):
    """The fault, backlog and scale phases (mixed into ``Bench``)."""

    def e2e_phase(
        self, *, count: int | None = None, rate: float = 0.0, seconds: float = 0.0
    ) -> dict[str, Any]:
        raise NotImplementedError  # ``Bench``'s

    def idle(self) -> float:
        """Until no simulator saw a request for ``quiet_seconds``; how long it took."""
        assert self.tally is not None
        began = time.monotonic()
        while self.tally.quiet_for() < self.plan.quiet_seconds:
            time.sleep(0.5)
        return time.monotonic() - began

    def fault_phase(self) -> dict[str, Any]:
        # Records stay until the final count: a write retried after a lost answer must find
        # what the vendor committed, as a real vendor keeps it (taken out after 20 s, a deal
        # whose retries outlasted that was counted twice).
        self.fresh(faults=FAULTS, keep_seconds=math.inf)
        env = {**self.stack.env, **self.test_timings}
        self.tally = Tally({v: self.stack.sims[v] for v in TARGETS})
        began = time.monotonic()
        try:
            self.stack.start_procfile_web()
            self.stack.start_procfile_worker(env=env, wait=False)  # the deliveries wait for it
            report = self.load(count=self.plan.fault_events)
            accepted = {int(e[0]): e[3] for e in report["events"] if e[1] in (200, 202)}
            done = self.wait_complete(accepted)
            settled = self.idle()
        finally:
            self.stop_service()
            self.tally.close()
        tally = self.tally
        correctness = tally.correctness(accepted)
        calls = {v: tally.calls_by_kind(v) for v in TARGETS}
        writes = sum(sum(calls[v].get("write", {}).values()) for v in TARGETS)
        return {
            "faults": asdict(FAULTS),
            "accepted": len(accepted),
            "completed": len(done),
            "seconds": time.monotonic() - began,
            "idle_after_seconds": settled,
            "injected": {v: dict(tally.faults[v]) for v in TARGETS},
            "calls": calls,
            # write requests beyond one per deal and vendor: the retries the vendors saw
            "write_retries": writes - len(accepted) * len(TARGETS),
            "lookups": sum(sum(calls[v].get("lookup", {}).values()) for v in TARGETS),
            "correctness": correctness,
        }

    def backlog_phase(self, per_write_cpu: float) -> dict[str, Any]:
        """``per_write_cpu``: the stack's CPU per vendor write when nothing waits (from the
        throughput phase), to tell waiting from writing."""
        plan = self.plan
        self.fresh(keep_requests=True)
        quotas = {v: DEFAULT_RATE_LIMITS[v] for v in VENDORS}
        for vendor, sim in self.stack.sims.items():
            sim.configure(quota=quotas[vendor], keep_requests=True)
        # The service at its defaults: each vendor's quota is the documented one.
        env = {k: v for k, v in self.stack.env.items() if not k.endswith("_RATE_LIMIT")
               or k.startswith("OPPSYNC_INGRESS")}  # fmt: skip
        self.tally = Tally({v: self.stack.sims[v] for v in TARGETS})
        began = time.monotonic()
        saved, self.stack.env = self.stack.env, env
        try:
            self.stack.start_procfile_web()
            for _ in range(2):
                self.stack.start_procfile_worker()
            report = self.load(count=plan.quota_events)
            backlog = [int(e[0]) for e in report["events"] if e[1] in (200, 202)]
            start = time.time()
            say(f"backlog of {len(backlog)} queued; watching it for {plan.quota_seconds:g} s")
            meter = probe.CpuMeter(self.pids(*STACK))
            time.sleep(plan.quota_seconds)
            cpu = meter.stop()
            end = time.time()
            self.tally.close()
        finally:
            for worker in self.stack.workers:
                worker.kill()  # busy waiting for quota; what they hold is not read again
            self.stop_service()
            self.stack.env = saved
        tally = self.tally
        vendors = {}
        written = 0
        for vendor in TARGETS:
            acks = [t for t in tally.acks[vendor].values() if start <= t <= end]
            written += len(acks)
            held = tally.acknowledged(vendor, backlog)
            use = quota_use(tally.requests[vendor], start, end, window_of(quotas[vendor]))
            vendors[vendor] = {
                "quota": quotas[vendor],
                **use,
                "rate_limited": sum(1 for _, s in tally.requests[vendor] if s == 429),
                "deals_written_in_window": len(acks),
                "deals_held": held,
                "backlog_left": len(backlog) - held,
                "calls": tally.calls_by_kind(vendor),
                "extra_calls": extra_calls(tally.calls_by_kind(vendor)),
            }
        seconds = end - start
        ours = stack_cpu(cpu)
        return {
            "backlog": len(backlog),
            "workers": 2,
            "seconds": seconds,
            "wall_seconds": time.monotonic() - began,
            "vendors": vendors,
            "cpu": cpu,
            "stack_cores": ours / seconds,
            "writes_in_window": written,
            "per_write_cpu_ms": per_write_cpu * 1000,
            # What the stack spent beyond the writes it made, as cores over the window.
            "waiting_cores": max(0.0, ours - written * per_write_cpu) / seconds,
            "duplicated": sum(n - 1 for v in TARGETS for n in tally.records[v].values() if n > 1),
        }

    def scale_phase(self) -> dict[str, Any]:
        """End to end again, a second worker process beside the throughput phase's one."""
        self.tally = Tally({v: self.stack.sims[v] for v in TARGETS})
        try:
            self.stack.start_procfile_worker()
            workers = len(self.stack.workers)
            first = len(self.e2e_events)
            result = self.e2e_phase(count=self.plan.scale_events)
        finally:
            self.stop_service()
            self.tally.close()
        result["workers"] = workers
        result["correctness"] = self.tally.correctness(self.e2e_events[first:])
        return result


def window_of(quota: str) -> tuple[int, float]:
    """The shortest window of a quota spec: ``100/10 seconds;200000/day`` -> (100, 10.0)."""
    from worker.bench.lean import quota_windows

    shortest = min(quota_windows(quota), key=lambda w: w.window)
    return shortest.limit, shortest.window


def extra_calls(calls: dict[str, dict[str, int]]) -> dict[str, int]:
    """Calls beyond the deal writes, by kind (every status counted: each spends quota)."""
    return {kind: sum(by.values()) for kind, by in calls.items() if kind != "write"}


def quota_use(
    requests: list[tuple[float, int]], start: float, end: float, quota: tuple[int, float]
) -> dict[str, Any]:
    """The share of the quota used: the vendor's sliding window, sampled every 50 ms from one
    window after ``start`` to ``end``, averaged (a client that always has a full window in
    flight scores 100 %)."""
    limit, window = quota
    accepted = sorted(t for t, status in requests if status != 429 and start <= t <= end)
    samples, peak = [], 0
    moment = start + window
    while moment <= end:
        held = bisect.bisect_right(accepted, moment) - bisect.bisect_right(
            accepted, moment - window
        )
        samples.append(held)
        peak = max(peak, held)
        moment += 0.05
    used = sum(samples) / len(samples) / limit if samples else float("nan")
    return {"used": used, "peak_window": peak, "requests": len(accepted)}
