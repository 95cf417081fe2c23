"""The benchmark's lean vendor server: one asyncio loop answering a vendor's API from memory.

The sandbox's simulators (``worker/sandbox/simulators/``) model each vendor closely and cost
about 1.5 ms of CPU per request (Flask, waitress' threads, their validation): at the
throughput the benchmark is meant to measure they alone would need a core. This server
answers the calls the adapters make (``worker/bench/leanvendors.py`` says which, vendor by
vendor) with aiohttp on one event loop, a fraction of a millisecond each, and still:

* refuses what the vendor refuses for auth (the same credentials as the stack's env), before
  anything else: a refused request counts against no quota;
* enforces the vendor's quota when given one (every window of it: ``100/10 seconds;200000/day``),
  answering 429 with ``Retry-After``;
* injects seeded faults when told to (``Faults``): 500s and 429s that commit nothing, and
  writes that commit but whose answer is never sent (the connection is dropped);
* counts every request by kind (``KINDS``) and status, keeps each request's time and status
  when asked (the quota phase), and, for every benchmark deal (``Bench deal <n>``), when a
  vendor first held it, how many writes committed it and how many records it has.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from limits import parse_many

from worker.sandbox.simulators.base import SlidingWindow

#: The kinds of call counted apart: a deal's own write; a read of one record by id; a look-up
#: (list, search); Leadway's contact; a sign-in for a token; a read of the vendor's
#: configuration (pipelines, stages), once per process.
KINDS = ("write", "read", "lookup", "contact", "token", "config")
#: The status logged for a write committed whose answer was never sent.
LOST = 0
JSON = "application/json"
#: Every benchmark deal is named so (``worker/bench/load.py``): the number is its event's.
MARK = re.compile(r"Bench deal (\d{8})")


def deal_number(data: Any) -> int | None:
    """The benchmark event a vendor record or write body is about, if any."""
    if not isinstance(data, dict):
        return None
    name = data.get("name")
    if name is None and isinstance(data.get("opportunityInformation"), dict):
        name = data["opportunityInformation"].get("name")  # iCloudReady
    found = MARK.fullmatch(name) if isinstance(name, str) else None
    return int(found.group(1)) if found else None


@dataclass(frozen=True)
class Faults:
    """Seeded faults: shares of requests answered 500 or 429 (nothing committed), and of
    writes committed whose answer is lost (the connection dropped)."""

    seed: int = 0
    error: float = 0.0
    throttle: float = 0.0
    lost: float = 0.0


class Refusal(Exception):
    """An answer other than success, raised by a vendor's handler."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    #: One of ``KINDS``, or what decides it from the request (iVvy's RPC: one path for all).
    kind: str | Callable[[web.Request, bytes], str]
    #: (request, raw body) -> the answer's JSON, or ``Written`` for a write; raises ``Refusal``.
    handle: Callable[[web.Request, bytes], Any]


@dataclass(frozen=True)
class Written:
    """A write's answer, and the benchmark deal it committed (None: not a benchmark deal)."""

    answer: Any
    deal: int | None
    status: int = 200


@dataclass
class Seen:
    """What the server counted since it was last asked."""

    acks: list[tuple[int, float]] = field(default_factory=list)  # deal, first committed
    writes: list[int] = field(default_factory=list)  # one deal number per write committed
    records: list[int] = field(default_factory=list)  # one deal number per record taken out
    requests: list[tuple[float, int]] = field(default_factory=list)  # (time, status)
    calls: Counter[tuple[str, int]] = field(default_factory=Counter)  # (kind, status)
    faults: Counter[str] = field(default_factory=Counter)  # "error", "throttle", "lost"


class LeanVendor:
    """One vendor's API in memory; subclasses list their ``routes`` and ``authorised``."""

    name = "vendor"

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}
        #: record id -> the benchmark deal it holds (records of other names are not counted)
        self.deals: dict[str, int] = {}

    def routes(self) -> list[Route]:
        raise NotImplementedError

    def authorised(self, request: web.Request, raw: bytes) -> Refusal | None:
        """The vendor's refusal of this request's credentials, or None."""
        raise NotImplementedError

    def attributes(self) -> dict[str, Any]:
        """What the service's environment needs besides the URL (ids, keys)."""
        return {}

    def forget(self, record_id: str) -> None:
        """Take a record out (the server keeps memory flat on long runs)."""
        self.records.pop(record_id, None)
        self.deals.pop(record_id, None)


def quota_windows(spec: str | None) -> list[SlidingWindow]:
    """``100/10 seconds;200000/day`` as one sliding window each."""
    if not spec:
        return []
    return [SlidingWindow(item.amount, float(item.get_expiry())) for item in parse_many(spec)]


class LeanServer:
    """Serves one ``LeanVendor`` on 127.0.0.1 with HTTP/1.1 keep-alive."""

    def __init__(self, vendor: LeanVendor, *, latency: float, keep_seconds: float = 20.0) -> None:
        self.vendor = vendor
        self.latency = latency
        self.keep_seconds = self.started_keep_seconds = keep_seconds
        self.keep_requests = False
        self.quota: list[SlidingWindow] = []
        self.faults = Faults()
        self.rng = random.Random(0)
        self.seen = Seen()
        self.acked: dict[int, float] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    def configure(
        self,
        *,
        quota: str | None = None,
        faults: Faults | None = None,
        keep_requests: bool = False,
        keep_seconds: float | None = None,
    ) -> None:
        """A phase's quota, faults, whether request times are kept, and how long a deal's
        records stay before they are counted and taken out (None: as the server started)."""
        self.quota = quota_windows(quota)
        self.faults = faults or Faults()
        self.rng = random.Random(f"{self.faults.seed}:{self.vendor.name}")
        self.keep_requests = keep_requests
        self.keep_seconds = self.started_keep_seconds if keep_seconds is None else keep_seconds

    async def start(self) -> None:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        for route in self.vendor.routes():
            app.router.add_route(route.method, route.path, self._handler(route))
        # No access log; idle connections kept longer than any client keeps them (httpx: 5 s).
        self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=120)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- serving ---------------------------------------------------------------------------
    def _handler(self, route: Route) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            raw = await request.read()
            if self.latency:
                await asyncio.sleep(self.latency)
            kind = route.kind if isinstance(route.kind, str) else route.kind(request, raw)
            status, _ = self._answer(route, kind, request, raw)
            self._count(kind, status.status if status else LOST)
            if status is None:  # committed, answer lost: drop the connection unanswered
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError
            return status

        return handle

    def _answer(
        self, route: Route, kind: str, request: web.Request, raw: bytes
    ) -> tuple[web.Response | None, Any]:
        refused = self.vendor.authorised(request, raw)
        if refused is None:
            refused = self._over_quota()
        if refused is None:
            refused = self._fault()
        if refused is not None:
            return _response(refused.status, refused.body, refused.headers), None
        lose = kind == "write" and self._chance(self.faults.lost)
        try:
            answer = route.handle(request, raw)
        except Refusal as exc:
            return _response(exc.status, exc.body, exc.headers), None
        status = 200
        if isinstance(answer, Written):
            self._committed(answer.deal)
            answer, status = answer.answer, answer.status
        if lose:
            self.seen.faults["lost"] += 1
            return None, answer
        return _response(status, answer), answer

    def _over_quota(self) -> Refusal | None:
        for window in self.quota:
            allowed, _, retry_in = window.allow()
            if not allowed:
                seconds = str(max(1, round(retry_in + 0.5)))
                return Refusal(429, {"message": "Too Many Requests"}, {"Retry-After": seconds})
        return None

    def _chance(self, share: float) -> bool:
        return share > 0 and self.rng.random() < share

    def _fault(self) -> Refusal | None:
        faults = self.faults
        if not (faults.error or faults.throttle):
            return None
        draw = self.rng.random()  # one draw: the shares are of every request
        if draw < faults.error:
            self.seen.faults["error"] += 1
            return Refusal(500, {"message": "Internal Server Error (injected)"})
        if draw < faults.error + faults.throttle:
            self.seen.faults["throttle"] += 1
            return Refusal(429, {"message": "Too Many Requests (injected)"}, {"Retry-After": "1"})
        return None

    def _count(self, kind: str, status: int) -> None:
        self.seen.calls[(kind, status)] += 1
        if self.keep_requests:
            self.seen.requests.append((time.time(), status))

    def _committed(self, number: int | None) -> None:
        if number is None:
            return
        self.seen.writes.append(number)
        if number not in self.acked:
            self.acked[number] = now = time.time()
            self.seen.acks.append((number, now))

    # -- counting --------------------------------------------------------------------------
    def drain(self, *, final: bool) -> Seen:
        """What was counted since the last call; records of deals first held more than
        ``keep_seconds`` ago (every one when ``final``) are taken out and counted."""
        seen, self.seen = self.seen, Seen()
        now, vendor = time.time(), self.vendor
        for record_id, number in list(vendor.deals.items()):
            first = self.acked.get(number)
            if final or (first is not None and now - first > self.keep_seconds):
                vendor.forget(record_id)
                seen.records.append(number)
        return seen

    def reset(self) -> None:
        """Forget every record and count (between phases)."""
        for record_id in list(self.vendor.records):
            self.vendor.forget(record_id)
        self.seen, self.acked = Seen(), {}


def _response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(body), content_type=JSON, headers=headers)
