"""The pre-flight check's own lines: what ``Settings`` does not read (the Procfile's values,
HighLevel's keys) is checked too, without printing a secret."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from worker import preflight

WHOLE = {"OPPSYNC_VENDORS": "siro", "SIRO_API_TOKEN": "t0ken-value"}


def test_preflight_passes_a_whole_configuration() -> None:
    assert preflight.problems(WHOLE) == []


def test_preflight_refuses_procfile_values_the_servers_would_choke_on() -> None:
    found = preflight.problems(
        {**WHOLE, "WEB_CONCURRENCY": "four", "FLOWER_BASIC_AUTH": "admin-without-password"}
    )
    assert [line.split("=")[0].split()[0] for line in found] == [
        "WEB_CONCURRENCY",
        "FLOWER_BASIC_AUTH",
    ]


def test_preflight_refuses_a_highlevel_key_that_is_not_one() -> None:
    # given an RSA key where the Ed25519 one belongs, and a truncated PEM
    ed25519_pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    env = {
        **WHOLE,
        "LEADWAY_WEBHOOK_PUBLIC_KEY": ed25519_pem,
        "LEADWAY_WEBHOOK_RSA_PUBLIC_KEY": ed25519_pem[:60],
    }
    found = preflight.problems(env)
    # then only the RSA one is refused, in one line that does not repeat the key
    assert len(found) == 1 and found[0].startswith("LEADWAY_WEBHOOK_RSA_PUBLIC_KEY is not")
    assert ed25519_pem[30:50] not in found[0]
    swapped = preflight.problems({**WHOLE, "LEADWAY_WEBHOOK_RSA_PUBLIC_KEY": ed25519_pem})
    assert swapped and "an RSA public key" in swapped[0]
