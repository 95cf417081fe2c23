"""``oppsync config check``: validate settings and mapping, then one harmless read per vendor."""

from __future__ import annotations

from collections.abc import Callable

from worker.errors import ConfigError, OppsyncError
from worker.settings import Settings, from_env


def check(say: Callable[[str], None]) -> bool:
    """Report in plain words; True when everything works."""
    try:
        settings = from_env()
    except ConfigError as exc:
        say(f"Configuration: {exc}")
        return False
    say(f"Configuration: OK. Vendors enabled: {', '.join(settings.vendors) or 'none'}.")
    mapping = settings.mapping
    say(
        f"Mapping: {settings.mapping_path or 'none (defaults)'}: {len(mapping.stages)} stages, "
        f"{len(mapping.owners)} owners, ownership rules for "
        f"{', '.join(mapping.ownership) or 'no field'}."
    )
    from worker.runtime import build_runtime

    ok = True
    if sns_problem := sns_topic_problem(settings):
        ok = False
        say(sns_problem)
    try:
        rt = build_runtime(settings)
        rt.redis.ping()
        say(f"Redis: answers at {settings.redis_url.split('@')[-1]}.")
    except (OSError, OppsyncError, Exception) as exc:  # noqa: BLE001 - reported, not raised
        say(f"Redis: cannot reach it ({type(exc).__name__}: {exc}).")
        return False
    for vendor, adapter in rt.adapters.items():
        try:
            say(f"{vendor}: {adapter.probe()}")
        except OppsyncError as exc:
            ok = False
            say(f"{vendor}: FAILED: {exc}")
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            ok = False
            say(f"{vendor}: FAILED: {type(exc).__name__}: {exc}")
    return ok


def sns_topic_problem(settings: Settings) -> str | None:
    """With iVvy enabled, its SNS notifications are refused until ``IVVY_SNS_TOPIC_ARN``
    names the topic (``web/sns.py``): say so, or None when it is set or iVvy is off."""
    if not settings.enabled("ivvy") or settings.vendor["ivvy"].get("IVVY_SNS_TOPIC_ARN"):
        return None
    return (
        "ivvy: FAILED: IVVY_SNS_TOPIC_ARN is not set, so every SNS notification from iVvy is "
        "refused (401): set it to the TopicArn iVvy's subscribeToNotifications answered with."
    )
