"""How long the benchmark's lean simulators keep a deal's records: taken out a while after
they were committed (memory stays flat on long runs), or, in the fault phase, kept until the
final count, so that a write retried after a lost answer finds what the vendor committed."""

from __future__ import annotations

import math

from worker.bench.lean import LeanServer
from worker.bench.leanvendors import LEAN_VENDORS


def committed(keep_seconds: float, phase_keeps: float | None = None) -> LeanServer:
    """An iVvy lean server, configured for a phase, that committed one benchmark deal's
    record a moment ago."""
    server = LeanServer(LEAN_VENDORS["ivvy"](), latency=0.0, keep_seconds=keep_seconds)
    server.configure(keep_seconds=phase_keeps)
    vendor = server.vendor
    record = {"id": 1001, "name": "Bench deal 00000007"}
    vendor.keep("1001", record, record["name"])  # type: ignore[attr-defined]
    server._committed(vendor.written("1001", record, {}).deal)  # type: ignore[attr-defined]
    return server


def test_records_are_taken_out_and_counted_once_kept_long_enough() -> None:
    server = committed(keep_seconds=0.0)
    assert server.drain(final=False).records == [7]
    assert server.vendor.records == {}


def test_fault_phase_keeps_records_until_the_final_count() -> None:
    server = committed(keep_seconds=0.0, phase_keeps=math.inf)
    assert server.drain(final=False).records == []
    assert "1001" in server.vendor.records  # a look-up after a lost answer still finds it
    assert server.drain(final=True).records == [7]


def test_a_later_phase_keeps_records_as_the_server_started() -> None:
    server = committed(keep_seconds=0.0)
    server.configure(keep_seconds=math.inf)
    server.configure()
    assert server.keep_seconds == 0.0
