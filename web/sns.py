"""AWS SNS HTTP deliveries verified before anything reads them: signature, certificate host, topic.

Follows https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html: the
string to sign is ``Key\\nValue\\n`` for a fixed list of keys (``Notification``: Message,
MessageId, Subject when present, Timestamp, TopicArn, Type; the two confirmations: Message,
MessageId, SubscribeURL, Timestamp, Token, TopicArn, Type), signed RSA PKCS#1 v1.5 with SHA1
(``SignatureVersion`` 1) or SHA256 (2) by the key in the X.509 certificate at
``SigningCertURL``. That URL and ``SubscribeURL`` are fetched only over https (never plain
http) from a host matching ``IVVY_SNS_CERT_HOSTS`` (default ``sns.*.amazonaws.com``), trusting
the system's CAs or, for tests and private endpoints, ``IVVY_SNS_CA_BUNDLE``.

The topic is checked before anything is fetched: with no ``IVVY_SNS_TOPIC_ARN`` every message
is refused, since anyone with an AWS account can create a topic, subscribe our URL and sign
for it. Certificates are fetched with a short timeout and kept in a bounded LRU cache (SNS
signs with one certificate per region at a time), so unsigned messages naming new URLs can
neither grow memory nor hold a web thread long.
Framework-free: the receiver passes the parsed JSON body and maps ``Rejected`` to its answer.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ssl
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from worker.errors import Rejected
from worker.vendors.deadline import DeadlineTransport, within_deadline
from worker.vendors.sns import (
    CONFIRMATION_KEYS,
    CONFIRMATIONS,
    NOTIFICATION,
    NOTIFICATION_KEYS,
    string_to_sign,
)

DEFAULT_CERT_HOSTS: tuple[str, ...] = ("sns.*.amazonaws.com",)
#: Signing certificates kept (by URL): SNS rotates them rarely, one per region.
CERT_CACHE_SIZE = 16
#: Seconds a certificate or ``SubscribeURL`` fetch may take in all (a web thread waits).
FETCH_TIMEOUT = 3.0
#: A certificate is a few KB; a longer answer is not one.
CERT_MAX_BYTES = 64 * 1024
NO_TOPIC = (
    "IVVY_SNS_TOPIC_ARN is not set, so no SNS message is accepted: set it to the TopicArn "
    "iVvy's subscribeToNotifications answered with (docs/vendors.md, iVvy)."
)
HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}


def _malformed(why: str) -> Rejected:
    return Rejected(f"SNS message is malformed: {why}", status=400, reason="sns_malformed")


def _refused(why: str) -> Rejected:
    return Rejected(f"SNS message refused: {why}", status=401, reason="sns_signature")


def _check_shape(message: Any) -> None:
    if not isinstance(message, dict):
        raise _malformed("not a JSON object")
    kind = message.get("Type")
    if kind != NOTIFICATION and kind not in CONFIRMATIONS:
        raise _malformed(f"unknown Type {kind!r}")
    keys = (
        [k for k in NOTIFICATION_KEYS if k != "Subject"]
        if kind == NOTIFICATION
        else list(CONFIRMATION_KEYS)
    )
    for key in (*keys, "Signature", "SigningCertURL"):
        if not isinstance(message.get(key), str) or not message[key]:
            raise _malformed(f"{key} is missing or not a string")
    if message.get("Subject") is not None and not isinstance(message["Subject"], str):
        raise _malformed("Subject is not a string")
    if str(message.get("SignatureVersion")) not in HASHES:
        raise _malformed(f"unsupported SignatureVersion {message.get('SignatureVersion')!r}")


def _host_matches(host: str, pattern: str) -> bool:
    """``*`` stands for one DNS label (fnmatch's own ``*`` also matches dots). Never an S3
    host: SNS serves its certificates itself, and S3 bucket hosts (``sns.s3.amazonaws.com``,
    ``sns.s3-external-1.amazonaws.com``) can be owned by anyone."""
    labels, wanted = host.split("."), pattern.split(".")
    if any(label == "s3" or label.startswith("s3-") for label in labels):
        return False
    return len(labels) == len(wanted) and all(map(fnmatchcase, labels, wanted))


class SnsVerifier:
    """One per process: it keeps the signing certificates it has fetched, by URL (LRU)."""

    def __init__(
        self,
        *,
        topic_arn: str | None,
        cert_hosts: tuple[str, ...],
        timeout: float = FETCH_TIMEOUT,
        ca_bundle: str | None = None,
    ) -> None:
        #: ``None`` refuses every message: the topic must be named (see ``NO_TOPIC``).
        self.topic_arn = topic_arn
        self.cert_hosts = tuple(p.lower() for p in cert_hosts) or DEFAULT_CERT_HOSTS
        self.timeout = timeout
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
        )
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            transport=DeadlineTransport(verify=verify),
        )
        #: URL -> public key; failures are not cached (a later delivery fetches again).
        self._key = functools.lru_cache(maxsize=CERT_CACHE_SIZE)(self._fetch_key)

    def close(self) -> None:
        self._client.close()

    def allowed_url(self, url: str) -> bool:
        """https (never http) to a host the patterns allow."""
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            parts.port  # noqa: B018 - raises ValueError for a port no URL can have
        except ValueError:
            return False
        if not host or parts.username or parts.password:
            return False
        if not any(_host_matches(host, pattern) for pattern in self.cert_hosts):
            return False
        return parts.scheme == "https"

    def verify(self, message: dict[str, Any]) -> None:
        """Raise ``Rejected`` (400 malformed, 401 refused) unless SNS signed ``message`` for
        our topic; nothing is fetched for a message from another topic."""
        if self.topic_arn is None:
            raise Rejected(NO_TOPIC, status=401, reason="sns_no_topic")
        _check_shape(message)
        if message["TopicArn"] != self.topic_arn:
            raise _refused(f"unexpected TopicArn {message['TopicArn']!r}")
        cert_url = message["SigningCertURL"]
        if not self.allowed_url(cert_url):
            raise _refused(f"SigningCertURL host not allowed: {cert_url!r}")
        try:
            sig = base64.b64decode(message["Signature"], validate=True)
        except (binascii.Error, ValueError):
            raise _refused("Signature is not base64") from None
        algorithm = HASHES[str(message["SignatureVersion"])]()
        try:
            self._key(cert_url).verify(sig, string_to_sign(message), padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            raise _refused("signature does not match") from None

    def confirm_subscription(self, message: dict[str, Any]) -> None:
        """Verify a ``SubscriptionConfirmation`` and visit its ``SubscribeURL``."""
        self.verify(message)
        if message["Type"] != "SubscriptionConfirmation":
            raise _malformed(f"{message['Type']} is not a SubscriptionConfirmation")
        url = message["SubscribeURL"]
        if not self.allowed_url(url):
            raise _refused(f"SubscribeURL host not allowed: {url!r}")
        try:
            status, _ = self._get(url)
        except httpx.HTTPError as exc:
            raise Rejected(
                f"SubscribeURL unreachable ({type(exc).__name__})", status=503, reason="sns_confirm"
            ) from None
        if status != 200:
            raise Rejected(f"SubscribeURL answered {status}", status=503, reason="sns_confirm")

    def _get(self, url: str) -> tuple[int, bytes]:
        """Status and body (at most ``CERT_MAX_BYTES`` of it) of a ``GET``, all of it within
        ``timeout`` seconds: httpx's timeouts bound each read, not a host trickling bytes."""
        body = bytearray()
        with within_deadline(self.timeout), self._client.stream("GET", url) as answer:
            for chunk in answer.iter_bytes():
                body += chunk
                if len(body) > CERT_MAX_BYTES:
                    break
            return answer.status_code, bytes(body[:CERT_MAX_BYTES])

    def _fetch_key(self, url: str) -> rsa.RSAPublicKey:
        try:
            status, content = self._get(url)
        except httpx.HTTPError as exc:
            # Our fetch failed, not the sender: 503 lets SNS deliver again later.
            raise Rejected(
                f"signing certificate unreachable ({type(exc).__name__})",
                status=503,
                reason="sns_cert",
            ) from None
        if status >= 500:
            raise Rejected(f"signing certificate answered {status}", status=503, reason="sns_cert")
        if status != 200:
            raise _refused(f"signing certificate answered {status}")
        try:
            key = x509.load_pem_x509_certificate(content).public_key()
        except ValueError:
            raise _refused("signing certificate is not a PEM X.509 certificate") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise _refused("signing certificate does not hold an RSA key")
        return key
