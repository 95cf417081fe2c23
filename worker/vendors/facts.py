"""``VendorFacts``: what each vendor module declares about itself, once (no imports of ours).

Settings, the receiver, the config check and the sandbox read these through
``worker/vendors/registry.py`` instead of naming vendors in ``if`` branches.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VendorFacts:
    """One vendor's fixed facts, each from its API documentation (VENDORS.md)."""

    name: str
    #: Where the API lives when ``<VENDOR>_BASE_URL`` is not set.
    base_url: str
    #: The documented quota, in the ``limits`` library's notation.
    quota: str
    #: Variables it cannot work without, and those it reads when set.
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    #: Variables holding whole-number ids (the API takes numbers).
    integer_ids: tuple[str, ...] = ()
    #: No opportunity webhooks: it is polled (``<VENDOR>_POLL_SECONDS`` defaults to 60).
    polled: bool = False
    #: Its own signature scheme beside Standard Webhooks (``None``: Standard Webhooks only),
    #: the headers that announce it, and how long the sender redelivers the same signed bytes.
    native_signature: str | None = None
    native_headers: tuple[str, ...] = ()
    redelivery_seconds: int = 0
    #: The status to answer when an event cannot be queued now: the one it redelivers on.
    retry_status: int = 503
    #: The variable whose value scopes its quota (HighLevel counts per location).
    quota_scope_variable: str | None = None
    #: The variable holding the API key it names as a change's author (our own echo).
    api_key_variable: str | None = None
    #: The variable naming the topic its native deliveries must come from (SNS).
    topic_variable: str | None = None
