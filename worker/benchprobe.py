"""What the benchmark reads about the machine and Redis: CPU and memory per process tree
(from ``/proc``, no extra dependency), and Redis' commands, memory and key expiry.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from worker import state

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; everything after its ')' splits cleanly.
    return raw[raw.rfind(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (gunicorn's workers, a Redis fork)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(children.get(current, []))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the live process tree under ``pid``."""
    total = 0
    for member in descendants(pid):
        if fields := _stat(member):
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def rss_bytes(pid: int) -> int:
    """Resident memory of the process tree under ``pid``."""
    total = 0
    for member in descendants(pid):
        try:
            total += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * PAGE
        except OSError:
            pass
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / TICKS, sum(values[:8]) / TICKS


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {"cores": os.cpu_count(), "cpu": model, "load_average": os.getloadavg()}


@dataclass
class CpuMeter:
    """CPU taken by named process trees (and by this process, the simulators' host) over
    one phase, and by everything else on the machine (other jobs sharing it)."""

    pids: dict[str, int]
    start: dict[str, float] = field(default_factory=dict)
    machine_start: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        self.start = self._now()
        self.machine_start = machine_cpu()

    def _now(self) -> dict[str, float]:
        times = os.times()
        now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        now["simulators"] = times.user + times.system
        return now

    def stop(self, extra: dict[str, float] | None = None) -> dict[str, float]:
        """CPU seconds per name; ``extra`` adds processes measured elsewhere (the load
        generator), ``other`` is what the rest of the machine used meanwhile."""
        now = self._now()
        used = {name: round(now[name] - self.start[name], 2) for name in now}
        used.update(extra or {})
        busy, total = machine_cpu()
        used["machine_busy"] = round(busy - self.machine_start[0], 2)
        used["machine_capacity"] = round(total - self.machine_start[1], 2)
        used["other"] = round(
            max(
                0.0,
                used["machine_busy"]
                - sum(v for k, v in used.items() if not k.startswith("machine")),
            ),
            2,
        )
        return used


# -- Redis ---------------------------------------------------------------------------------


def command_stats(client: redis.Redis) -> dict[str, dict[str, float]]:
    """``INFO commandstats`` as {command: {"calls", "usec"}}."""
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    return {
        name.removeprefix("cmdstat_"): {"calls": int(v["calls"]), "usec": int(v["usec"])}
        for name, v in stats.items()
    }


_ID_LIKE = re.compile(r"[0-9a-f-]{16,}|.*\d.*", re.IGNORECASE)


def family(key: str) -> str:
    """A key's name with its ids replaced by ``*``: ``oppsync:link:siro:*``."""
    parts = re.split(r"([:/|])", key)
    return "".join(
        "*" if i % 2 == 0 and len(p) >= 6 and _ID_LIKE.fullmatch(p) else p
        for i, p in enumerate(parts)
    )


#: Families meant to live as long as their opportunity (the state, the link map, provenance);
#: everything else that grows with events must expire.
PERMANENT = (
    "oppsync:opp:*",
    "oppsync:link:*",
    "oppsync:writes:*",
    "oppsync:opps",
)


def key_families(client: redis.Redis, events: int) -> dict[str, dict[str, Any]]:
    """Per key family: how many keys, how many never expire, and for a single key its size.
    ``finding`` marks a family that grows with events without expiring and is not state."""
    counts: Counter[str] = Counter()
    no_ttl: Counter[str] = Counter()
    sizes: dict[str, int] = {}
    batch: list[str] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.ttl(key)
        for key, ttl in zip(batch, pipe.execute(), strict=True):
            fam = family(key)
            counts[fam] += 1
            if ttl == -1:
                no_ttl[fam] += 1
                if fam == key:  # a single key: how big it has grown
                    sizes[fam] = _size(client, key)
        batch.clear()

    for raw in client.scan_iter(count=2000):
        batch.append(raw.decode() if isinstance(raw, bytes) else str(raw))
        if len(batch) >= 2000:
            flush()
    flush()
    families = {}
    for fam, n in counts.most_common():
        permanent = any(re.fullmatch(p.replace("*", ".*"), fam) for p in PERMANENT)
        grows = no_ttl[fam] >= events / 2 or sizes.get(fam, 0) >= events / 2
        families[fam] = {
            "keys": n,
            "without_ttl": no_ttl[fam],
            **({"size": sizes[fam]} if fam in sizes else {}),
            "finding": bool(grows and not permanent),
        }
    return families


def _size(client: redis.Redis, key: str) -> int:
    kind = client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    measure = {
        "list": client.llen,
        "set": client.scard,
        "zset": client.zcard,
        "hash": client.hlen,
        "stream": client.xlen,
    }.get(kind)
    return int(measure(key)) if measure else 0  # type: ignore[operator]


def bytes_per_opportunity(client: redis.Redis, sample: int = 200) -> dict[str, float]:
    """Redis memory one linked opportunity keeps for good (``MEMORY USAGE`` of its hash,
    provenance list, link-map entries and index member), averaged over a sample."""
    keys = [
        k.decode() if isinstance(k, bytes) else str(k)
        for k in client.srandmember(state.OPPS_INDEX, sample) or []
    ]  # type: ignore[union-attr]
    if not keys:
        return {"opportunities_sampled": 0}
    parts: Counter[str] = Counter()
    for key in keys:
        fields: dict[Any, Any] = client.hgetall(state.opp_key(key))  # type: ignore[assignment]
        parts["state hash"] += client.memory_usage(state.opp_key(key)) or 0
        parts["provenance list"] += client.memory_usage(state.writes_key(key)) or 0
        for name, value in fields.items():
            name = name.decode() if isinstance(name, bytes) else name
            if name.startswith("id:"):
                value = value.decode() if isinstance(value, bytes) else value
                parts["link map"] += client.memory_usage(state.link_key(name[3:], value)) or 0
    index = (client.memory_usage(state.OPPS_INDEX) or 0) / max(1, client.scard(state.OPPS_INDEX))  # type: ignore[arg-type]
    result = {name: round(total / len(keys)) for name, total in parts.items()}
    result["index member"] = round(index)
    result["total"] = sum(result.values())
    result["opportunities_sampled"] = len(keys)
    return result
