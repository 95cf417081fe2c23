"""The vendor adapters by key, built once per process from the settings."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from worker.vendors.base import VendorAdapter

if TYPE_CHECKING:
    from worker.settings import Settings

#: vendor key -> "module:Class"
ADAPTERS: dict[str, str] = {
    "siro": "worker.vendors.siro:SiroAdapter",
    "leadway": "worker.vendors.leadway:LeadwayAdapter",
    "ivvy": "worker.vendors.ivvy:IvvyAdapter",
    "salescaling": "worker.vendors.salescaling:SalescalingAdapter",
    "icloudready": "worker.vendors.icloudready:IcloudreadyAdapter",
}


def adapter_class(vendor: str) -> type:
    module_name, class_name = ADAPTERS[vendor].split(":")
    return getattr(importlib.import_module(module_name), class_name)  # type: ignore[no-any-return]


def build_adapters(
    settings: Settings, before_request: Callable[[str], Callable[[], None] | None]
) -> dict[str, VendorAdapter]:
    """One adapter per enabled vendor; ``before_request(vendor)`` gives its quota hook."""
    return {
        vendor: adapter_class(vendor)(
            settings.vendor[vendor],
            settings.mapping,
            timeout=settings.http_timeout_seconds,
            before_request=before_request(vendor),
        )
        for vendor in settings.vendors
    }
