"""The benchmark's vendor simulators, each in a process of its own, counting its deals there.

Each is a lean server (``worker/bench/lean.py``: one asyncio loop answering the vendor's API
from memory, ``worker/bench/leanvendors.py``), not the sandbox's Flask simulators, which cost
over a millisecond of CPU per request and would set the pace. Each runs in its own process
so that its CPU is measured apart from everything else.

Every benchmark deal is named ``Bench deal <n>``. When asked, the simulator's process returns
what it counted since: when it first held each deal, the writes that committed one, the
records it took out (those first held a while ago: a run of 100,000 events does not fill
memory, and a record that appears again is still counted), every request by kind and status
and, when told to keep them, each request's time and status (for quota use). Between phases
it is reset and configured: the vendor's quota, seeded faults.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from worker.bench.lean import Faults, LeanServer, Seen
from worker.bench.leanvendors import LEAN_VENDORS
from worker.sandbox.stack import VENDORS, whsec

#: What the service's environment needs to know of each simulator (``stack_env``).
ATTRIBUTES = ("url", "location_id", "pipeline_id", "public_key_pem", "rsa_public_key_pem",
              "topic_arn", "webhook_secret")  # fmt: skip


async def _main(
    vendor: str,
    latency: float,
    rate_limit: str | None,
    keep_seconds: float,
    keep_requests: bool,
    conn: Connection,
) -> None:
    server = LeanServer(LEAN_VENDORS[vendor](), latency=latency, keep_seconds=keep_seconds)
    server.configure(quota=rate_limit, keep_requests=keep_requests)
    await server.start()
    attributes = {"url": server.url, "webhook_secret": whsec(f"{vendor}-secret")}
    conn.send(attributes | server.vendor.attributes())
    loop = asyncio.get_running_loop()
    # The pipe is read off the loop; each command then runs on it, between requests.
    while (command := await loop.run_in_executor(None, conn.recv)) != "stop":
        if command in ("drain", "final"):
            conn.send(server.drain(final=command == "final"))
        elif command == "reset":
            server.reset()
            conn.send("reset")
        else:  # ("configure", {...})
            server.configure(**command[1])
            conn.send("configured")
    await server.stop()
    conn.send("stopped")


def _serve(*args: Any) -> None:
    asyncio.run(_main(*args))


class RemoteSimulator:
    """A vendor simulator in a child process: its attributes (``url``, keys, ids) as the
    service's environment needs them, and ``drain`` for what it counted."""

    def __init__(
        self,
        vendor: str,
        *,
        latency: float,
        rate_limit: str | tuple[int, float] | None = None,
        keep_seconds: float = 20.0,
        keep_requests: bool = False,
    ) -> None:
        # fork: quick, and safe while the benchmark has no thread yet (it starts them first).
        context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        self._conn, child = context.Pipe()
        self._lock = threading.Lock()
        self.vendor = vendor
        self.webhook_url: str | None = None  # set by the stack; benchmark simulators send none
        if isinstance(rate_limit, tuple):
            rate_limit = f"{rate_limit[0]}/{rate_limit[1]:g} seconds"
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

    def drain(self, *, final: bool = False) -> Seen:
        with self._lock:
            self._conn.send("final" if final else "drain")
            drained: Seen = self._conn.recv()
            return drained

    def reset(self) -> None:
        """Forget every record and count."""
        with self._lock:
            self._conn.send("reset")
            self._conn.recv()

    def configure(
        self,
        *,
        quota: str | None = None,
        faults: Faults | None = None,
        keep_requests: bool = False,
        keep_seconds: float | None = None,
    ) -> None:
        """The vendor's quota (``100/10 seconds``; None: none), seeded faults, whether each
        request's time is kept, and how long records stay (``LeanServer.configure``)."""
        settings = {"quota": quota, "faults": faults, "keep_requests": keep_requests,
                    "keep_seconds": keep_seconds}  # fmt: skip
        with self._lock:
            self._conn.send(("configure", settings))
            self._conn.recv()

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
