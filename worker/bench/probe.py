"""What the benchmark reads about the machine and Redis.

CPU and memory per process tree (from ``/proc``, no extra dependency), and Redis' commands,
memory and key expiry."""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from worker.store.keys import CODE_VENDORS, KEPT_FOR_GOOD, OPPS_INDEX, opp_key, writes_key
from worker.store.links import link_bucket

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
    """CPU taken over one phase by named groups of process trees, by this process (the
    benchmark's own bookkeeping) and by everything else on the machine (other jobs)."""

    pids: dict[str, list[int]]
    start: dict[str, float] = field(default_factory=dict)
    machine_start: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        self.start = self._now()
        self.machine_start = machine_cpu()

    def _now(self) -> dict[str, float]:
        times = os.times()
        now = {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.pids.items()}
        now["bench"] = times.user + times.system
        return now

    def stop(self, extra: dict[str, float] | None = None) -> dict[str, float]:
        """CPU seconds per name; ``extra`` adds processes measured elsewhere (the load
        generator), ``other`` is what the rest of the machine used meanwhile."""
        now = self._now()
        used = {name: round(now[name] - self.start[name], 2) for name in now}
        used.update(extra or {})
        busy, total = machine_cpu()
        ours = sum(used.values())
        used["machine_busy"] = round(busy - self.machine_start[0], 2)
        used["machine_capacity"] = round(total - self.machine_start[1], 2)
        used["other"] = round(max(0.0, used["machine_busy"] - ours), 2)
        return used


# -- Redis ---------------------------------------------------------------------------------


def number(reply: Any) -> int:
    """A Redis integer reply (redis-py types every reply as possibly awaitable)."""
    return int(reply or 0)


def used_memory(client: redis.Redis) -> int:
    info: dict[str, Any] = client.info("memory")  # type: ignore[assignment]
    return int(info["used_memory"])


def command_stats(client: redis.Redis) -> dict[str, dict[str, float]]:
    """``INFO commandstats`` as {command: {"calls", "usec"}}."""
    stats: dict[str, Any] = client.info("commandstats")  # type: ignore[assignment]
    return {
        name.removeprefix("cmdstat_"): {"calls": int(v["calls"]), "usec": int(v["usec"])}
        for name, v in stats.items()
    }


#: A part of a key that is an id: it holds a digit, or is a long mixed-case token
#: (Leadway's ids are 20 letters).
_ID_LIKE = re.compile(r".*\d.*|(?=.*[A-Z])(?=.*[a-z])[A-Za-z_-]{12,}")


def family(key: str) -> str:
    """A key's name with its ids (any part holding a digit) replaced by ``*``:
    ``oppsync:link:siro:*``."""
    parts = re.split(r"([:/|])", key)
    return "".join("*" if i % 2 == 0 and _ID_LIKE.fullmatch(p) else p for i, p in enumerate(parts))


#: Families meant to live as long as their opportunity; everything else must expire.
PERMANENT = KEPT_FOR_GOOD


def key_families(client: redis.Redis, events: int) -> dict[str, dict[str, Any]]:
    """Per key family: how many keys, how many never expire, and for a key of its own (a
    family of one) its length. ``finding`` marks a family of keys without expiry that
    grows with events (one per two events or more) and is not an opportunity's state."""
    counts: Counter[str] = Counter()
    no_ttl: Counter[str] = Counter()
    batch: list[str] = []

    def flush() -> None:
        pipe = client.pipeline(transaction=False)
        for key in batch:
            pipe.ttl(key)
        for key, ttl in zip(batch, pipe.execute(), strict=True):
            counts[family(key)] += 1
            no_ttl[family(key)] += ttl == -1
        batch.clear()

    for raw in client.scan_iter(count=2000):
        batch.append(raw.decode() if isinstance(raw, bytes) else str(raw))
        if len(batch) >= 2000:
            flush()
    flush()
    families: dict[str, dict[str, Any]] = {}
    for fam, n in counts.most_common():
        entry: dict[str, Any] = {"keys": n, "without_ttl": no_ttl[fam]}
        if n == 1 and no_ttl[fam] and "*" not in fam:
            entry["size"] = _size(client, fam)
        entry["finding"] = no_ttl[fam] >= events / 2 and not permanent(fam)
        families[fam] = entry
    return families


def permanent(fam: str) -> bool:
    return any(re.fullmatch(p.replace("*", ".*"), fam) for p in PERMANENT)


def grown_keys(
    client: redis.Redis, families: dict[str, dict[str, Any]], events: int
) -> dict[str, dict[str, int]]:
    """Keys of their own without expiry (lists, sets, hashes) that grew by one per two
    events or more since ``families`` was read, ``events`` events ago."""
    grown = {}
    for fam, entry in families.items():
        if "size" in entry and not permanent(fam):
            now = _size(client, fam)
            if events and now - entry["size"] >= events / 2:
                grown[fam] = {"before": entry["size"], "after": now}
    return grown


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
    return number(measure(key)) if measure else 0


def _usage(client: redis.Redis, key: str) -> int:
    # SAMPLES 0: every field counted; the default (5 sampled) misjudges a hash whose values
    # range from a flag to a kilobyte of JSON.
    return number(client.memory_usage(key, samples=0))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def bytes_per_opportunity(client: redis.Redis, sample: int = 200) -> dict[str, float]:
    """Redis memory one linked opportunity keeps for good (``MEMORY USAGE`` of its hash,
    its history, its share of each link-map bucket and its index member), averaged over a
    sample. A bucket is shared by many ids: each is charged the bucket's size over its ids."""
    members: list[Any] = client.srandmember(OPPS_INDEX, sample) or []  # type: ignore[assignment]
    keys = [_text(k) for k in members]
    if not keys:
        return {"opportunities_sampled": 0}
    parts: dict[str, float] = {"state": 0.0, "provenance": 0.0, "link map": 0.0}
    for key in keys:
        parts["state"] += _usage(client, opp_key(key))
        parts["provenance"] += _usage(client, writes_key(key))
        fields: dict[Any, Any] = client.hgetall(opp_key(key))  # type: ignore[assignment]
        for name, value in fields.items():
            kind, _, code = _text(name).partition(":")
            if kind == "i" and code in CODE_VENDORS:
                bucket = link_bucket(CODE_VENDORS[code], _text(value))
                parts["link map"] += _usage(client, bucket) / max(1, number(client.hlen(bucket)))
    indexed = number(client.scard(OPPS_INDEX))
    result: dict[str, float] = {n: round(total / len(keys)) for n, total in parts.items()}
    result["index member"] = round(_usage(client, OPPS_INDEX) / max(1, indexed))
    result["total"] = sum(result.values())
    result["opportunities_sampled"] = len(keys)
    return result
