"""One opportunity across every vendor, in plain text (``oppsync show`` and the status page)."""

from __future__ import annotations

import json
from typing import Any

from schemas.opportunity import dump
from worker.runtime import Runtime
from worker.store.keys import opp_key


def resolve(rt: Runtime, ref: str) -> str | None:
    """A canonical key, or ``vendor:id`` looked up in the link map."""
    if rt.redis.exists(opp_key(ref)):
        return ref
    vendor, _, vendor_id = ref.partition(":")
    if vendor_id:
        return rt.store.key_for(vendor, vendor_id)
    return None


def snapshot(rt: Runtime, key: str) -> dict[str, Any]:
    record = rt.store.load(key)
    writes = rt.store.writes(key)
    state = dump(record.state)
    return {
        "key": key,
        "deleted": record.deleted,
        "state": state,
        "rules": {name: rule for name in state if (rule := record.rule(name))},
        "sources": record.sources,
        "times": record.times,
        "vendors": {
            vendor: {
                "id": record.ids.get(vendor),
                "in_sync": record.written.get(vendor) is not None,
                "pending_create": vendor in record.intents,
                "last_write": next((w for w in writes if w.get("target") == vendor), None),
                "gone": record.written.get(vendor) == "gone",
            }
            for vendor in rt.settings.vendors
        },
        "last_event": record.last_event,
        "unmapped": record.unmapped,
        "writes": writes,
    }


def describe(rt: Runtime, key: str) -> str:
    snap = snapshot(rt, key)
    lines = [f"opportunity {key}" + ("  (deleted)" if snap["deleted"] else "")]
    for name, value in snap["state"].items():
        if value is not None and name != "deleted":
            rule = snap["rules"].get(name, "")
            lines.append(f"  {name:12} {json.dumps(value):40} {rule}")
    lines.append("vendors:")
    for vendor, info in snap["vendors"].items():
        write = info["last_write"] or {}
        status = (
            "gone"
            if info["gone"]
            else (
                "pending create"
                if info["pending_create"]
                else ("linked" if info["id"] else "not linked")
            )
        )
        cause = (
            (
                f"{write.get('action')} {write.get('at', '')[:19]} because of "
                f"{write.get('vendor')} delivery {write.get('delivery')}"
            )
            if write
            else ""
        )
        lines.append(f"  {vendor:12} {info['id'] or '-'!s:28} {status:15} {cause}")
    for vendor, values in snap["unmapped"].items():
        for name, value in values.items():
            lines.append(
                f"unmapped: {vendor} {name} {value!r} is not in the mapping: that field is "
                "left as it was (add the value to the mapping file)"
            )
    if snap["last_event"]:
        event = snap["last_event"]
        lines.append(
            f"last event: {event.get('vendor')} {event.get('vendor_id')} "
            f"(delivery {event.get('delivery')}, fields {event.get('fields')})"
        )
    if snap["writes"]:
        lines.append("writes (newest first):")
        lines.extend(f"  {_write_line(w)}" for w in snap["writes"])
    return "\n".join(lines)


def _write_line(write: dict[str, Any]) -> str:
    """One write's provenance: when, where, what, and the event (vendor, record, delivery)
    that caused it, plus a later change it carried when pushes were coalesced."""
    fields = ", ".join(write.get("fields") or []) or "-"
    line = (
        f"{write.get('at', '')[:23]} {write.get('target', '?'):12} {write.get('action')} "
        f"{write.get('target_id') or '-'} <- {write.get('vendor')} {write.get('vendor_id') or '-'} "
        f"delivery {write.get('delivery')} (fields {fields})"
    )
    carried = write.get("carries")
    if carried:
        line += (
            f"; carries {carried.get('vendor')} delivery {carried.get('delivery')} "
            f"(fields {', '.join(carried.get('fields') or []) or '-'})"
        )
    return line
