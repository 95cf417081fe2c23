"""``Variants``: a seeded choice, per answer, among the forms a vendor's page leaves open."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Sequence
from datetime import timedelta, timezone
from typing import Any, TypeVar

from schemas.timestamps import parse_timestamp

T = TypeVar("T")


class Variants:
    """A seeded choice, per answer, among the forms a vendor's page allows or leaves open.

    Each kind is one way the pages leave room ([?] in VENDORS.md); ``kinds`` chooses which
    may be picked (all by default), and every pick is drawn from one ``random.Random(seed)``
    so a failing run replays with its seed. Forms that leave information out (a synced key
    omitted, an enum value the mapping does not know) are applied only to keys whose value
    is still what oppsync wrote (``Simulator.as_written``): a vendor may always answer that
    way, and a test expecting a person's change to arrive is not made impossible by it.
    ``late_commit``: a write (``Simulator._late_variant``) is held longer than the client's
    timeout (``late_commit_delay``) and then committed, as the fault of that name does: a
    vendor may always be that slow, and no record may be made twice for it.
    """

    #: timestamp forms; optional keys omitted or null; unknown extra keys; ids as numbers or
    #: strings; lists bare or wrapped; synced keys we wrote left out; enum values unknown;
    #: where a token is answered (iCloudReady).
    KINDS: tuple[str, ...] = (
        "timestamps", "optional_keys", "extra_keys", "id_types", "wrapping",
        "omit_written", "unknown_enums", "token_key", "late_commit",
    )  # fmt: skip

    def __init__(
        self,
        seed: int,
        kinds: Iterable[str] = KINDS,
        late_commit_delay: float = 0.0,
        late_commit_share: float = 0.05,
    ) -> None:
        self.seed = seed
        self.kinds = frozenset(kinds) - ({"late_commit"} if late_commit_delay <= 0 else set())
        #: How long a late write is held: longer than the client's timeout (0: never late).
        self.late_commit_delay = late_commit_delay
        #: The share of writes held (kept small: each costs the settle time in a test).
        self.late_commit_share = late_commit_share
        unknown = self.kinds - set(self.KINDS)
        assert not unknown, f"no such variant kind: {sorted(unknown)}"
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def chance(self, kind: str, probability: float = 0.5) -> bool:
        """Whether to use a form of ``kind`` in this answer (never when it is switched off)."""
        if kind not in self.kinds:
            return False
        with self._lock:
            return self._random.random() < probability

    def pick(self, kind: str, options: Sequence[T]) -> T:
        """One of ``options`` (the first, the simulator's plain form, when ``kind`` is off)."""
        if kind not in self.kinds:
            return options[0]
        with self._lock:
            return self._random.choice(options)

    def timestamp(self, value: Any, forms: Sequence[str]) -> Any:
        """``value`` (a timestamp string) in one of ``forms``, the same instant to the
        microsecond. Forms: ``iso-z`` (``…T…Z``), ``iso-offset`` (``+00:00``), ``iso-east``
        (the same instant at +02:00), ``space`` (``yyyy-mm-dd HH:MM:SS``, no zone), ``utc``
        (iVvy's form with `` UTC``), ``iso-naive`` (a ``T``, no zone)."""
        if not isinstance(value, str) or not value or not self.chance("timestamps", 0.7):
            return value
        moment = parse_timestamp(value)
        form = self.pick("timestamps", forms)
        if form == "iso-east":
            moment = moment.astimezone(timezone(timedelta(hours=2)))
        fraction = f".{moment.microsecond:06d}".rstrip("0") if moment.microsecond else ""
        base = moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction
        return {
            "iso-z": base + "Z",
            "iso-offset": base + "+00:00",
            "iso-east": base + moment.strftime("%z")[:3] + ":" + moment.strftime("%z")[3:],
            "space": base.replace("T", " "),
            "utc": base.replace("T", " ") + " UTC",
            "iso-naive": base,
        }[form]

    def optional(self, record: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
        """Optional keys no synced field is read from: each sometimes left out, or null."""
        for key in keys:
            if key in record and self.chance("optional_keys", 0.3):
                if self.pick("optional_keys", ("omit", "null")) == "omit":
                    del record[key]
                else:
                    record[key] = None
        return record

    def extra_keys(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record with keys no page lists (vendors add fields; readers must ignore them)."""
        if not self.chance("extra_keys", 0.3):
            return record
        return {**record, "_simVersion": 3, "customFields": [{"id": "cf1", "value": "x"}]}
