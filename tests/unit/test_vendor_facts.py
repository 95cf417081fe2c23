"""Each vendor declares its facts once (worker/vendors/<vendor>.py); the rest reads them."""

from __future__ import annotations

import pytest

from schemas.mapping import VENDORS
from worker import settings
from worker.sandbox.stack import ROOT
from worker.vendors.registry import FACTS


def variables(vendor: str) -> set[str]:
    f = FACTS[vendor]
    named = (f.quota_scope_variable, f.api_key_variable, f.topic_variable)
    return {*f.required, *f.optional, *f.integer_ids, *(v for v in named if v)}


def test_every_vendor_declares_its_facts() -> None:
    assert tuple(FACTS) == VENDORS
    assert all(FACTS[v].name == v for v in VENDORS)


@pytest.mark.parametrize("vendor", VENDORS)
def test_vendor_variables_are_its_own_and_documented(vendor: str) -> None:
    # given the variables a vendor's facts name
    named = variables(vendor)
    # then each carries the vendor's prefix, and .env.example and the configuration page
    # both list it
    assert all(v.startswith(vendor.upper() + "_") for v in named), named
    example = (ROOT / ".env.example").read_text()
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert [v for v in named if v not in example] == []
    assert [v for v in named if v not in page] == []


def test_settings_read_the_facts() -> None:
    # the settings' tables are views of the facts, not lists of their own
    assert {v: f.required for v, f in FACTS.items()} == settings.REQUIRED
    assert settings.DEFAULT_BASE_URLS["leadway"] == FACTS["leadway"].base_url
    assert tuple(v for v in VENDORS if FACTS[v].polled) == settings.POLLED_VENDORS
