"""The lean simulators' memory: records by id and by name, and request helpers.

What every vendor's handler reads from a request: its JSON body, a bearer token."""

from __future__ import annotations

import hmac
import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from worker.bench.lean import LeanVendor, Refusal, Written, deal_number


def now_iso() -> str:
    """ISO 8601 in UTC to the millisecond, as most of the vendors answer."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def body_of(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise Refusal(400, {"message": "The body is not JSON"}) from None
    if not isinstance(body, dict):
        raise Refusal(400, {"message": "The body must be a JSON object"})
    return body


def bearer(request: web.Request, token: str) -> bool:
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


class Named(LeanVendor):
    """Records found again by name (the look-up after an unanswered create)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_name: dict[str, list[str]] = {}

    def keep(self, record_id: str, record: dict[str, Any], name: Any) -> Written | None:
        """Store a new record under ``name``; None. The deal it holds is counted."""
        self.records[record_id] = record
        if isinstance(name, str):
            self.by_name.setdefault(name, []).append(record_id)
        return None

    def named(self, name: str | None) -> list[dict[str, Any]]:
        if name is None:
            return list(self.records.values())
        return [self.records[i] for i in self.by_name.get(name, ()) if i in self.records]

    def forget(self, record_id: str) -> None:
        record = self.records.get(record_id)
        name = self.name_of(record) if record else None
        if name in self.by_name:
            self.by_name[name] = [i for i in self.by_name[name] if i != record_id]
            if not self.by_name[name]:
                del self.by_name[name]
        super().forget(record_id)

    def name_of(self, record: dict[str, Any]) -> str | None:
        name = record.get("name")
        return name if isinstance(name, str) else None

    def written(self, record_id: str, body: dict[str, Any], answer: Any) -> Written:
        number = deal_number(body)
        if number is not None:
            self.deals[record_id] = number
        return Written(answer, number)

    def get(self, record_id: str, missing: Any) -> dict[str, Any]:
        record = self.records.get(record_id)
        if record is None:
            raise Refusal(404, missing)
        return record
