"""The benchmark's vendor simulators, each in a process of its own, counting its deals there.

In one process the five simulators would share one interpreter lock: at a few hundred
requests a second they, not oppsync, would set the pace (a request costs them over a
millisecond of Python). Each runs in its own process instead, so together they can use what
the machine has, and their CPU is measured apart from everything else.

Every benchmark deal is named ``Bench deal <n>``. The simulator's process reads its request
log, and when asked returns what changed since: the deal writes it acknowledged (the first
one is when the vendor holds the deal), the records it took out (those acknowledged a while
ago: a run of 100,000 events neither fills memory nor slows the simulators' linear look-ups,
and a record that appears again is still counted) and, for the quota check, every request's
time and status.

They are served with HTTP/1.1 keep-alive (waitress, ``Simulator.serve(keep_alive=True)``), on
64 threads, as many as the service's push threads (OPPSYNC_PUSH_THREADS): they set no pace.
"""

from __future__ import annotations

import multiprocessing
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from worker.sandbox.simulators.icloudready import IcloudreadySimulator
from worker.sandbox.simulators.ivvy import IvvySimulator
from worker.sandbox.simulators.leadway import LeadwaySimulator
from worker.sandbox.simulators.salescaling import SalescalingSimulator
from worker.sandbox.simulators.siro import SiroSimulator
from worker.sandbox.stack import VENDORS, whsec

SIMULATORS: dict[str, Any] = {
    "siro": SiroSimulator,
    "leadway": LeadwaySimulator,
    "ivvy": IvvySimulator,
    "salescaling": SalescalingSimulator,
    "icloudready": IcloudreadySimulator,
}
#: What the service's environment needs to know of each simulator (``stack_env``).
ATTRIBUTES = ("url", "location_id", "pipeline_id", "public_key_pem", "rsa_public_key_pem",
              "topic_arn", "webhook_secret")  # fmt: skip
MARK = re.compile(r"Bench deal (\d{8})")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH"})


def deal_number(data: Any) -> int | None:
    """The benchmark event a vendor record or request body is about, if any."""
    if not isinstance(data, dict):
        return None
    name = data.get("name")
    if name is None and isinstance(data.get("opportunityInformation"), dict):
        name = data["opportunityInformation"].get("name")  # iCloudReady
    found = MARK.fullmatch(name) if isinstance(name, str) else None
    return int(found.group(1)) if found else None


def is_deal_write(entry: Any) -> bool:
    """A write of the opportunity itself, acknowledged (not a contact, a sign-in or a list)."""
    if entry.method not in WRITE_METHODS or entry.status >= 300:
        return False
    if "contacts" in entry.path or "signin" in entry.path:
        return False
    return "action=" not in entry.query or "addOrUpdate" in entry.query


@dataclass
class Drained:
    """What one simulator saw since it was last asked."""

    acks: list[tuple[int, float]] = field(default_factory=list)  # deal, first write acked
    writes: list[int] = field(default_factory=list)  # one deal number per write acked
    records: list[int] = field(default_factory=list)  # one deal number per record taken out
    requests: list[tuple[float, int]] = field(default_factory=list)  # (time, status)


class DealCounter:
    """In the simulator's process: reads its log, takes out records of settled deals."""

    def __init__(self, sim: Any, keep_seconds: float, keep_requests: bool) -> None:
        self.sim = sim
        self.keep_seconds = keep_seconds
        self.keep_requests = keep_requests
        self.acked: dict[int, float] = {}
        self.taken: list[list[Any]] = []

    def drain(self, *, final: bool) -> Drained:
        out = Drained()
        # Swap the log for an empty one; a list taken is read one call later, when no
        # request thread can still be appending to it.
        taken, self.sim.log = self.sim.log, []
        ready, self.taken = self.taken, [taken]
        if final:
            time.sleep(0.2)
            ready, self.taken = [*ready, taken], []
        for entries in ready:
            self._read(entries, out)
        self._take_out(out, final=final)
        return out

    def _read(self, entries: list[Any], out: Drained) -> None:
        for entry in entries:
            if self.keep_requests:
                out.requests.append((entry.at, entry.status))
            number = deal_number(entry.body) if is_deal_write(entry) else None
            if number is None:
                continue
            out.writes.append(number)
            if number not in self.acked:
                self.acked[number] = entry.at
                out.acks.append((number, entry.at))

    def _take_out(self, out: Drained, *, final: bool) -> None:
        sim, now = self.sim, time.time()
        stores = [sim.records] + ([sim.contacts] if sim.name == "leadway" else [])
        with sim.state_lock:
            for store in stores:
                for record_id, record in list(store.items()):
                    number = deal_number(record)
                    acked = self.acked.get(number) if number is not None else None
                    if number is None or not (final or (acked and now - acked > self.keep_seconds)):
                        continue
                    del store[record_id]
                    if store is sim.records:
                        out.records.append(number)


def _serve(
    vendor: str,
    latency: float,
    rate_limit: tuple[int, float] | None,
    keep_seconds: float,
    keep_requests: bool,
    conn: Connection,
) -> None:
    # Kept-alive connections, as real vendors keep them: the service's pooled clients reuse
    # them, and no request costs a TCP connection and a thread (werkzeug's server closes
    # every connection). The server logs nothing per request.
    sim = SIMULATORS[vendor](latency=latency, rate_limit=rate_limit).serve(keep_alive=True)
    sim.webhook_secret = whsec(f"{vendor}-secret")
    counter = DealCounter(sim, keep_seconds, keep_requests)
    conn.send({name: getattr(sim, name) for name in ATTRIBUTES if hasattr(sim, name)})
    while (command := conn.recv()) != "stop":
        conn.send(counter.drain(final=command == "final"))
    sim.stop()
    conn.send("stopped")


class RemoteSimulator:
    """A vendor simulator in a child process: its attributes (``url``, keys, ids) as the
    service's environment needs them, and ``drain`` for what it counted."""

    def __init__(
        self,
        vendor: str,
        *,
        latency: float,
        rate_limit: tuple[int, float] | None = None,
        keep_seconds: float = 20.0,
        keep_requests: bool = False,
    ) -> None:
        # fork: quick, and safe while the benchmark has no thread yet (it starts them first).
        context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        self._conn, child = context.Pipe()
        self._lock = threading.Lock()
        self.vendor = vendor
        self.webhook_url: str | None = None  # set by the stack; benchmark simulators send none
        self.process = context.Process(  # type: ignore[attr-defined]
            target=_serve,
            args=(vendor, latency, rate_limit, keep_seconds, keep_requests, child),
            name=f"sim-{vendor}",
            daemon=True,
        )
        self.process.start()
        self.attributes: dict[str, Any] = self._conn.recv()

    def __getattr__(self, name: str) -> Any:
        attributes = self.__dict__.get("attributes", {})
        if name in attributes:
            return attributes[name]
        raise AttributeError(name)

    @property
    def pid(self) -> int:
        return int(self.process.pid or 0)

    def drain(self, *, final: bool = False) -> Drained:
        with self._lock:
            self._conn.send("final" if final else "drain")
            drained: Drained = self._conn.recv()
            return drained

    def stop(self) -> None:
        with self._lock:
            if self.process.is_alive():
                self._conn.send("stop")
                if self._conn.poll(10):
                    self._conn.recv()
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.terminate()


def start_remote_simulators(latency: float) -> dict[str, RemoteSimulator]:
    """The five simulators as ``start_simulators`` makes them (no quotas), one process each."""
    return {vendor: RemoteSimulator(vendor, latency=latency) for vendor in VENDORS}
