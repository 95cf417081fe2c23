"""How the Leadway simulator sends HighLevel's native webhooks: payloads, signing, delivery.

VENDORS.md §2.7: ``emit`` posts HighLevel's native payload signed ``X-GHL-Signature`` (Ed25519
over the raw body) or, legacy, ``X-WH-Signature`` (RSA-SHA256); with ``auto_emit`` every change
(API writes and ``edit``) is echoed that way, as HighLevel echoes our own writes back.
"""

from __future__ import annotations

import base64
import functools
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from worker.sandbox.simulators.base import Simulator

#: The event for a change of exactly this one field; any other change is OpportunityUpdate.
FIELD_EVENTS = {
    "status": "OpportunityStatusUpdate",
    "pipelineStageId": "OpportunityStageUpdate",
    "monetaryValue": "OpportunityMonetaryValueUpdate",
    "assignedTo": "OpportunityAssignedToUpdate",
}
WRITABLE = ("name", "status", "pipelineId", "pipelineStageId", "monetaryValue", "assignedTo")
#: The native webhook's fields (VENDORS.md §2.7), besides type, dateAdded and the envelope.
EVENT_FIELDS = (*WRITABLE, "locationId", "id", "contactId", "source")


@functools.cache
def signing_keys() -> tuple[ed25519.Ed25519PrivateKey, rsa.RSAPrivateKey]:
    """One Ed25519 and one 2048-bit RSA key per process (RSA generation is slow)."""
    return ed25519.Ed25519PrivateKey.generate(), rsa.generate_private_key(65537, 2048)


def _pem(key: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey) -> str:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(serialization.Encoding.PEM, spki).decode()


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class LeadwayWebhooks(Simulator):
    """The native webhooks ``LeadwaySimulator`` sends about its records."""

    tombstones: dict[str, dict[str, Any]]  # set by LeadwaySimulator
    auto_emit: bool

    @property
    def public_key_pem(self) -> str:
        return _pem(signing_keys()[0])

    @property
    def rsa_public_key_pem(self) -> str:
        return _pem(signing_keys()[1])

    def native_payload(
        self, vendor_id: str, event_type: str, *, timestamp: datetime | None = None,
        webhook_id: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """HighLevel's webhook body for the record as it is now (VENDORS.md §2.7)."""
        with self.state_lock:
            record = self.records.get(vendor_id) or self.tombstones[vendor_id]
            return {"type": event_type, **{k: record.get(k) for k in EVENT_FIELDS},
                    "dateAdded": record["createdAt"],
                    "timestamp": iso(timestamp or datetime.now(UTC)),
                    "webhookId": webhook_id or str(uuid.uuid4())}  # fmt: skip

    @staticmethod
    def sign_native(body: bytes, *, legacy: bool = False) -> dict[str, str]:
        """``X-GHL-Signature`` (Ed25519), or legacy ``X-WH-Signature`` (RSA-SHA256), base64."""
        ed_key, rsa_key = signing_keys()
        if legacy:
            header, signature = "X-WH-Signature", rsa_key.sign(body, padding.PKCS1v15(),
                                                               hashes.SHA256())  # fmt: skip
        else:
            header, signature = "X-GHL-Signature", ed_key.sign(body)
        return {header: base64.b64encode(signature).decode(), "Content-Type": "application/json"}

    def deliver(
        self, payload: dict[str, Any], *, legacy: bool = False, tamper: bool = False
    ) -> int:
        """Sign and post one native payload now; returns the receiver's status code."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = self.sign_native(body, legacy=legacy)
        if tamper:  # signed, then changed in transit
            body = json.dumps({**payload, "name": f"{payload.get('name')}!"}).encode()
        return self.send_webhook(body, headers)

    def emit(
        self, vendor_id: str, event_type: str, *, legacy: bool = False, tamper: bool = False,
        timestamp: datetime | None = None, webhook_id: str | None = None,
    ) -> int:  # fmt: skip
        """Send one signed native webhook about the record now; the receiver's status code."""
        payload = self.native_payload(vendor_id, event_type, timestamp=timestamp,
                                      webhook_id=webhook_id)  # fmt: skip
        return self.deliver(payload, legacy=legacy, tamper=tamper)

    def emit_standard(self, vendor_id: str, thin: bool = False) -> int:
        """The record (or ``{"id": …}``) as a Standard Webhooks delivery, as a Leadway
        workflow's webhook action would post it."""
        with self.state_lock:
            payload = {"id": vendor_id} if thin else self.shown(self.records[vendor_id])
        return self.send_standard_webhook(payload)

    def _echo(self, vendor_id: str, event_type: str) -> None:
        if not (self.auto_emit and self.webhook_url):
            return
        payload = self.native_payload(vendor_id, event_type)  # a snapshot taken at the change

        def send() -> None:
            try:
                self.deliver(payload)
            except (httpx.HTTPError, RuntimeError):  # receiver down, or simulator stopped
                self.webhook_answers.append(0)

        self.emit_async(send)
