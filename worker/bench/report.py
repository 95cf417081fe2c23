"""The benchmark's table, and the page it writes.

Each figure of issues 8 and 18 with its ceiling, ratio, target and verdict (the stress
phases' rows, the backlog's per-vendor table and the scaling table are in
``worker/bench/targets.py``), then where the CPU went and what Redis did per event (for
whoever tunes the pipeline).

Printed as Markdown, and written into ``docs/performance.md`` between two markers, so the
page's figures are the output of a run, never typed by hand; the prose around the markers is.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from worker.bench.targets import (
    Row,
    backlog_table,
    markdown,
    scaling_table,
    sim_ms_per_request,
    stress_rows,
)
from worker.bench.targets import n_text as _n

MB = 1024 * 1024


def _cpu(cpu: dict[str, float], *names: str) -> float:
    return sum(cpu.get(n, 0.0) for n in names)


def rows(r: dict[str, Any]) -> list[Row]:
    plan = r["plan"]
    vendor_ms = plan["latency_ms"]
    ceiling, ingest = r["ingest_ceiling"], r["ingest"]
    noop, thr = r["noop_ceiling"], r["throughput"]
    light, half = r["latency_light"], r["latency_half"]
    out = [
        Row(
            "ingest rate (signed 2 KB deliveries answered 202, "
            f"{plan['connections']} connections, {plan['seconds']:g} s)",
            f"{_n(ingest['rate'])}/s",
            f"{_n(ceiling['rate'])}/s bare Flask LPUSH",
            f"{ingest['rate'] / ceiling['rate']:.2f}×",
            "≥ 0.7×",
            ingest["rate"] >= 0.7 * ceiling["rate"],
        ),
        Row(
            "ingest latency p50 / p99",
            f"{_n(ingest['p50_ms'], 1)} / {_n(ingest['p99_ms'], 1)} ms",
            f"{_n(ceiling['p50_ms'], 1)} / {_n(ceiling['p99_ms'], 1)} ms bare",
            f"{ingest['p99_ms'] / ceiling['p99_ms']:.2f}× (p99)",
            "p99 ≤ 50 ms",
            ingest["p99_ms"] <= 50,
        ),
        Row(
            f"end-to-end throughput ({thr['completed']:,} events, each to 4 vendors)",
            f"{_n(thr['rate'], 1)} events/s (simulators took {_per_event(thr, 'simulators')} "
            f"ms CPU per event, {sim_ms_per_request(thr)} per request; the load generator "
            f"{_per_event(thr, 'load generator')} per event)",
            f"{_n(noop['rate'])} no-op tasks/s",
            f"{thr['rate'] / noop['rate']:.3f}×",
            "≥ 0.3×",
            thr["rate"] >= 0.3 * noop["rate"],
        ),
        Row(
            f"end-to-end latency p50 / p99 at {_n(plan['light_rate'])} events/s",
            f"{_n(light['p50_ms'])} / {_n(light['p99_ms'])} ms",
            f"vendor latency {vendor_ms:g} ms",
            f"{light['p50_ms'] / vendor_ms:.1f}× (p50)",
            "p50 ≤ 3×",
            light["p50_ms"] <= 3 * vendor_ms,
        ),
        Row(
            f"end-to-end latency p50 / p99 at 50 % ({_n(half['offered_rate'], 1)} events/s)",
            f"{_n(half['p50_ms'])} / {_n(half['p99_ms'])} ms",
            f"vendor latency {vendor_ms:g} ms",
            f"{half['p50_ms'] / vendor_ms:.1f}× (p50)",
            "p99 ≤ 1 s",
            half["p99_ms"] <= 1000,
        ),
    ]
    out += [_correctness_row(r), _cpu_row(r)]
    out += stress_rows(r)
    out += _memory_rows(r)
    out += [_redis_row(r)]
    return out


def _per_event(phase: dict[str, Any], name: str) -> str:
    """Milliseconds of CPU ``name`` took per event completed in ``phase``."""
    return f"{phase['cpu'].get(name, 0.0) / max(1, phase['completed']) * 1000:.1f}"


def _correctness_row(r: dict[str, Any]) -> Row:
    c, q = r["correctness"], r["backlog"]
    return Row(
        "correctness under load (counted in the simulators)",
        f"{c['lost']} lost, {c['duplicated']} duplicated of {c['events']:,} events × 4 "
        f"vendors; backlog phase {q['duplicated']} duplicated; "
        f"{r['dead_letters']} dead letters",
        "",
        "",
        "zero lost, zero duplicated",
        c["lost"] == 0 and c["duplicated"] == 0 and q["duplicated"] == 0,
    )


def _cpu_row(r: dict[str, Any]) -> Row:
    thr, cpu = r["throughput"], r["throughput"]["cpu"]
    per_k = 1000 / max(1, thr["completed"])
    ours = _cpu(cpu, "web", "worker", "redis") * per_k
    # The floor: a bare ingest plus a no-op task per event, measured in the same run.
    ceil = r["ingest_ceiling"]
    floor = (
        _cpu(ceil["cpu"], "web", "redis") / max(1, ceil["accepted"])
        + _cpu(r["noop_ceiling"]["cpu"], "worker", "redis") / r["noop_ceiling"]["tasks"]
    )
    return Row(
        "CPU per 1,000 events (web + worker + Redis)",
        f"{ours:.2f} s (web {cpu.get('web', 0) * per_k:.2f}, worker "
        f"{cpu.get('worker', 0) * per_k:.2f}, Redis {cpu.get('redis', 0) * per_k:.2f})",
        f"{floor * 1000:.2f} s bare LPUSH + no-op task",
        f"{ours / (floor * 1000):.1f}×",
        "≤ 5 s",
        ours <= 5,
    )


def _memory_rows(r: dict[str, Any]) -> list[Row]:
    first, end = r["throughput"]["rss"], r["rss_end"]
    growth = {p: (end[p] - first[p]) / first[p] for p in ("web", "worker")}
    quick = "" if end["events"] >= 100_000 else " (fewer than 100,000: --quick or --soak-events)"
    per_opp = r["throughput"]["bytes_per_opportunity"]
    families = r["throughput"]["key_families"]
    findings = [f for f, v in families.items() if v["finding"]]
    findings += [
        f"{k} (grew {v['before']} → {v['after']})" for k, v in r["redis_end"]["grown_keys"].items()
    ]
    return [
        Row(
            f"memory: RSS web / worker after {first['events']:,} → {end['events']:,} events{quick}",
            f"{first['web'] / MB:.0f} / {first['worker'] / MB:.0f} MB → "
            f"{end['web'] / MB:.0f} / {end['worker'] / MB:.0f} MB",
            "",
            f"+{growth['web'] * 100:.1f} % / +{growth['worker'] * 100:.1f} %",
            "growth ≤ 10 %",
            max(growth.values()) <= 0.10,
        ),
        Row(
            "Redis bytes per linked opportunity (5 vendors)",
            f"{per_opp.get('total', 0):,} B kept (state {per_opp.get('state', 0):,}, links "
            f"{per_opp.get('link map', 0):,}, provenance {per_opp.get('provenance', 0):,})",
            "",
            "",
            "≤ 1,024 B",
            0 < per_opp.get("total", 0) <= 1024,
        ),
        Row(
            "dedup / intent keys expire",
            "every per-event key expires"
            if not findings
            else "never expire: " + ", ".join(findings),
            "",
            "",
            "all expire",
            not findings,
        ),
    ]


def _redis_row(r: dict[str, Any]) -> Row:
    thr = r["throughput"]
    events = max(1, thr["completed"])
    calls = sum(v["calls"] for v in thr["commands"].values()) / events
    redis_cpu = thr["cpu"].get("redis", 0.0) / events
    shard = 1 / redis_cpu if redis_cpu else float("nan")
    return Row(
        "Redis commands per event (INFO commandstats)",
        f"{calls:.1f} → one Redis core carries ≈ {_n(shard)} events/s",
        f"Redis CPU {redis_cpu * 1e6:.0f} µs/event",
        "",
        "≤ 15",
        calls <= 15,
    )


def cpu_table(r: dict[str, Any]) -> str:
    phases = [
        ("ingest ceiling", "ingest_ceiling"),
        ("ingest", "ingest"),
        ("no-op ceiling", "noop_ceiling"),
        ("end-to-end", "throughput"),
        ("latency 20/s", "latency_light"),
        ("latency 50 %", "latency_half"),
        ("soak", "soak"),
        ("2 workers", "scale"),
        ("backlog (watched)", "backlog"),
    ]
    names = ["web", "worker", "redis", "simulators", "load generator", "bench", "other"]
    body = []
    for label, key in phases:
        if key not in r:
            continue
        cpu = r[key]["cpu"]
        busy = cpu["machine_busy"] / max(0.01, cpu["machine_capacity"]) * 100
        used = {**cpu, "worker": cpu.get("worker", 0) + cpu.get("worker1", 0)}  # both workers
        body.append([label] + [f"{used.get(n, 0):.1f}" for n in names] + [f"{busy:.0f} %"])
    return markdown(["CPU seconds", *names, "machine busy"], body)


def redis_table(r: dict[str, Any], top: int = 12) -> str:
    thr = r["throughput"]
    events = max(1, thr["completed"])
    ranked = sorted(thr["commands"].items(), key=lambda kv: -kv[1]["calls"])[:top]
    body = [[name, f"{v['calls'] / events:.2f}", f"{v['usec'] / events:.1f}"] for name, v in ranked]
    return markdown(["Redis command", "calls per event", "µs per event"], body)


def render(r: dict[str, Any]) -> str:
    m, plan = r["machine"], r["plan"]
    head = (
        f"oppsync bench{' --quick' if plan['quick'] else ''}: {m['cores']} cores "
        f"({m['cpu']}), vendor latency {plan['latency_ms']:g} ms, {r['wall_seconds']:.0f} s"
    )
    table = markdown(
        ["figure", "measured", "ceiling (same run)", "ratio", "target", "met"],
        [row.cells() for row in rows(r)],
    )
    tables = [head, table, backlog_table(r), cpu_table(r), redis_table(r)]
    return "\n\n".join([*tables, "Scaling out, from this run:", scaling_table(r)])


#: The part of the performance page a run rewrites; everything outside is written by hand.
BEGIN = "<!-- oppsync bench: begin (generated: the next run rewrites up to the end marker) -->"
END = "<!-- oppsync bench: end -->"
#: A page written where none was: a title, then the run.
TITLE = "# Performance\n\n"


def page_section(
    table: str, *, command: str, finished: datetime, machine: dict[str, Any], wall_seconds: float
) -> str:
    """The page's generated part: which command ran, when, on what, then its tables."""
    load = ", ".join(f"{x:.2f}" for x in machine.get("load_average") or ())
    facts = (
        f"Written by `{command}`, finished {finished:%Y-%m-%d %H:%M} UTC after "
        f"{wall_seconds / 60:.0f} min, on {machine['cores']} cores ({machine['cpu']}); "
        f"load average when it ended: {load or 'n/a'}."
    )
    return "\n\n".join([BEGIN, facts, table, END])


def write_page(path: Path, section: str) -> None:
    """Put ``section`` between the page's markers, keeping what is around them; a page
    without markers (or no page) gets the section at its end."""
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text.split(BEGIN, 1)[1]:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else TITLE) + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
