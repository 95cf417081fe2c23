"""Every vendor's facts, collected from the vendor modules, in the order of ``VENDORS``."""

from __future__ import annotations

from schemas.mapping import VENDORS
from worker.vendors import icloudready, ivvy, leadway, salescaling, siro
from worker.vendors.facts import VendorFacts

FACTS: dict[str, VendorFacts] = {
    module.FACTS.name: module.FACTS for module in (siro, leadway, ivvy, salescaling, icloudready)
}
assert tuple(FACTS) == VENDORS, "a vendor in schemas.mapping.VENDORS has no facts"

POLLED_VENDORS: tuple[str, ...] = tuple(v for v, f in FACTS.items() if f.polled)
#: The prefix of every vendor's variables (``SIRO_``, ``LEADWAY_``, ...).
VARIABLE_PREFIXES: tuple[str, ...] = tuple(f"{v.upper()}_" for v in FACTS)


def facts(vendor: str) -> VendorFacts:
    return FACTS[vendor]
