"""Webhook events in OpenAI's shape, signed as Standard Webhooks says (pure functions).

An event body is ``{"id": "evt_...", "object": "event", "type": ..., "created_at": <unix s>,
"data": {"id": <the response or batch id>}}`` (the SDK's ``types/webhooks/*``). Each attempt
carries three headers: ``webhook-id`` (the event id: the same on every retry, so receivers
can drop duplicates), ``webhook-timestamp`` (this attempt's time, unix seconds) and
``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}``
keyed with the base64-decoded part of a ``whsec_`` secret; while a rotated secret's grace
period lasts, one such signature per secret, separated by spaces (the SDK's
``webhooks.unwrap`` / ``verify_signature`` accepts any that matches).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # Standard Webhooks: 24 to 64 random bytes


def new_secret() -> str:
    """A fresh signing secret, ``whsec_`` and base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def event_body(event_id: str, event_type: str, created_at: int, object_id: str) -> bytes:
    """The JSON body of one event (the same bytes on every attempt)."""
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "type": event_type,
            "created_at": created_at,
            "data": {"id": object_id},
        },
        separators=(",", ":"),
    ).encode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``{id}.{timestamp}.{body}`` with ``secret``."""
    mac = hmac.new(_key(secret), f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def signed_headers(
    secrets_: Iterable[str], webhook_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The headers of one attempt, signed with every secret in ``secrets_`` (the current one
    first, then a rotated one still in its grace period)."""
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, webhook_id, timestamp, body) for s in secrets_),
    }
