"""The per-process runtime: settings, Redis, the state store, adapters, quotas and locks.

Built once per process (web or worker) and shared by every task and thread in it, so each
vendor gets one pooled HTTP client per process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from threading import Lock

import redis

from worker.errors import Busy
from worker.ratelimit import VendorQuota
from worker.settings import Settings, get_settings
from worker.store.locks import LOCK_TIMEOUT_SECONDS
from worker.store.records import HeldLock, Record
from worker.store.state import Store
from worker.vendors import build_adapters
from worker.vendors.base import VendorAdapter
from worker.vendors.registry import FACTS

#: How long a job waits for a per-record lock before it is retried later.
LOCK_WAIT_SECONDS = 10
#: How often a waiting job tries the lock again.
LOCK_POLL_SECONDS = 0.05


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    store: Store
    adapters: dict[str, VendorAdapter] = field(default_factory=dict)
    quotas: dict[str, VendorQuota] = field(default_factory=dict)

    def take_lock(self, key: str, vendor: str | None = None) -> tuple[HeldLock, Record]:
        """Take the record's lock (or its lock for one vendor), waiting for it up to
        ``LOCK_WAIT_SECONDS``, and the record as read under it. Raises ``Busy`` (a ``Transient``)
        when it stays held: the job is retried later."""
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while (taken := self.store.lock_and_read(key, vendor, LOCK_TIMEOUT_SECONDS)) is None:
            if time.monotonic() >= deadline:
                raise Busy(f"{key} is busy", vendor=vendor or "-", retry_after=1.0)
            time.sleep(LOCK_POLL_SECONDS)
        return taken

    @contextmanager
    def locked(self, key: str, vendor: str | None = None) -> Iterator[tuple[Record, HeldLock]]:
        """Hold the record's lock (or its lock for one vendor) with the record read under
        it: one round trip when the lock is free. The holder may free it early with its
        last write (``HeldLock``); it is freed on leaving in any case."""
        held, record = self.take_lock(key, vendor)
        try:
            yield record, held
        finally:
            self.store.unlock(held)

    def own_api_key(self, vendor: str) -> str | None:
        variable = FACTS[vendor].api_key_variable
        return self.settings.vendor[vendor].get(variable) if variable else None


def build_runtime(settings: Settings, *, with_adapters: bool = True) -> Runtime:
    client = redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        health_check_interval=30,
        socket_timeout=10,
        socket_connect_timeout=5,
    )
    rt = Runtime(settings=settings, redis=client, store=Store(client))
    if with_adapters:
        for vendor in settings.vendors:
            vs = settings.vendor[vendor]
            scope_variable = FACTS[vendor].quota_scope_variable
            scope = (vs.get(scope_variable) or "") if scope_variable else ""
            rt.quotas[vendor] = VendorQuota(
                client, vendor, vs.rate_limit, scope=scope, margin=settings.quota_margin_seconds
            )
        rt.adapters = build_adapters(settings, lambda v: rt.quotas[v].acquire)
    return rt


_runtime: Runtime | None = None
_runtime_lock = Lock()


def get_runtime(factory: Callable[[], Settings] = get_settings) -> Runtime:
    """The process-wide runtime, built on first use."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = build_runtime(factory())
        return _runtime


def reset_runtime() -> None:
    global _runtime
    with _runtime_lock:
        _runtime = None
