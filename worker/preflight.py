"""The pre-flight check: every configuration problem at once, one line each, before a start.

``oppsync run`` and ``oppsync config check`` call it, and each Procfile process runs it first
(``python -m worker.preflight && exec ...``): with a problem it prints every one, naming the
variable and what a valid value looks like, and exits 2, never with a traceback. The checks
are a list of functions (``CHECKS``), each returning its problem lines; add one there.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from worker.errors import ConfigError
from worker.settings import EnvReader, Settings, from_env

#: Exit status of a start refused for its configuration (as a usage error).
EXIT_CONFIG = 2

#: Variables the Procfile's own lines read (not the service): whole numbers, and defaults.
PROCFILE_NUMBERS: dict[str, int] = {
    "PORT": 8000,
    "WEB_CONCURRENCY": 2,
    "OPPSYNC_WORKER_CONCURRENCY": 16,
    "FLOWER_PORT": 5555,
}


def settings_problems(env: Mapping[str, str]) -> list[str]:
    """Everything ``Settings`` refuses: missing, malformed or contradictory variables."""
    try:
        from_env(env)
    except ConfigError as exc:
        return list(exc.problems)
    return []


def procfile_problems(env: Mapping[str, str]) -> list[str]:
    """The Procfile's own variables: numbers where gunicorn and Celery expect numbers, and
    Flower's ``user:password`` pairs."""
    read = EnvReader(env)
    for name, default in PROCFILE_NUMBERS.items():
        read.integer(name, default, minimum=1)
    auth = read.raw("FLOWER_BASIC_AUTH")
    if auth is not None and not all(":" in pair[1:-1] for pair in auth.split(",")):
        read.problem(
            "FLOWER_BASIC_AUTH is not user:password: use e.g. FLOWER_BASIC_AUTH=admin:<password>"
            " (several pairs joined by ',')"
        )
    return read.problems


#: HighLevel's webhook keys, when set instead of the published ones: what each must be.
SIGNING_KEYS: dict[str, tuple[type, str]] = {
    "LEADWAY_WEBHOOK_PUBLIC_KEY": (ed25519.Ed25519PublicKey, "an Ed25519 public key"),
    "LEADWAY_WEBHOOK_RSA_PUBLIC_KEY": (rsa.RSAPublicKey, "an RSA public key"),
}


def signing_key_problems(env: Mapping[str, str]) -> list[str]:
    """Public keys that could verify no delivery (the receiver would fail on each one)."""
    found = []
    for name, (kind, what) in SIGNING_KEYS.items():
        pem = EnvReader(env).raw(name)
        if pem is None:
            continue
        try:
            usable = isinstance(serialization.load_pem_public_key(pem.encode()), kind)
        except ValueError:
            usable = False
        if not usable:
            found.append(
                f"{name} is not {what} in PEM: use the whole -----BEGIN PUBLIC KEY----- "
                "block HighLevel publishes, or leave it unset for HighLevel's own"
            )
    return found


#: Every check, in the order its lines are printed.
CHECKS: tuple[Callable[[Mapping[str, str]], list[str]], ...] = (
    settings_problems,
    procfile_problems,
    signing_key_problems,
)


def problems(env: Mapping[str, str] | None = None) -> list[str]:
    """Every problem of the configuration in ``env`` (the process environment by default)."""
    env = os.environ if env is None else env
    return [line for check in CHECKS for line in check(env)]


def explain(found: list[str]) -> str:
    """The problems as printed: a heading, then one line per problem."""
    heading = (
        f"oppsync cannot start: {len(found)} configuration "
        f"{'problem' if len(found) == 1 else 'problems'} (docs/configuration.md; "
        ".env.example lists every variable):"
    )
    return "\n".join([heading, *(f"  {line}" for line in found)])


def settings_or_exit(build: Callable[[], Settings] = from_env) -> Settings:
    """Settings for a process that starts without the pre-flight (a Celery worker run by
    hand): its problems are printed as the pre-flight prints them, and it exits 2."""
    try:
        return build()
    except ConfigError as exc:
        print(explain(list(exc.problems)), file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CONFIG) from None


def main() -> int:
    """``python -m worker.preflight``: silent and 0 when the configuration is whole."""
    found = problems()
    if found:
        print(explain(found), file=sys.stderr, flush=True)
        return EXIT_CONFIG
    return 0


if __name__ == "__main__":
    sys.exit(main())
