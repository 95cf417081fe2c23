"""The one place configuration is read: a frozen ``Settings`` built from the environment.

Twelve-factor: ``OPPSYNC_*`` for the service, ``<VENDOR>_*`` per vendor, ``REDIS_URL`` for the
broker and state. Every value is checked when settings are built, and every problem is
collected before any is raised: one ``ConfigError`` whose ``problems`` has one line per
variable, naming it and what a valid value looks like (``worker/preflight.py`` prints them).
The tables of ``docs/configuration.md`` and ``.env.example`` mirror this.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping as EnvMapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlsplit

from limits import parse_many
from marshmallow import ValidationError
from redis.connection import parse_url

from schemas.mapping import VENDORS, Mapping, parse_mapping
from worker.errors import ConfigError
from worker.vendors.registry import FACTS, POLLED_VENDORS

# Each vendor's facts are declared once, in its module (worker/vendors/<vendor>.py); these
# views of them are what the rest of the settings read.
DEFAULT_BASE_URLS: dict[str, str] = {v: f.base_url for v, f in FACTS.items()}
#: Documented quotas, in the ``limits`` library's notation (issue 3; VENDORS.md §1.6 §2.6 §5.6).
DEFAULT_RATE_LIMITS: dict[str, str] = {v: f.quota for v, f in FACTS.items()}
#: Variables each vendor cannot work without.
REQUIRED: dict[str, tuple[str, ...]] = {v: f.required for v, f in FACTS.items()}
DELETE_POLICIES: tuple[str, ...] = ("mark-lost", "delete", "ignore")
LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: Vendor variables that hold integer ids (iVvy's API takes numbers; VENDORS.md §3).
INTEGER_IDS: tuple[str, ...] = tuple(i for f in FACTS.values() for i in f.integer_ids)


@dataclass(frozen=True)
class VendorSettings:
    """What every vendor has: where it lives, how its events are signed, how it is paced.

    ``credentials`` holds the vendor's own variables (e.g. ``IVVY_VENUE_ID``) by their
    environment names; read them with ``get``/``require``.
    """

    name: str
    base_url: str
    webhook_secrets: tuple[str, ...] = ()
    poll_seconds: int = 60
    delete_policy: str = "mark-lost"
    rate_limit: str = ""
    credentials: dict[str, str] = field(default_factory=dict)

    def get(self, variable: str, default: str | None = None) -> str | None:
        return self.credentials.get(variable, default)

    def require(self, variable: str) -> str:
        value = self.credentials.get(variable)
        if not value:
            raise ConfigError(f"{variable} is required when {self.name} is enabled")
        return value

    def secret_values(self) -> list[str]:
        """Every secret this vendor holds, for log redaction."""
        secret_words = ("TOKEN", "SECRET", "PASSWORD", "API_KEY")
        values = [v for k, v in self.credentials.items() if any(w in k for w in secret_words)]
        return [v for v in (*values, *self.webhook_secrets) if v]


@dataclass(frozen=True)
class Settings:
    redis_url: str
    vendors: tuple[str, ...]
    vendor: dict[str, VendorSettings]
    mapping: Mapping
    mapping_path: str | None = None
    http_timeout_seconds: float = 10.0
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 600.0
    retry_horizon_hours: float = 72.0
    #: How long after it was sent an unanswered create may still commit (not repeated sooner).
    create_settle_seconds: float = 60.0
    max_body_bytes: int = 1_048_576
    signature_tolerance_seconds: int = 300
    dedup_ttl_seconds: int = 72 * 3600
    admin_user: str | None = None
    admin_password: str | None = None
    ingress_rate_limit: str = "300/second"
    quota_margin_seconds: float = 0.25
    #: Webhooks per vendor route from all clients together (``limits`` notation).
    ingress_vendor_rate_limit: str = "3000/second"
    #: Proxies in front of the web process whose ``X-Forwarded-For`` is believed.
    trusted_proxies: int = 0
    #: Failed basic-auth attempts per client on /status and /metrics (``limits`` notation).
    admin_auth_rate_limit: str = "10/minute"
    log_level: str = "INFO"
    #: The Celery worker and beat (``worker/celery_app.py``).
    visibility_timeout_seconds: int = 3600
    prefetch: int = 4
    soft_shutdown_seconds: float = 10.0
    unacked_sweep_seconds: int = 10
    reconcile_seconds: float = 3600.0
    #: Threads per worker process writing vendors concurrently (``worker/sync/fanout.py``).
    push_threads: int = 64

    def enabled(self, vendor: str) -> bool:
        return vendor in self.vendors

    def secret_values(self) -> list[str]:
        values = [s for v in self.vendor.values() for s in v.secret_values()]
        if self.admin_password:
            values.append(self.admin_password)
        # A managed Redis URL carries its password (redis://:password@host).
        redis_password = urlsplit(self.redis_url).password
        if redis_password:
            values.append(unquote(redis_password))
        return values


class EnvReader:
    """Reads variables and collects every problem instead of stopping at the first, so one
    start names all of them. Each problem is one line: the variable, what is wrong, and
    what a valid value looks like."""

    def __init__(self, env: EnvMapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []

    def raw(self, name: str) -> str | None:
        """The value as set (a password keeps its spaces); None when unset or blank."""
        value = self.env.get(name)
        return None if value is None or value.strip() == "" else value

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def number(self, name: str, default: float, *, positive: bool = False) -> float:
        """A number (seconds, counts): 0 or more, or above 0 when ``positive``."""
        raw = self.raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not (value > 0 if positive else value >= 0):  # also refuses NaN
            self.problem(
                f"{name}={raw!r} is not a number {'above 0' if positive else 'of 0 or more'}: "
                f"use e.g. {name}={default:g}"
            )
            return default
        return value

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        raw = self.raw(name)
        if raw is None:
            return default
        raw = raw.strip()
        if not raw.isdigit() or int(raw) < minimum:
            self.problem(
                f"{name}={raw!r} is not a whole number of at least {minimum}: "
                f"use e.g. {name}={default}"
            )
            return default
        return int(raw)

    def rate_limit(self, name: str, default: str) -> str:
        """A rate in the ``limits`` notation (``300/second;10000/minute``)."""
        raw = self.raw(name) or default
        try:
            parse_many(raw)
        except ValueError:
            self.problem(
                f"{name}={raw!r} is not a rate: use COUNT/PERIOD, several joined by ';', "
                f"e.g. {name}='{default}'"
            )
            return default
        return raw

    def choice(
        self, name: str, choices: tuple[str, ...], default: str, *, fold: bool = False
    ) -> str:
        raw = self.raw(name)
        if raw is None:
            return default
        value = raw.strip().upper() if fold else raw.strip()
        if value not in choices:
            self.problem(f"{name}={raw!r} is not one of: {', '.join(choices)}")
            return default
        return value

    def url(self, name: str, default: str) -> str:
        """An http(s) base URL, without a trailing slash."""
        raw = self.raw(name)
        if raw is None:
            return default
        raw = raw.strip()
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.problem(
                f"{name}={raw!r} is not an http(s) URL: use everything before the vendor's "
                f"documented path, e.g. {name}={default}"
            )
            return default
        return raw.rstrip("/")


def _split(raw: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (raw or "").split(",") if part.strip())


def _redis_url(read: EnvReader) -> str:
    """``REDIS_URL``, refused unless redis-py can use it: Celery would otherwise read a URL
    without a scheme (``localhost:6379``) as an AMQP broker and wait for one on port 5672."""
    raw = read.raw("REDIS_URL")
    if raw is None:
        return "redis://127.0.0.1:6379/0"
    try:
        parse_url(raw)
    except ValueError:
        read.problem(
            f"REDIS_URL={raw.split('@')[-1]!r} is not a Redis URL: use "
            "redis://[:password@]host:6379/0, or rediss://... for TLS"
        )
    return raw


def _flat(messages: object, where: str = "") -> list[str]:
    """marshmallow's nested messages as ``where: message`` lines."""
    if isinstance(messages, dict):
        return [line for k, v in messages.items() for line in _flat(v, f"{where}{k}.")]
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return [f"{where.rstrip('.') or 'file'}: {' '.join(messages)}"]
    if isinstance(messages, list):
        return [line for i, v in enumerate(messages) for line in _flat(v, f"{where}{i}.")]
    return [f"{where.rstrip('.') or 'file'}: {messages}"]


def load_mapping(path: str | None) -> Mapping:
    """Read and validate the mapping file; no path means the documented defaults."""
    if not path:
        return Mapping()
    try:
        document = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"OPPSYNC_MAPPING={path!r}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"OPPSYNC_MAPPING={path!r} is not valid TOML: {exc}") from None
    try:
        return parse_mapping(document)
    except ValidationError as exc:
        lines = "; ".join(_flat(exc.messages))
        raise ConfigError(
            f"OPPSYNC_MAPPING={path!r} is invalid: {lines} (mapping.example.toml shows every key)"
        ) from None


def _vendor_settings(read: EnvReader, name: str, default_policy: str) -> VendorSettings:
    prefix = name.upper() + "_"
    env = read.env
    for variable in INTEGER_IDS:
        raw = read.raw(variable)
        if variable.startswith(prefix) and raw is not None and not raw.isdigit():
            read.problem(f"{variable}={raw!r} is not an id: {name} ids are whole numbers, e.g. 18")
    return VendorSettings(
        name=name,
        base_url=read.url(prefix + "BASE_URL", DEFAULT_BASE_URLS[name]),
        webhook_secrets=_split(env.get(prefix + "WEBHOOK_SECRET")),
        poll_seconds=int(read.number(prefix + "POLL_SECONDS", 60 if name in POLLED_VENDORS else 0)),
        delete_policy=read.choice(prefix + "DELETE_POLICY", DELETE_POLICIES, default_policy),
        rate_limit=read.rate_limit(prefix + "RATE_LIMIT", DEFAULT_RATE_LIMITS[name]),
        credentials={k: v for k, v in env.items() if k.startswith(prefix)},
    )


def _vendors(read: EnvReader, *, check: bool) -> tuple[str, ...]:
    vendors = _split(read.env.get("OPPSYNC_VENDORS", ",".join(VENDORS)))
    unknown = [v for v in vendors if v not in VENDORS]
    if unknown:
        read.problem(
            f"OPPSYNC_VENDORS names unknown vendors {', '.join(unknown)}: use a comma list "
            f"of {', '.join(VENDORS)}"
        )
    vendors = tuple(v for v in vendors if v in VENDORS)
    if check:
        for vendor in vendors:
            for variable in REQUIRED[vendor]:
                if not read.raw(variable):
                    read.problem(
                        f"{variable} is required when {vendor} is enabled "
                        f"(OPPSYNC_VENDORS={','.join(vendors)}): set it, or leave {vendor} out"
                    )
    return vendors


def from_env(env: EnvMapping[str, str] | None = None, *, check: bool = True) -> Settings:
    """Build settings; with ``check`` a vendor missing a required variable is an error.
    Raises one ``ConfigError`` listing every problem found."""
    read = EnvReader(os.environ if env is None else env)
    vendors = _vendors(read, check=check)
    default_policy = read.choice("OPPSYNC_DELETE_POLICY", DELETE_POLICIES, "mark-lost")
    if bool(read.raw("OPPSYNC_ADMIN_USER")) != bool(read.raw("OPPSYNC_ADMIN_PASSWORD")):
        read.problem(
            "OPPSYNC_ADMIN_USER and OPPSYNC_ADMIN_PASSWORD go together: set both or neither"
        )
    mapping_path = read.raw("OPPSYNC_MAPPING")
    try:
        mapping = load_mapping(mapping_path)
    except ConfigError as exc:
        read.problem(str(exc))
        mapping = Mapping()
    retry_max_seconds = read.number("OPPSYNC_RETRY_MAX_SECONDS", 600.0, positive=True)
    visibility_timeout = read.integer("OPPSYNC_VISIBILITY_TIMEOUT_SECONDS", 3600, minimum=1)
    if visibility_timeout <= retry_max_seconds:
        read.problem(
            f"OPPSYNC_VISIBILITY_TIMEOUT_SECONDS={visibility_timeout} must be longer than "
            f"OPPSYNC_RETRY_MAX_SECONDS={retry_max_seconds:g}, or Redis redelivers waiting "
            "retries (celery#5935)"
        )
    settings = Settings(
        redis_url=_redis_url(read),
        vendors=vendors,
        vendor={name: _vendor_settings(read, name, default_policy) for name in VENDORS},
        mapping=mapping,
        mapping_path=mapping_path,
        http_timeout_seconds=read.number("OPPSYNC_HTTP_TIMEOUT_SECONDS", 10.0, positive=True),
        retry_base_seconds=read.number("OPPSYNC_RETRY_BASE_SECONDS", 2.0),
        retry_max_seconds=retry_max_seconds,
        retry_horizon_hours=read.number("OPPSYNC_RETRY_HORIZON_HOURS", 72.0),
        create_settle_seconds=read.number("OPPSYNC_CREATE_SETTLE_SECONDS", 60.0),
        max_body_bytes=read.integer("OPPSYNC_MAX_BODY_BYTES", 1_048_576, minimum=1),
        signature_tolerance_seconds=read.integer("OPPSYNC_SIGNATURE_TOLERANCE_SECONDS", 300),
        admin_user=read.raw("OPPSYNC_ADMIN_USER"),
        admin_password=read.raw("OPPSYNC_ADMIN_PASSWORD"),
        ingress_rate_limit=read.rate_limit("OPPSYNC_INGRESS_RATE_LIMIT", "300/second"),
        quota_margin_seconds=read.number("OPPSYNC_QUOTA_MARGIN_SECONDS", 0.25),
        ingress_vendor_rate_limit=read.rate_limit(
            "OPPSYNC_INGRESS_VENDOR_RATE_LIMIT", "3000/second"
        ),
        trusted_proxies=read.integer("OPPSYNC_TRUSTED_PROXIES", 0),
        admin_auth_rate_limit=read.rate_limit("OPPSYNC_ADMIN_AUTH_RATE_LIMIT", "10/minute"),
        log_level=read.choice("OPPSYNC_LOG_LEVEL", LOG_LEVELS, "INFO", fold=True),
        visibility_timeout_seconds=visibility_timeout,
        prefetch=read.integer("OPPSYNC_PREFETCH", 4, minimum=1),
        soft_shutdown_seconds=read.number("OPPSYNC_SOFT_SHUTDOWN_SECONDS", 10.0),
        unacked_sweep_seconds=read.integer("OPPSYNC_UNACKED_SWEEP_SECONDS", 10, minimum=1),
        reconcile_seconds=read.number("OPPSYNC_RECONCILE_SECONDS", 3600.0),
        push_threads=read.integer("OPPSYNC_PUSH_THREADS", 64, minimum=1),
    )
    if read.problems:
        raise ConfigError("; ".join(read.problems), problems=read.problems)
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return from_env()
