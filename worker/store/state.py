"""``Store``: typed access to everything oppsync keeps in Redis, one mixin per concern."""

from __future__ import annotations

from worker.store.deliveries import Deliveries
from worker.store.documents import Documents
from worker.store.links import Links
from worker.store.polls import Polls
from worker.store.writes import Writes


class Store(Documents, Writes, Links, Deliveries, Polls):
    """Typed access to oppsync's Redis state: one class over the concerns beside it
    (documents, writes and history, links, deliveries, polls; locks under them all)."""
