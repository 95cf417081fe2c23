"""Issue 18's rows of the benchmark's table, and the tables of the backlog and of scaling out.

A row is a figure, what was measured, its ceiling from the same run, the ratio, the target
and whether it is met (``None``: not judged, e.g. two workers on a machine without the
cores for them). ``worker/bench/report.py`` puts them with the other rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Cores two worker processes need besides web, Redis, the simulators and the load generator
#: before "two vs one" can say anything about the service.
SCALE_CORES = 4


@dataclass(frozen=True)
class Row:
    figure: str
    measured: str
    ceiling: str = ""
    ratio: str = ""
    target: str = ""
    met: bool | None = None

    def cells(self) -> list[str]:
        verdict = {True: "yes", False: "**no**", None: "—"}[self.met]
        return [self.figure, self.measured, self.ceiling, self.ratio, self.target, verdict]


def n_text(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def requests_in(calls: dict[str, dict[str, dict[str, int]]]) -> int:
    """Every request the simulators got: vendor -> kind -> status -> count."""
    return sum(n for kinds in calls.values() for by in kinds.values() for n in by.values())


def sim_ms_per_request(phase: dict[str, Any]) -> str:
    """The simulators' CPU per request they answered in ``phase``, in milliseconds."""
    count = requests_in(phase.get("calls") or {})
    if not count:
        return "n/a ms"
    return f"{phase['cpu'].get('simulators', 0.0) / count * 1000:.2f} ms"


def _extra(calls: dict[str, dict[str, dict[str, int]]], kinds: tuple[str, ...]) -> int:
    return sum(sum(by.get(kind, {}).values()) for by in calls.values() for kind in kinds)


def stress_rows(r: dict[str, Any]) -> list[Row]:
    return [_waiting_row(r), _extra_calls_row(r), _quota_row(r), _scale_row(r), _fault_row(r)]


def _waiting_row(r: dict[str, Any]) -> Row:
    b = r["backlog"]
    return Row(
        f"CPU while a backlog waits for vendors' quotas ({b['backlog']:,} deals, "
        f"{b['seconds']:.0f} s watched)",
        f"{b['waiting_cores']:.3f} core above the writes' own cost (stack "
        f"{b['stack_cores']:.3f} core; {b['writes_in_window']:,} writes × "
        f"{b['per_write_cpu_ms']:.1f} ms)",
        "",
        "",
        "≤ 0.05 core",
        b["waiting_cores"] <= 0.05,
    )


def _extra_calls_row(r: dict[str, Any]) -> Row:
    thr, b, f = r["throughput"], r["backlog"], r["faults"]
    backlog_calls = {v: d["calls"] for v, d in b["vendors"].items()}
    events = max(1, thr["completed"])
    reads = _extra(thr["calls"], ("read", "lookup")) + _extra(backlog_calls, ("read", "lookup"))
    contacts = _extra(thr["calls"], ("contact",)) / events
    required = _extra(thr["calls"], ("token", "config")) + _extra(
        backlog_calls, ("token", "config")
    )
    return Row(
        "vendor calls per synced event beyond its writes",
        f"end to end {_extra(thr['calls'], ('read',))} reads, "
        f"{_extra(thr['calls'], ('lookup',))} look-ups of {events:,} events; backlog "
        f"{_extra(backlog_calls, ('read', 'lookup'))} reads and look-ups; Leadway contacts "
        f"{contacts:.2f} per event; sign-ins and config reads {required}; with faults "
        f"{f['lookups']} look-ups after unanswered writes",
        "",
        "",
        "only Leadway's contact (no reads, no look-ups without faults)",
        reads == 0,
    )


def _quota_row(r: dict[str, Any]) -> Row:
    b = r["backlog"]
    busy = {v: d for v, d in b["vendors"].items() if d["backlog_left"] > 0}
    shown = ", ".join(
        f"{v} {n_text(d['used'] * 100, 1)} %" + (f" ({d['rate_limited']} × 429)" if
                                                  d["rate_limited"] else "")
        for v, d in busy.items()
    )  # fmt: skip
    done = [v for v in b["vendors"] if v not in busy]
    rate_limited = sum(d["rate_limited"] for d in b["vendors"].values())
    return Row(
        f"quota use (backlog of {b['backlog']:,}, every vendor at its documented quota, "
        f"{b['workers']} workers)",
        (shown or "no vendor's backlog outlasted the window")
        + (f"; {', '.join(done)} done within it" if done else "")
        + f"; {rate_limited} × 429 in all",
        "each vendor's quota",
        "",
        "≥ 95 % while a backlog waits, zero 429",
        rate_limited == 0 and all(d["used"] >= 0.95 for d in busy.values()),
    )


def _scale_row(r: dict[str, Any]) -> Row:
    one, two, cores = r["throughput"], r["scale"], r["machine"]["cores"]
    ratio = two["rate"] / one["rate"] if one["rate"] else float("nan")
    enough = (cores or 0) >= SCALE_CORES
    return Row(
        "two worker processes vs one (4-vendor fan-out)",
        f"{n_text(two['rate'], 1)} vs {n_text(one['rate'], 1)} events/s on {cores} cores"
        + ("" if enough else f" (judged from {SCALE_CORES} cores)"),
        f"{n_text(one['rate'], 1)} events/s, one worker",
        f"{ratio:.2f}×",
        "≥ 1.7×",
        ratio >= 1.7 if enough else None,
    )


def _fault_row(r: dict[str, Any]) -> Row:
    f = r["faults"]
    c, injected = f["correctness"], f["injected"]
    total = {k: sum(v.get(k, 0) for v in injected.values()) for k in ("error", "throttle", "lost")}
    return Row(
        f"lost / duplicated under faults ({f['accepted']:,} events; vendors answer "
        f"{f['faults']['error']:.0%} 500, {f['faults']['throttle']:.0%} 429, lose "
        f"{f['faults']['lost']:.0%} of writes' answers)",
        f"{c['lost']} / {c['duplicated']} ({total['error']} × 500, {total['throttle']} × 429, "
        f"{total['lost']} answers lost; {f['write_retries']} write retries, {f['lookups']} "
        f"look-ups)",
        "",
        "",
        "0 / 0",
        c["lost"] == 0 and c["duplicated"] == 0 and f["accepted"] > 0,
    )


def backlog_table(r: dict[str, Any]) -> str:
    """Per vendor: its quota, what of it was used, 429s, and every call beyond the writes."""
    b = r["backlog"]
    body = []
    for vendor, d in b["vendors"].items():
        extra = ", ".join(f"{kind} {n:,}" for kind, n in sorted(d["extra_calls"].items()))
        body.append([vendor, d["quota"], f"{n_text(d['used'] * 100, 1)} %",
                     str(d["rate_limited"]), f"{d['deals_written_in_window']:,}",
                     f"{d['backlog_left']:,}", extra or "none"])  # fmt: skip
    header = ["backlog: vendor", "quota", "used", "429s", "deals written in window",
              "deals left", "calls beyond writes"]  # fmt: skip
    return markdown(header, body)


def scaling_table(r: dict[str, Any]) -> str:
    """What one web process, one and two worker processes and one Redis carried."""
    ingest, thr, two = r["ingest"], r["throughput"], r["scale"]
    events = max(1, thr["completed"])
    web_ms = ingest["cpu"].get("web", 0.0) / max(1, ingest["accepted"]) * 1000
    worker_ms = thr["cpu"].get("worker", 0.0) / events * 1000
    redis_us = thr["cpu"].get("redis", 0.0) / events * 1e6
    commands = sum(v["calls"] for v in thr["commands"].values()) / events
    body = [
        ["web (the Procfile's gunicorn)", f"{n_text(ingest['rate'])} deliveries/s",
         f"{web_ms:.2f} ms per delivery", f"{n_text(1000 / web_ms if web_ms else None)}/s"],
        ["one worker process", f"{n_text(thr['rate'], 1)} events/s",
         f"{worker_ms:.2f} ms per event", f"{n_text(1000 / worker_ms if worker_ms else None)}/s"],
        ["two worker processes", f"{n_text(two['rate'], 1)} events/s", "", ""],
        ["Redis", f"{commands:.1f} commands per event", f"{redis_us:.0f} µs per event",
         f"{n_text(1e6 / redis_us if redis_us else None)}/s"],
    ]  # fmt: skip
    return markdown(["process", "carried", "CPU", "per core"], body)
