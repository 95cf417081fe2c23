"""Vendor ids: every documented form accepted, anything that is not one path segment refused."""

from __future__ import annotations

from typing import Any

import pytest
from marshmallow import ValidationError

from schemas import vendorids
from worker.errors import InvalidPayload
from worker.vendors.http import VendorHTTP

UUID = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
VALID: list[tuple[str, Any, str]] = [
    ("siro", UUID, UUID),
    ("siro", UUID.upper(), UUID.upper()),
    ("salescaling", f" {UUID} ", UUID),
    ("salescaling", UUID.replace("-", ""), UUID.replace("-", "")),
    ("leadway", "wWhVuzqpRuOA1ZVWi4FC", "wWhVuzqpRuOA1ZVWi4FC"),
    ("ivvy", 755, "755"),
    ("ivvy", "755", "755"),
    ("ivvy", "0755", "755"),
    ("icloudready", "609a8f85c2834915d0a5a5e1", "609a8f85c2834915d0a5a5e1"),
    ("icloudready", UUID, UUID),
    ("icloudready", 42, "42"),
]
BAD = [".", "..", "%2e%2e", "a/b", "../x", "a\\b", "\x1b[2J", "x\x00y", "a\u0085b", "", " ", "a?b"]


@pytest.mark.parametrize(("vendor", "raw", "stored"), VALID)
def test_vendorids_accepts_every_documented_form(vendor: str, raw: Any, stored: str) -> None:
    assert vendorids.check(vendor, raw) == stored


@pytest.mark.parametrize("vendor", vendorids.SHAPES)
@pytest.mark.parametrize("raw", [*BAD, True, None, 1.5, ["1"], {"id": "1"}])
def test_vendorids_refuses_what_is_no_id_of_the_vendor(vendor: str, raw: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        vendorids.check(vendor, raw)
    assert "id" in caught.value.messages


@pytest.mark.parametrize("vendor", ["siro", "salescaling", "ivvy"])
def test_vendorids_refuses_ids_of_another_vendors_form(vendor: str) -> None:
    with pytest.raises(ValidationError):
        vendorids.check(vendor, "wWhVuzqpRuOA1ZVWi4FC")


def test_vendor_http_record_path_is_the_collection_and_one_segment() -> None:
    http = VendorHTTP("siro", "http://127.0.0.1:9", timeout=1.0)
    try:
        assert http.record_path("/v1/opportunities", UUID) == f"/v1/opportunities/{UUID}"
        for bad in BAD:
            with pytest.raises(InvalidPayload) as caught:
                http.record_path("/v1/opportunities", bad)
            assert caught.value.reason == "bad_id"
    finally:
        http.close()
