"""How the iVvy simulator reads a request and answers one: errors, signatures, arguments, pages.

Follows iVvy's pages: getting-started (errors, filtering, collections, pagination).
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import request

from schemas.timestamps import parse_timestamp
from worker.vendors.ivvy import content_md5, ivvy_headers, signature, string_to_sign

MAX_PER_PAGE = 100
STALE_AFTER = timedelta(minutes=5)


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


def check_signature(api_key: str, api_secret: str) -> None:
    """Refuse the request being served unless signed as VENDORS.md §3.2 says: Content-MD5,
    a fresh date, then the HMAC over the request."""
    if request.method != "POST":
        raise IvvyError(405, "Method not allowed: every call is a POST", 23000)
    if request.mimetype != "application/json":
        raise IvvyError(406, "Content-Type must be application/json", 23006)
    scheme, _, credentials = request.headers.get("X-Api-Authorization", "").partition(" ")
    key, _, sig = credentials.partition(":")
    if scheme != "IWS" or not key or not sig:
        raise IvvyError(401, "Missing or malformed X-Api-Authorization", 23001)
    md5 = request.headers.get("Content-MD5", "")
    if md5 != content_md5(request.get_data()):
        raise IvvyError(401, "Content-MD5 does not match the body", 23003)
    ivvy_date, http_date = request.headers.get("IVVY-Date"), request.headers.get("Date", "")
    try:
        sent = (
            parse_timestamp(ivvy_date)
            if ivvy_date
            else datetime.strptime(http_date, "%a, %d %b %Y %H:%M:%S %Z").replace(tzinfo=UTC)
        )
    except ValueError:
        raise IvvyError(401, "Missing or invalid IVVY-Date/Date header", 23004) from None
    if abs(datetime.now(UTC) - sent) > STALE_AFTER:
        raise IvvyError(401, "Request is stale", 23005)
    query = request.query_string.decode()
    signed = string_to_sign(
        method=request.method,
        content_md5=md5,
        content_type=request.headers["Content-Type"],
        date="" if ivvy_date else http_date,
        path_and_query=request.path + (f"?{query}" if query else ""),
        ivvy_header_text=ivvy_headers(dict(request.headers)),
    )
    expected = signature(api_secret, signed)
    if not (hmac.compare_digest(key, api_key) and hmac.compare_digest(sig, expected)):
        raise IvvyError(401, "The request signature is not valid", 23002)
