"""How the iVvy simulator reads a request and answers one: errors, arguments, filters, pages.

Follows iVvy's pages: getting-started (errors, filtering, collections, pagination).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

MAX_PER_PAGE = 100


MODIFIERS = ("", "CONTAINS", "NOTCONTAINS", "GREATERTHAN", "LESSTHAN", "NOT")


class IvvyError(Exception):
    """An iVvy error answer, raised inside handlers and turned into the response."""

    def __init__(self, status: int, message: str, specific: int, *extra: str) -> None:
        super().__init__(message)
        self.status = status
        self.body = {
            "errorCode": status,
            "message": message,
            "specificCode": specific,
            "additionalMessages": list(extra),
        }


def invalid(key: str, why: str) -> IvvyError:
    return IvvyError(400, f"The parameter {key} does not validate", 23016, why)


def int_arg(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise invalid(key, f"{key} must be an integer")


def text_arg(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise invalid(key, f"{key} must be a string")
    return value


def matches(record: dict[str, Any], key: str, wanted: Any) -> bool:
    """One ``filter`` entry (getting-started/interpreting-the-response/filtering.md)."""
    name, _, modifier = key.partition("__")
    actual = record.get(name)
    if wanted == "ISNULL":
        return (actual in (None, "")) is (modifier == "")
    text, want = ("" if actual is None else str(actual)).lower(), str(wanted).lower()
    if modifier in ("GREATERTHAN", "LESSTHAN"):
        if isinstance(actual, int) and isinstance(wanted, int):
            return actual > wanted if modifier == "GREATERTHAN" else actual < wanted
        return text > want if modifier == "GREATERTHAN" else text < want
    outcomes = {"": text == want, "NOT": text != want, "CONTAINS": want in text}
    return outcomes.get(modifier, want not in text)


def collection(items: list[dict[str, Any]], body: dict[str, Any]) -> dict[str, Any]:
    """iVvy's collection answer, one page of it (…/collections.md, …/pagination.md)."""
    start = int_arg(body, "start") if body.get("start") is not None else 0
    per_page = int_arg(body, "perPage") if body.get("perPage") is not None else MAX_PER_PAGE
    page = items[start : start + max(1, min(per_page, MAX_PER_PAGE))]
    meta = {"totalResults": len(items), "start": start, "perPage": per_page, "count": len(page)}
    return {"meta": meta, "results": page}


def pick(items: list[dict[str, Any]], body: dict[str, Any], key: str) -> dict[str, Any]:
    """The item whose id the body's ``key`` names (a stage, type, source or user)."""
    wanted = int_arg(body, key)
    for item in items:
        if item["id"] == wanted:
            return item
    raise IvvyError(400, "The opportunity details are invalid", 24224, f"{key} unknown")


def ivvy_now() -> datetime:
    """iVvy's clock: whole seconds."""
    return datetime.now(UTC).replace(microsecond=0)
