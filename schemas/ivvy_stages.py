"""iVvy stages and status: which tenant stage an opportunity is written with, and read as.

iVvy has no status field: an opportunity's state is its tenant-defined stage (VENDORS.md §3.4).
A stage maps to a canonical stage through the mapping file; a stage the mapping does not know
reads as won/lost when its name says so and as open otherwise (DESIGN.md, contract details).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from schemas.mapping import Mapping
from schemas.opportunity import Opportunity, Status

VENDOR = "ivvy"


def status_from_stage_name(name: str | None) -> Status:
    """A stage the mapping does not know: "won"/"lost" in its name decide, else open."""
    lowered = (name or "").lower()
    if "won" in lowered:
        return Status.WON
    if "lost" in lowered:
        return Status.LOST
    return Status.OPEN


def effective_status(opp: Opportunity, mapping: Mapping) -> Status:
    """The status we can write: abandoned becomes lost unless a stage holds it."""
    status = opp.status or Status.OPEN
    if status is Status.ABANDONED and mapping.stage_for_status(VENDOR, status) is None:
        return Status.LOST
    return status


def mapped_stage_id(opp: Opportunity, mapping: Mapping) -> int | None:
    """The iVvy stage the mapping gives ``opp``: its stage's id, else one for its status."""
    explicit = mapping.stage_id(VENDOR, opp.stage)
    if explicit is not None:
        return int(explicit)
    by_status = mapping.stage_for_status(VENDOR, effective_status(opp, mapping))
    return int(by_status.ids[VENDOR]) if by_status is not None else None


def choose_stage(
    opp: Opportunity, mapping: Mapping, stages: Iterable[dict[str, Any]], default: int | None
) -> int | None:
    """The stage id to write: the mapping's, else one from the tenant's ``getLeadStageList``
    whose name reads as the status, else (open) ``default`` or the first open-named stage.
    ``None`` when won/lost cannot be expressed in this tenant."""
    mapped = mapped_stage_id(opp, mapping)
    if mapped is not None:
        return mapped
    status = effective_status(opp, mapping)
    listed = [s for s in stages if isinstance(s, dict) and s.get("id") is not None]
    if status is Status.OPEN and default is not None:
        return default
    for stage in listed:
        if status_from_stage_name(stage.get("name")) is status:
            return int(stage["id"])
    if status is Status.OPEN and listed:
        return int(listed[0]["id"])
    return None


def stage_and_status(
    stage_id: object, stage_name: str | None, mapping: Mapping
) -> tuple[str | None, Status]:
    stage = mapping.stage_by_vendor_id(VENDOR, stage_id)
    if stage is not None:
        return stage.name, stage.status
    return None, status_from_stage_name(stage_name)
