"""A fake AWS SNS topic: the signed HTTP deliveries SNS makes, for vendors that notify by SNS.

Messages follow the SNS HTTP/HTTPS formats
(https://docs.aws.amazon.com/sns/latest/dg/sns-message-and-json-formats.html) and are signed
as https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html describes:
RSA PKCS#1 v1.5 over the canonical string, SHA1 for ``SignatureVersion`` 1 and SHA256 for 2.
The key and its self-signed X.509 certificate are made once per process; the simulator that
owns the topic serves the certificate and the ``SubscribeURL`` (``register``).
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from flask import Flask, Response, request

from worker.vendors.sns import string_to_sign

_material: tuple[rsa.RSAPrivateKey, bytes] | None = None
_material_lock = threading.Lock()


def signing_material() -> tuple[rsa.RSAPrivateKey, bytes]:
    """This process's fake SNS private key and its self-signed certificate (PEM)."""
    global _material
    with _material_lock:
        if _material is None:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
            now = datetime.now(UTC)
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(days=1))
                .not_valid_after(now + timedelta(days=3650))
                .sign(key, hashes.SHA256())
            )
            _material = key, cert.public_bytes(serialization.Encoding.PEM)
        return _material


def _timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FakeSnsTopic:
    """One topic delivering to one HTTP subscriber, as the simulator that owns it.

    ``base_url`` gives the owner's address (the certificate and confirmation endpoints live
    there once ``register`` added them to its app); ``send`` posts a body with headers to the
    subscriber and returns its status.
    """

    def __init__(
        self,
        topic_arn: str,
        *,
        base_url: Callable[[], str],
        send: Callable[[bytes, dict[str, str]], int],
    ) -> None:
        self.topic_arn = topic_arn
        self.token = uuid.uuid4().hex
        self.base_url = base_url
        self._send = send
        #: Set when the subscriber visited the ``SubscribeURL``.
        self.confirmed = False

    def register(self, app: Flask) -> None:
        app.add_url_rule("/sns/cert.pem", "sns_cert", self._certificate)
        app.add_url_rule("/sns/confirm", "sns_confirm", self._confirm)
        app.add_url_rule("/sns/unsubscribe", "sns_unsubscribe", lambda: "ok")

    def _certificate(self) -> Response:
        return Response(signing_material()[1], mimetype="application/x-pem-file")

    def _confirm(self) -> Response:
        if request.args.get("token") != self.token:
            return Response("<Error><Code>InvalidParameter</Code></Error>", 400)
        self.confirmed = True
        return Response("<ConfirmSubscriptionResponse/>", mimetype="text/xml")

    def sign(self, message: dict[str, Any], *, version: int = 1) -> dict[str, Any]:
        cert_url = f"{self.base_url()}/sns/cert.pem"
        message.update(SignatureVersion=str(version), SigningCertURL=cert_url)
        algorithm = hashes.SHA1() if version == 1 else hashes.SHA256()
        key = signing_material()[0]
        raw = key.sign(string_to_sign(message), padding.PKCS1v15(), algorithm)
        message["Signature"] = base64.b64encode(raw).decode()
        return message

    def notification(
        self,
        message: str,
        *,
        subject: str | None,
        signature_version: int = 1,
        tamper: bool = False,
    ) -> dict[str, Any]:
        """A signed ``Notification``; ``tamper`` changes ``Message`` after signing."""
        body: dict[str, Any] = {
            "Type": "Notification",
            "MessageId": str(uuid.uuid4()),
            "TopicArn": self.topic_arn,
            "Message": message,
            "Timestamp": _timestamp(),
            "UnsubscribeURL": f"{self.base_url()}/sns/unsubscribe?SubscriptionArn="
            f"{self.topic_arn}:1",
        }
        if subject is not None:
            body["Subject"] = subject
        signed = self.sign(body, version=signature_version)
        if tamper:
            signed["Message"] = signed["Message"].replace('"SourceType": 0', '"SourceType": 1')
            signed["Message"] += " "
        return signed

    def subscription_confirmation(self, *, signature_version: int = 1) -> dict[str, Any]:
        body = {
            "Type": "SubscriptionConfirmation",
            "MessageId": str(uuid.uuid4()),
            "Token": self.token,
            "TopicArn": self.topic_arn,
            "Message": f"You have chosen to subscribe to the topic {self.topic_arn}.\n"
            "To confirm the subscription, visit the SubscribeURL included in this message.",
            "SubscribeURL": f"{self.base_url()}/sns/confirm?token={self.token}",
            "Timestamp": _timestamp(),
        }
        return self.sign(body, version=signature_version)

    def send(self, message: dict[str, Any]) -> int:
        """POST ``message`` as SNS does: its JSON as ``text/plain``, with SNS's headers."""
        headers = {
            "x-amz-sns-message-type": message["Type"],
            "x-amz-sns-message-id": message["MessageId"],
            "x-amz-sns-topic-arn": message["TopicArn"],
            "Content-Type": "text/plain; charset=UTF-8",
            "User-Agent": "Amazon Simple Notification Service Agent",
        }
        return self._send(json.dumps(message).encode(), headers)
