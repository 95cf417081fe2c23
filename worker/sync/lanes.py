"""Each vendor's lane of push threads: a vendor that is slow fills its own lane, no other's.

The fast path writes an event's vendors at once, each push on its vendor's lane: a thread
pool per vendor, of ``OPPSYNC_PUSH_THREADS`` threads made as they are needed. A lane never
queues work: a push that finds its vendor's lane full is not started (``submit`` answers
``None``) and the caller queues it on that vendor's own queue, so no push ever waits
behind a slow vendor's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Lanes:
    """One bounded thread pool per vendor, made on first use."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pools: dict[str, tuple[ThreadPoolExecutor, threading.BoundedSemaphore]] = {}
        self._made = threading.Lock()

    def _lane(self, vendor: str) -> tuple[ThreadPoolExecutor, threading.BoundedSemaphore]:
        if (lane := self._pools.get(vendor)) is not None:
            return lane  # made already: no lock on the fast path
        with self._made:
            if vendor not in self._pools:
                pool = ThreadPoolExecutor(
                    max_workers=self.threads, thread_name_prefix=f"oppsync-push-{vendor}"
                )
                self._pools[vendor] = (pool, threading.BoundedSemaphore(self.threads))
            return self._pools[vendor]

    def submit(
        self, vendor: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> Future[T] | None:
        """Run ``fn`` on ``vendor``'s lane now; ``None`` when every thread of it is busy."""
        pool, room = self._lane(vendor)
        if not room.acquire(blocking=False):
            return None

        def run() -> T:
            try:
                return fn(*args, **kwargs)
            finally:
                room.release()  # before the future is done: its waiter may submit again

        try:
            return pool.submit(run)
        except BaseException:
            room.release()
            raise


_lanes: Lanes | None = None
_lanes_made = threading.Lock()


def lanes(threads: int) -> Lanes:
    """This process's lanes (made with the first fan-out, ``threads`` per vendor)."""
    global _lanes
    if _lanes is not None:
        return _lanes
    with _lanes_made:
        if _lanes is None:
            _lanes = Lanes(threads)
        return _lanes
