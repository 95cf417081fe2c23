"""The demo's board: five sample deals, a person making each in its vendor, the live table."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from rich.markup import escape
from rich.table import Table

from schemas.mapping import VENDORS, Mapping
from schemas.opportunity import SYNCED_FIELDS, Contact, Opportunity, Status
from worker.terminal import printable

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
