"""The one place configuration is read: a frozen ``Settings`` built from the environment.

Twelve-factor: ``OPPSYNC_*`` for the service, ``<VENDOR>_*`` per vendor, ``REDIS_URL`` for the
broker and state. A vendor that is enabled without what it needs stops startup with a
``ConfigError`` naming the missing variable. The README's configuration table mirrors this.
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

from schemas.mapping import VENDORS, Mapping, parse_mapping
from worker.errors import ConfigError

DEFAULT_BASE_URLS: dict[str, str] = {
    "siro": "https://functions.siro.ai/api-externalApi",
    "leadway": "https://services.leadconnectorhq.com",
    "ivvy": "https://api.ap-southeast-2.ivvy.com",
    "salescaling": "https://api.salescaling.com",
    "icloudready": "https://api.icloud-ready.com",
}

#: Documented quotas, in the ``limits`` library's notation (issue 3; VENDORS.md §1.6 §2.6 §5.6).
DEFAULT_RATE_LIMITS: dict[str, str] = {
    "siro": "1000/minute",
    "leadway": "100/10 seconds;200000/day",
    "ivvy": "600/minute",
    "salescaling": "600/minute",
    "icloudready": "480/minute;4800/hour",
}

#: Variables each vendor cannot work without.
REQUIRED: dict[str, tuple[str, ...]] = {
    "siro": ("SIRO_API_TOKEN",),
    "leadway": ("LEADWAY_API_TOKEN", "LEADWAY_LOCATION_ID", "LEADWAY_PIPELINE_ID"),
    "ivvy": ("IVVY_API_KEY", "IVVY_API_SECRET", "IVVY_VENUE_ID", "IVVY_TYPE_ID", "IVVY_SOURCE_ID"),
    "salescaling": ("SALESCALING_API_KEY",),
    "icloudready": ("ICLOUDREADY_EMAIL", "ICLOUDREADY_PASSWORD"),
}

POLLED_VENDORS: tuple[str, ...] = ("siro", "salescaling", "icloudready")
DELETE_POLICIES: tuple[str, ...] = ("mark-lost", "delete", "ignore")


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


def _number(env: EnvMapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _rate_limit(env: EnvMapping[str, str], name: str, default: str) -> str:
    """A rate in the ``limits`` notation (``300/second;10000/minute``), checked at startup."""
    raw = env.get(name) or default
    try:
        parse_many(raw)
    except ValueError:
        raise ConfigError(f"{name} is not a rate like '300/second', got {raw!r}") from None
    return raw


def _split(raw: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (raw or "").split(",") if part.strip())


def load_mapping(path: str | None) -> Mapping:
    """Read and validate the mapping file; no path means the documented defaults."""
    if not path:
        return Mapping()
    try:
        document = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"OPPSYNC_MAPPING names {path}, which does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"mapping file {path} is not valid TOML: {exc}") from None
    try:
        return parse_mapping(document)
    except ValidationError as exc:
        raise ConfigError(f"mapping file {path} is invalid: {exc.messages}") from None


def _vendor_settings(env: EnvMapping[str, str], name: str, default_policy: str) -> VendorSettings:
    prefix = name.upper() + "_"
    policy = env.get(prefix + "DELETE_POLICY") or default_policy
    if policy not in DELETE_POLICIES:
        raise ConfigError(f"{prefix}DELETE_POLICY must be one of {', '.join(DELETE_POLICIES)}")
    return VendorSettings(
        name=name,
        base_url=(env.get(prefix + "BASE_URL") or DEFAULT_BASE_URLS[name]).rstrip("/"),
        webhook_secrets=_split(env.get(prefix + "WEBHOOK_SECRET")),
        poll_seconds=int(
            _number(env, prefix + "POLL_SECONDS", 60 if name in POLLED_VENDORS else 0)
        ),
        delete_policy=policy,
        rate_limit=env.get(prefix + "RATE_LIMIT") or DEFAULT_RATE_LIMITS[name],
        credentials={k: v for k, v in env.items() if k.startswith(prefix)},
    )


def from_env(env: EnvMapping[str, str] | None = None, *, check: bool = True) -> Settings:
    """Build settings; with ``check`` a vendor missing a required variable is an error."""
    env = os.environ if env is None else env
    vendors = _split(env.get("OPPSYNC_VENDORS", ",".join(VENDORS)))
    unknown = [v for v in vendors if v not in VENDORS]
    if unknown:
        raise ConfigError(
            f"OPPSYNC_VENDORS names unknown vendors {unknown}; known: {', '.join(VENDORS)}"
        )
    default_policy = env.get("OPPSYNC_DELETE_POLICY") or "mark-lost"
    if default_policy not in DELETE_POLICIES:
        raise ConfigError(f"OPPSYNC_DELETE_POLICY must be one of {', '.join(DELETE_POLICIES)}")
    if check:
        for vendor in vendors:
            for variable in REQUIRED[vendor]:
                if not env.get(variable):
                    raise ConfigError(
                        f"{variable} is required when {vendor} is enabled "
                        f"(OPPSYNC_VENDORS={','.join(vendors)})"
                    )
    if bool(env.get("OPPSYNC_ADMIN_USER")) != bool(env.get("OPPSYNC_ADMIN_PASSWORD")):
        raise ConfigError(
            "OPPSYNC_ADMIN_USER and OPPSYNC_ADMIN_PASSWORD go together: set both or neither"
        )
    mapping_path = env.get("OPPSYNC_MAPPING") or None
    return Settings(
        redis_url=env.get("REDIS_URL") or "redis://127.0.0.1:6379/0",
        vendors=vendors,
        vendor={name: _vendor_settings(env, name, default_policy) for name in VENDORS},
        mapping=load_mapping(mapping_path),
        mapping_path=mapping_path,
        http_timeout_seconds=_number(env, "OPPSYNC_HTTP_TIMEOUT_SECONDS", 10.0),
        retry_base_seconds=_number(env, "OPPSYNC_RETRY_BASE_SECONDS", 2.0),
        retry_max_seconds=_number(env, "OPPSYNC_RETRY_MAX_SECONDS", 600.0),
        retry_horizon_hours=_number(env, "OPPSYNC_RETRY_HORIZON_HOURS", 72.0),
        create_settle_seconds=_number(env, "OPPSYNC_CREATE_SETTLE_SECONDS", 60.0),
        max_body_bytes=int(_number(env, "OPPSYNC_MAX_BODY_BYTES", 1_048_576)),
        signature_tolerance_seconds=int(_number(env, "OPPSYNC_SIGNATURE_TOLERANCE_SECONDS", 300)),
        admin_user=env.get("OPPSYNC_ADMIN_USER") or None,
        admin_password=env.get("OPPSYNC_ADMIN_PASSWORD") or None,
        ingress_rate_limit=_rate_limit(env, "OPPSYNC_INGRESS_RATE_LIMIT", "300/second"),
        quota_margin_seconds=_number(env, "OPPSYNC_QUOTA_MARGIN_SECONDS", 0.25),
        ingress_vendor_rate_limit=_rate_limit(
            env, "OPPSYNC_INGRESS_VENDOR_RATE_LIMIT", "3000/second"
        ),
        trusted_proxies=int(_number(env, "OPPSYNC_TRUSTED_PROXIES", 0)),
        admin_auth_rate_limit=_rate_limit(env, "OPPSYNC_ADMIN_AUTH_RATE_LIMIT", "10/minute"),
        log_level=env.get("OPPSYNC_LOG_LEVEL") or "INFO",
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return from_env()
