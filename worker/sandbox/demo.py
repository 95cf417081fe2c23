"""``oppsync demo``: the whole stack on five simulated vendors, watched until they agree.

One sample deal from each vendor, and a live table of every deal in every vendor until they
all agree.

Runs what ``oppsync run`` runs (``worker/sandbox/localrun.py``: web, worker, beat, Flower under
honcho) on a private Redis (unless ``REDIS_URL`` is set) and the five vendor simulators of the
test suite. Once the service answers ``/readyz``, a person "creates" one deal in each vendor's
own records and the vendor announces it (its signed webhook, or its automation's Standard
Webhooks delivery), exactly as the integration tests drive them. The table reads every
vendor's records back through that vendor's schema. Then the stack stays up for poking at
(``/status``, Flower, ``oppsync show``) until Ctrl-C, which stops everything.
"""

from __future__ import annotations

import importlib
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import redis
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from schemas.mapping import VENDORS, Mapping
from schemas.opportunity import SYNCED_FIELDS, Contact, Opportunity, Status
from worker.settings import load_mapping
from worker.store.state import Store
from worker.terminal import printable

CONVERGE_SECONDS = 120
READY_SECONDS = 120

SAMPLES: dict[str, Opportunity] = {
    "siro": Opportunity(
        name="Riverside Gym Fit-out", amount=Decimal("8400.00"), status=Status.OPEN,
        close_date=date(2027, 2, 1), owner="alice@example.com", company="Riverside Gyms",
        contact=Contact(name="Sam Lee", email="sam@riverside.example", phone="+61400222333"),
    ),
    "leadway": Opportunity(
        name="Harbour View Conference", amount=Decimal("12500.00"), status=Status.OPEN,
        stage="proposal", owner="alice@example.com", company="Harbour Events",
        contact=Contact(name="Dana Smith", email="dana@harbour.example", phone="+61400111222"),
    ),
    "ivvy": Opportunity(
        name="Winter Gala Dinner", status=Status.OPEN, stage="new",
        close_date=date(2027, 6, 20), description="Dinner for 240 guests",
        owner="alice@example.com", company="Northwind Foundation",
        contact=Contact(name="Priya Nair", email="priya@northwind.example"),
    ),
    "salescaling": Opportunity(
        name="Fleet Telematics Renewal", amount=Decimal("5600.00"), status=Status.WON,
        close_date=date(2026, 12, 1), description="Two-year renewal, 40 vehicles",
        probability=Decimal("100.00"),
    ),
    "icloudready": Opportunity(
        name="Campus Wi-Fi Upgrade", amount=Decimal("41000.00"), status=Status.OPEN,
        stage="proposal", close_date=date(2027, 4, 30), probability=Decimal("40.00"),
        description="Three buildings", owner="alice@example.com",
    ),
}  # fmt: skip


def _schema(vendor: str) -> Any:
    return importlib.import_module(f"schemas.{vendor}")


def person_creates(sim: Any, vendor: str, opp: Opportunity, mapping: Mapping) -> str:
    """Put the deal in the vendor's records as a person would (no oppsync involved)."""
    mod = _schema(vendor)
    contact = opp.contact or Contact()
    if vendor == "siro":
        return str(sim.apply_sync(mod.to_body(opp, mapping, key="crm-demo-1"))[0]["id"])
    if vendor == "salescaling":
        return str(sim.write(mod.to_body(opp, mapping))["id"])
    if vendor == "icloudready":
        return str(sim.store_new(mod.to_body(opp, mapping, create=True))["_id"])
    if vendor == "leadway":
        return str(sim.seed({
            "name": opp.name, "status": (opp.status or Status.OPEN).value,
            "monetaryValue": float(opp.amount) if opp.amount is not None else None,
            "pipelineId": sim.pipeline_id,
            "pipelineStageId": mapping.stage_id("leadway", opp.stage),
            "assignedTo": mapping.owner_id("leadway", opp.owner),
            "contact": {"name": contact.name, "email": contact.email, "phone": contact.phone,
                        "companyName": opp.company},
        }))  # fmt: skip
    first, _, last = (contact.name or "").partition(" ")
    return str(sim.seed({
        "name": opp.name, "description": opp.description,
        "stageId": int(mapping.stage_id("ivvy", opp.stage) or 69),
        "closedDate": opp.close_date.isoformat() if opp.close_date else None,
        "ownerUserId": int(mapping.owner_id("ivvy", opp.owner) or 0) or None,
        "contact": {"firstName": first, "lastName": last, "email": contact.email,
                    "phone": contact.phone},
        "company": {"businessName": opp.company},
    }))  # fmt: skip


def announce(sim: Any, vendor: str, vendor_id: str) -> int:
    """The vendor tells oppsync: its native webhook where it has one, else its automation."""
    if vendor == "leadway":
        return int(sim.emit(vendor_id, "OpportunityCreate"))
    if vendor == "ivvy":
        return int(sim.emit(vendor_id, "OpportunityAdded"))
    return int(sim.emit_standard(vendor_id))


def _synced(opp: Opportunity, vendor: str) -> dict[str, Any]:
    fields = _schema(vendor).SYNCED_FIELDS
    return {f: getattr(opp, f) for f in SYNCED_FIELDS if f in fields}


@dataclass(frozen=True)
class Cell:
    text: str
    agrees: bool


class Board:
    """Each sample deal as each vendor holds it, read back through the vendor's schema."""

    def __init__(
        self,
        sims: dict[str, Any],
        mapping: Mapping,
        key_of: Callable[[str], str | None] = lambda source: None,
    ) -> None:
        self.sims = sims
        self.mapping = mapping
        #: The canonical key of the deal created in ``source``, once oppsync linked it.
        self.key_of = key_of

    def expected(self, source: str, vendor: str) -> dict[str, Any]:
        held_by_source = _schema(source).project(SAMPLES[source], self.mapping)
        return _synced(_schema(vendor).project(held_by_source, self.mapping), vendor)

    def held(self, vendor: str) -> list[Opportunity]:
        sim = self.sims[vendor]
        with sim.state_lock:
            records = [dict(r) for r in sim.records.values()]
        held = []
        for record in records:
            try:
                held.append(_schema(vendor).to_canonical(record, self.mapping))
            except Exception:  # noqa: BLE001 - a record mid-write is read again next round
                continue
        return held

    def cells(self) -> dict[str, dict[str, Cell | None]]:
        rows: dict[str, dict[str, Cell | None]] = {s: {} for s in SAMPLES}
        for vendor in VENDORS:
            by_name: dict[str | None, list[Opportunity]] = {}
            for opp in self.held(vendor):
                by_name.setdefault(opp.name, []).append(opp)
            for source, deal in SAMPLES.items():
                found = by_name.get(deal.name, [])
                if not found:
                    rows[source][vendor] = None
                    continue
                opp = found[0]
                agrees = len(found) == 1 and _synced(opp, vendor) == self.expected(source, vendor)
                rows[source][vendor] = Cell(_describe(opp), agrees)
        return rows

    def converged(self, cells: dict[str, dict[str, Cell | None]]) -> bool:
        return all(c is not None and c.agrees for row in cells.values() for c in row.values())

    def table(self, cells: dict[str, dict[str, Cell | None]], elapsed: float) -> Table:
        done = self.converged(cells)
        table = Table(
            title=("converged" if done else "syncing…") + f"  ({elapsed:.1f} s)",
            caption="✓ holds what the deal should look like there · … differs · – not yet",
        )
        table.add_column("deal (created in)")
        table.add_column("key (oppsync show KEY)")
        for vendor in VENDORS:
            table.add_column(vendor)
        for source, deal in SAMPLES.items():
            row = [f"{deal.name} ({source})", self.key_of(source) or "[dim]–[/dim]"]
            for vendor in VENDORS:
                cell = cells[source][vendor]
                if cell is None:
                    row.append("[dim]–[/dim]")
                else:
                    mark = "[green]✓" if cell.agrees else "[yellow]…"
                    # What a vendor holds is shown as text, never as markup or escapes.
                    row.append(f"{mark} {escape(printable(cell.text))}[/]")
            table.add_row(*row)
        return table


def _describe(opp: Opportunity) -> str:
    parts = [opp.status.value if opp.status else "?"]
    if opp.amount is not None:
        parts.append(f"{opp.amount:,.0f}")
    elif opp.stage:
        parts.append(opp.stage)
    return " ".join(parts)


class Finished(KeyboardInterrupt):
    """Stop the stack the way Ctrl-C does (``--exit-when-converged``)."""


def _child_exited() -> bool:
    """Whether a process this one started (honcho, Redis) has ended; it stays reapable."""
    try:
        return os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return False


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if _child_exited():
            raise RuntimeError("the stack stopped while starting")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the service did not become ready at {url} in {READY_SECONDS} s")


class ProcessLog:
    """The stack's output (honcho's four processes, Redis, the simulators) goes to a file
    while the table is drawn, so their lines cannot tear it; afterwards it is followed on
    the terminal as ``oppsync run`` would show it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved = (os.dup(1), os.dup(2))
        self.terminal = os.fdopen(os.dup(self._saved[0]), "w", buffering=1)
        self._stop = threading.Event()

    def __enter__(self) -> ProcessLog:
        sys.stdout.flush()
        sys.stderr.flush()
        target = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(target, 1)  # children inherit these: honcho and what it starts
        os.dup2(target, 2)
        os.close(target)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in zip((1, 2), self._saved, strict=True):
            os.dup2(saved, fd)
            os.close(saved)
        self.terminal.close()

    def follow(self) -> None:
        """From now on, copy what the processes write to the terminal."""
        start = self.path.stat().st_size
        threading.Thread(target=self._copy, args=(start,), daemon=True).start()

    def _copy(self, offset: int) -> None:
        with self.path.open(errors="replace") as log:
            log.seek(offset)
            while not self._stop.is_set():
                line = log.readline()
                if line:
                    self.terminal.write(line)
                else:
                    time.sleep(0.2)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.path.read_text(errors="replace").splitlines()[-lines:])


def show_convergence(
    sims: dict[str, Any], mapping: Mapping, console: Console, *, started: float, store: Store
) -> bool:
    """Create and announce the sample deals, then redraw the table until all agree; each
    deal's key (from the link map) is shown for ``oppsync show``."""
    created: dict[str, str] = {}
    board = Board(sims, mapping, lambda source: store.key_for(source, created[source]))
    for vendor, deal in SAMPLES.items():
        created[vendor] = person_creates(sims[vendor], vendor, deal, mapping)
        answer = announce(sims[vendor], vendor, created[vendor])
        console.print(f"{vendor}: a person created “{deal.name}”; the webhook got {answer}")
    cells = board.cells()
    with Live(board.table(cells, 0.0), console=console, refresh_per_second=4) as live:
        while not board.converged(cells) and time.monotonic() - started < CONVERGE_SECONDS:
            time.sleep(0.5)
            cells = board.cells()
            live.update(board.table(cells, time.monotonic() - started))
    console.line()
    return board.converged(cells)


def _environment(
    redis_url: str, sims: dict[str, Any], workdir: Path, flower_port: int
) -> dict[str, str]:
    """The service's environment: every vendor pointed at its simulator, admin credentials
    (the user's, or made up now) for /status, /metrics and Flower."""
    from worker.sandbox.stack import stack_env

    user = os.environ.get("OPPSYNC_ADMIN_USER") or "admin"
    password = os.environ.get("OPPSYNC_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
    env = stack_env(redis_url, sims)
    env.update({
        "OPPSYNC_ADMIN_USER": user, "OPPSYNC_ADMIN_PASSWORD": password,
        "FLOWER_BASIC_AUTH": os.environ.get("FLOWER_BASIC_AUTH") or f"{user}:{password}",
        "FLOWER_PORT": str(flower_port), "FLOWER_DB": str(workdir / "flower.db"),
        "OPPSYNC_BEAT_SCHEDULE": str(workdir / "beat-schedule"),
    })  # fmt: skip
    return env


def demo(*, port: int, exit_when_converged: bool) -> int:
    """Run the demo; returns the process exit code (0: every vendor agreed)."""
    from worker.sandbox.localrun import port_conflict

    if conflict := port_conflict(port, os.environ):
        print(conflict, file=sys.stderr)
        return 2
    flower_port = int(os.environ.get("FLOWER_PORT", "5555"))
    workdir = Path(tempfile.mkdtemp(prefix="oppsync-demo-"))
    log = ProcessLog(workdir / "stack.log")
    # Piped into a file or CI log, a table 80 columns wide would wrap every cell.
    console = Console(file=log.terminal, width=None if log.terminal.isatty() else 170)
    console.print(f"Starting Redis, five simulated vendors, web, worker, beat and Flower "
                  f"(their output: {log.path}) …")  # fmt: skip
    with log:
        try:
            converged = _run(port, flower_port, workdir, console, log, exit_when_converged)
        except ConfigRefused as exc:
            console.print(str(exc))
            shutil.rmtree(workdir, ignore_errors=True)
            return 2
        except RuntimeError as exc:
            console.print(
                escape(printable(f"{log.tail()}\n\ndemo: {exc} (the whole log: {log.path})"))
            )
            _keep_only(workdir, log.path)
            return 1
    if not converged:
        console.print(f"The stack's output is kept in {log.path}.")
        _keep_only(workdir, log.path)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


class ConfigRefused(RuntimeError):
    """The pre-flight check refused what the demo took from the user's environment."""


def _keep_only(workdir: Path, log: Path) -> None:
    """After a failed demo, its temporary folder keeps only the log it points the user to."""
    for child in workdir.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        elif child != log:
            child.unlink()


def _run(
    port: int,
    flower_port: int,
    workdir: Path,
    console: Console,
    log: ProcessLog,
    exit_when_converged: bool,
) -> bool:
    from worker.sandbox.embedded_redis import start_redis
    from worker.sandbox.stack import start_simulators

    with ExitStack() as started:  # whatever starts is stopped, however the demo ends
        redis_url = os.environ.get("REDIS_URL", "")
        if redis_url:
            console.print("Using REDIS_URL: the demo's links and events stay in that Redis.")
        else:
            redis_server = start_redis(directory=workdir / "redis")
            started.callback(redis_server.stop)
            redis_url = redis_server.url
        sims = start_simulators()
        for sim in sims.values():
            started.callback(sim.stop)
        return _run_on(
            redis_url, sims, port, flower_port, workdir, console, log, exit_when_converged
        )


def _run_on(
    redis_url: str,
    sims: dict[str, Any],
    port: int,
    flower_port: int,
    workdir: Path,
    console: Console,
    log: ProcessLog,
    exit_when_converged: bool,
) -> bool:
    from worker.preflight import explain, problems
    from worker.sandbox.localrun import run_stack, source_line, write_sandbox_env

    for name, sim in sims.items():
        sim.webhook_url = f"http://127.0.0.1:{port}/webhooks/{name}"
        if hasattr(sim, "auto_emit"):
            sim.auto_emit = True  # Leadway and iVvy announce our own writes too, as in life
    env = _environment(redis_url, sims, workdir, flower_port)
    if found := problems(env):  # what the demo takes from the user's environment
        raise ConfigRefused(explain(found))
    env_file = write_sandbox_env(env)
    os.environ.clear()
    os.environ.update(env)  # run_stack starts the Procfile with this process's environment
    mapping = load_mapping(env["OPPSYNC_MAPPING"])
    outcome = {"converged": False}

    def after_start(_: dict[str, str]) -> None:
        web = f"http://127.0.0.1:{port}"
        _wait_ready(web)
        started = time.monotonic()
        store = Store(redis.Redis.from_url(redis_url, decode_responses=True))
        outcome["converged"] = show_convergence(
            sims, mapping, console, started=started, store=store
        )
        store.redis.close()
        took = time.monotonic() - started
        console.print(
            f"All five vendors agree on all five deals: converged in {took:.1f} s."
            if outcome["converged"]
            else f"Not converged after {CONVERGE_SECONDS} s: see {web}/status."
        )
        console.print(
            f"Status page {web}/status and Flower http://127.0.0.1:{flower_port} (user "
            f"{env['OPPSYNC_ADMIN_USER']}, password {env['OPPSYNC_ADMIN_PASSWORD']}); metrics "
            f"at {web}/metrics. The stack keeps running; Ctrl-C stops everything.\n"
        )
        console.print(escape(source_line(env_file)) + "\n")
        if exit_when_converged:
            raise Finished
        log.follow()

    try:
        run_stack(sandbox=False, port=port, after_start=after_start)
    finally:
        env_file.unlink(missing_ok=True)
    return outcome["converged"]
