"""The benchmark's load generator: signed ~2 KB webhook deliveries over keep-alive HTTP/1.1.

Runs as its own process (``python -m worker.bench.load``, a JSON job on stdin, a JSON report
on stdout) so its CPU is measured apart from the simulators and the service, and so it never
shares an interpreter lock with them. The client is a few lines of asyncio over raw sockets
rather than httpx: at thousands of requests a second on two cores httpx would cost more CPU
than the server it measures, and the load generator must not be the bottleneck.

Each event is one Salescaling record as its API returns it (the customer's automation
posting it as a Standard Webhooks delivery): a unique deal name ``Bench deal <n>`` that the
benchmark finds again in every vendor, a short description, and unsynced notes padding the
body to about 2 KB. Two modes: ``closed`` (every connection sends as soon as its last
answer came back: the highest rate the server sustains) and ``open`` (events at a fixed
rate, whatever the answers: the load a vendor would offer).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

#: Size of one delivery's body, as vendors' full records are (custom fields and notes).
BODY_BYTES = 2048
DESCRIPTION = (
    "Quarterly restock of the regional warehouses with shelving, pallet racking and two "
    "forklifts; delivery in three drops, installation by the vendor's own crew, sign-off by "
    "the site manager after a walkthrough. Pricing held until the end of the quarter."
)
#: The name every benchmark deal carries; the number is the event's.
NAME_FORMAT = "Bench deal {:08d}"


def deal_name(number: int) -> str:
    return NAME_FORMAT.format(number)


def record(number: int, now: datetime | None = None) -> dict[str, Any]:
    """Event ``number`` as Salescaling's API returns the record, padded to ``BODY_BYTES``."""
    stamp = (now or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    data: dict[str, Any] = {
        "id": f"5ca1e5ca-0000-4000-8000-{number:012d}",
        "name": deal_name(number),
        "amount": 1000 + number % 90_000,
        "description": DESCRIPTION,
        "closeDate": "2027-03-15T00:00:00.000Z",
        "closeProbability": 40,
        "status": "open",
        "risk": "low",
        "priority": "high",
        "nextStep": "Send the revised quote",
        "featuredNotes": "",
        "createdAt": stamp,
        "updatedAt": stamp,
    }
    pad = BODY_BYTES - len(json.dumps(data, separators=(",", ":")))
    data["featuredNotes"] = ("Site notes: loading dock at the rear, access 7am-3pm. " * 40)[
        : max(0, pad)
    ]
    return data


class Signer:
    """Standard Webhooks signatures (HMAC-SHA256 of ``id.timestamp.body``), made here with
    hashlib: the same bytes the ``standardwebhooks`` library makes, at a fraction of the cost."""

    def __init__(self, secret: str) -> None:
        self.key = base64.b64decode(secret.removeprefix("whsec_"))

    def headers(self, msg_id: str, body: bytes) -> dict[str, str]:
        stamp = str(int(time.time()))
        mac = hmac.new(self.key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": stamp,
            "webhook-signature": "v1," + base64.b64encode(mac.digest()).decode(),
        }


@dataclass
class Job:
    """What to send: ``url``, ``connections``; ``closed`` mode for ``duration`` seconds or
    ``count`` events, ``open`` mode ``count`` events at ``rate`` a second. Events are numbered
    from ``first``; ``run`` makes delivery ids unique per benchmark run."""

    url: str
    secret: str
    run: str
    first: int = 0
    count: int | None = None
    duration: float | None = None
    connections: int = 50
    mode: str = "closed"
    rate: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        return cls(**data)


@dataclass
class Report:
    """Per event: [number, status, sent at, answered at] (epoch seconds)."""

    events: list[list[float]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0


class Client:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, request: bytes) -> int:
        """Send one request; the answer's status. Retries once on a connection the server
        closed while idle (the delivery id makes a repeat harmless: it is answered 200)."""
        for attempt in (1, 2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.reader is not None
            try:
                self.writer.write(request)
                return await self._answer(self.reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _answer(self, reader: asyncio.StreamReader) -> int:
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length, chunked, close = 0, False, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        if chunked:
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                await reader.readexactly(size + 2)
            await reader.readuntil(b"\r\n")
        elif length:
            await reader.readexactly(length)
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class LoadGenerator:
    def __init__(self, job: Job) -> None:
        self.job = job
        parts = urlsplit(job.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = parts.path
        self.signer = Signer(job.secret)
        self.report = Report()
        self.next = job.first

    def request(self, number: int) -> bytes:
        body = json.dumps(record(number), separators=(",", ":")).encode()
        headers = self.signer.headers(f"msg_{self.job.run}_{number}", body)
        head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            + "\r\n"
        )
        return head.encode() + body

    async def send(self, client: Client, number: int) -> None:
        sent = time.time()
        try:
            status = await client.post(self.request(number))
        except (OSError, asyncio.IncompleteReadError) as exc:
            name = type(exc).__name__
            self.report.errors[name] = self.report.errors.get(name, 0) + 1
            status = 0
        self.report.events.append([number, status, sent, time.time()])

    def _take(self, until: float) -> int | None:
        job = self.job
        if job.count is not None and self.next >= job.first + job.count:
            return None
        if time.monotonic() >= until:
            return None
        number, self.next = self.next, self.next + 1
        return number

    async def closed(self) -> None:
        until = time.monotonic() + (self.job.duration or float("inf"))

        async def connection() -> None:
            client = Client(self.host, self.port)
            while (number := self._take(until)) is not None:
                await self.send(client, number)
            client.close()

        await asyncio.gather(*(connection() for _ in range(self.job.connections)))

    async def open(self) -> None:
        job = self.job
        assert job.count is not None and job.rate > 0, "open mode needs count and rate"
        queue: asyncio.Queue[int | None] = asyncio.Queue()

        async def connection() -> None:
            client = Client(self.host, self.port)
            while (number := await queue.get()) is not None:
                await self.send(client, number)
            client.close()

        workers = [asyncio.create_task(connection()) for _ in range(job.connections)]
        start = time.monotonic()
        for i in range(job.count):
            delay = start + i / job.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait(job.first + i)
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.gather(*workers)

    def run(self) -> Report:
        began, cpu = time.monotonic(), os.times()
        asyncio.run(self.open() if self.job.mode == "open" else self.closed())
        end = os.times()
        self.report.cpu_seconds = (end.user - cpu.user) + (end.system - cpu.system)
        self.report.wall_seconds = time.monotonic() - began
        return self.report


def main() -> None:
    job = Job.from_dict(json.loads(sys.stdin.read()))
    report = LoadGenerator(job).run()
    json.dump(report.__dict__, sys.stdout)


if __name__ == "__main__":
    main()
