"""``oppsync config check``: the pre-flight check, then Redis, then one harmless read each.

One read per vendor. It stops at the first layer that fails: a vendor is not read before the
configuration is whole and Redis answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from worker import preflight
from worker.errors import OppsyncError
from worker.settings import Settings, from_env
from worker.vendors.registry import FACTS

Say = Callable[[str], None]


def check(say: Say) -> int:
    """Report in plain words; the exit status: 0 when everything works, 2 when the
    configuration is refused, 1 when Redis or a vendor fails."""
    found = preflight.problems()
    if found:
        say(preflight.explain(found))
        return preflight.EXIT_CONFIG
    settings = from_env()
    say(f"Configuration: OK. Vendors enabled: {', '.join(settings.vendors) or 'none'}.")
    noted = [note(settings, say) for note in NOTES]
    rt = reach_redis(settings, say)
    if rt is None:
        return 1
    checked = [check_vendor(vendor, adapter, say) for vendor, adapter in rt.adapters.items()]
    return 0 if all(noted) and all(checked) else 1


def say_mapping(settings: Settings, say: Say) -> bool:
    mapping = settings.mapping
    say(
        f"Mapping: {settings.mapping_path or 'none (defaults)'}: {len(mapping.stages)} stages, "
        f"{len(mapping.owners)} owners, ownership rules for "
        f"{', '.join(mapping.ownership) or 'no field'}."
    )
    return True


def say_sns_topic(settings: Settings, say: Say) -> bool:
    """A vendor delivering through SNS (iVvy) has every notification refused until its topic
    variable (``IVVY_SNS_TOPIC_ARN``) names the topic (``web/sns.py``): say so; True when
    each enabled one has it set."""
    fine = True
    for vendor in settings.vendors:
        variable = FACTS[vendor].topic_variable
        if variable is None or settings.vendor[vendor].get(variable):
            continue
        say(
            f"{vendor}: FAILED: {variable} is not set, so every SNS notification from {vendor} "
            "is refused (401): set it to the TopicArn iVvy's subscribeToNotifications answered "
            "with."
        )
        fine = False
    return fine


def reach_redis(settings: Settings, say: Say) -> Any:
    """The runtime when Redis answers, else None (and why)."""
    import redis

    from worker.runtime import build_runtime

    where = settings.redis_url.split("@")[-1]
    rt = build_runtime(settings)
    try:
        rt.redis.ping()
    except redis.RedisError as exc:
        say(f"Redis: cannot reach {where} ({type(exc).__name__}: {exc}); vendors not checked.")
        return None
    say(f"Redis: answers at {where}.")
    return rt


#: What is said about a whole configuration once it is valid, before Redis is reached: one
#: function per note, each True when what it checks is fine (a False one fails the check).
NOTES: tuple[Callable[[Settings, Say], bool], ...] = (say_mapping, say_sns_topic)


def check_vendor(vendor: str, adapter: Any, say: Say) -> bool:
    """One harmless read of ``vendor``; True when it answered as expected."""
    try:
        say(f"{vendor}: {adapter.probe()}")
        return True
    except OppsyncError as exc:
        say(f"{vendor}: FAILED: {exc}")
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        say(f"{vendor}: FAILED: {type(exc).__name__}: {exc}")
    return False
