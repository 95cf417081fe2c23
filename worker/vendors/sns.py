"""AWS SNS's message format: which keys it signs and the canonical string it signs.

iVvy delivers its webhooks through SNS (docs/vendors.md, iVvy). The verifier (web/sns.py) and
the simulated topic (worker/sandbox/simulators/sns.py) both build the string from here, per
https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html.
"""

from __future__ import annotations

from typing import Any

NOTIFICATION = "Notification"
CONFIRMATIONS = ("SubscriptionConfirmation", "UnsubscribeConfirmation")
NOTIFICATION_KEYS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
CONFIRMATION_KEYS = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)


def string_to_sign(message: dict[str, Any]) -> bytes:
    """The canonical text SNS signed; ``Subject`` only when the notification has one."""
    keys = NOTIFICATION_KEYS if message.get("Type") == NOTIFICATION else CONFIRMATION_KEYS
    text = "".join(
        f"{key}\n{message[key]}\n"
        for key in keys
        if not (key == "Subject" and message.get(key) is None)
    )
    return text.encode()
