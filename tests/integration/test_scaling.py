"""Scaling out: two worker processes on one Redis keep every vendor's quota and each deal's
order of changes, and the web's processes share its connections, as the "Scaling out"
section of docs/performance.md promises.

A stack of its own: the Procfile's worker line run twice (as two PaaS worker processes on
separate hosts would be) against one Redis, and a Leadway simulator enforcing a quota of
HighLevel's shape scaled down (10 requests per 2 s instead of 100 per 10 s) so the test is
short but the quota is really what paces Leadway.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests.integration.drive import DEAL, held, others, person_creates, schema
from worker.sandbox.stack import Stack, start_stack, wait_for

pytestmark = pytest.mark.integration

QUOTA = (10, 2.0)
DEALS = 3
EDITS = 8


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = start_stack(
        Path(tmp_path_factory.mktemp("scaling")),
        worker=False,
        leadway_quota=QUOTA,
        LEADWAY_RATE_LIMIT=f"{QUOTA[0]}/{int(QUOTA[1])} seconds",
    )
    try:
        stack.start_procfile_worker()
        stack.start_procfile_worker()
    except Exception:
        stack.stop()
        raise
    yield stack
    stack.stop()


def holdings(stack: Stack, vendor: str) -> list[tuple[str, Decimal | None]]:
    """(name, amount) of every record the vendor holds; the amount where it keeps one."""
    keeps_amount = "amount" in schema(vendor).SYNCED_FIELDS
    return sorted((str(o.name), o.amount if keeps_amount else None) for o in held(stack, vendor))


def wanted(vendor: str, deals: dict[int, tuple[str, Decimal]]) -> list[tuple[str, Decimal | None]]:
    keeps_amount = "amount" in schema(vendor).SYNCED_FIELDS
    return sorted((name, amount if keeps_amount else None) for name, amount in deals.values())


def holds(stack: Stack, vendor: str, deals: dict[int, tuple[str, Decimal]]) -> Callable[[], bool]:
    """For ``wait_for``: whether ``vendor`` holds one record per deal, with its values now."""
    return lambda: holdings(stack, vendor) == wanted(vendor, deals)


def ingests_by(stack: Stack, worker: int) -> int:
    log = stack.log_dir / f"worker{worker}.log"
    return log.read_text(errors="replace").count('"ingest.done"')


def test_scaling_two_workers_keep_order_and_quota(two_workers: Stack) -> None:
    stack = two_workers
    source = stack.sims["salescaling"]
    # given a few deals a person created in Salescaling, synced everywhere
    ids, deals = {}, {}
    for n in range(DEALS):
        deals[n] = (f"Scaling Deal {n}", Decimal("12500.00"))
        ids[n] = person_creates(stack, "salescaling", DEAL.replace(name=deals[n][0]))
        assert source.emit_standard(ids[n]) == 202
    for vendor in others("salescaling"):
        wait_for(holds(stack, vendor, deals), 120, f"{vendor} did not get the deals")
    # when each deal is renamed and repriced many times in a row, every edit announced at
    # once, the deals interleaved so both workers take events of every deal
    for edit in range(1, EDITS + 1):
        for n in range(DEALS):
            deals[n] = (f"Scaling Deal {n} v{edit}", Decimal(f"{1000 * edit + n}.00"))
            source.edit(ids[n], name=deals[n][0], amount=float(deals[n][1]))
            assert source.emit_standard(ids[n]) == 202
    # then every vendor holds one record per deal with its last name and amount ...
    for vendor in others("salescaling"):
        wait_for(holds(stack, vendor, deals), 120, f"{vendor} did not end with the last edits")
    # ... no vendor refused a request for its quota, though Leadway's paced both workers ...
    assert {v: s.rate_limited for v, s in stack.sims.items()} == dict.fromkeys(stack.sims, 0)
    assert len(stack.sims["leadway"].log) > QUOTA[0]
    # ... and both worker processes did part of the work
    assert ingests_by(stack, 0) > 0 and ingests_by(stack, 1) > 0


#: Kept-alive connections opened to the web: what a busy sender or a PaaS router holds.
CONNECTIONS = 40


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process ``pid`` holds open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def tcp_sockets(port: int, state: str) -> set[str]:
    """Inodes of the TCP sockets on local ``port`` in ``state`` (``0A`` listening, ``01``
    established), from ``/proc/net/tcp``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                inodes.add(fields[9])
    return inodes


def test_scaling_web_processes_share_kept_alive_connections(tmp_path: Path) -> None:
    # given the Procfile's web line, two processes
    stack = start_stack(tmp_path, worker=False)
    clients = [httpx.Client() for _ in range(CONNECTIONS)]
    try:
        assert stack.web is not None
        stack.web.terminate()  # the harness's web, replaced by the Procfile's
        stack.web.wait()
        web = stack.start_procfile_web()
        workers = [
            int(p) for p in Path(f"/proc/{web.pid}/task/{web.pid}/children").read_text().split()
        ]
        assert len(workers) == 2
        # when many clients each open a connection and keep it alive
        for client in clients:
            assert client.get(f"{stack.web_url}/healthz").status_code == 200
        # then each process listens on a socket of its own (gunicorn's --reuse-port: the
        # kernel, not the first process awake, picks who takes a connection) ...
        listening = tcp_sockets(stack.web_port, "0A")
        listeners = [socket_inodes(pid) & listening for pid in workers]
        assert all(len(own) == 1 for own in listeners)
        assert listeners[0] != listeners[1]
        # ... and both hold a fair share of the connections, so both cores serve them
        established = tcp_sockets(stack.web_port, "01")
        held = [len(socket_inodes(pid) & established) for pid in workers]
        # (gunicorn closes a connection idle for 2 s: on a slow machine a few may be gone)
        assert sum(held) >= CONNECTIONS // 2, held
        assert min(held) >= sum(held) // 5, held
    finally:
        for client in clients:
            client.close()
        stack.stop()
