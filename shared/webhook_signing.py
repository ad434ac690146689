"""Standard Webhooks signing: secrets, the event body, and the three webhook-* headers."""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook

#: Secret bytes (192 bits): Standard Webhooks asks for 24 to 64.
SECRET_BYTES = 24


def new_secret() -> str:
    """A fresh signing secret, `whsec_` and the base64 of random bytes (shown to its owner once)."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def event_body(event_type: str, timestamp: datetime, data: Any) -> bytes:
    """The JSON body of a delivery: `{"type", "timestamp", "data"}`, compact UTF-8.

    `timestamp` is when the event happened (the status change), RFC 3339 UTC to the
    millisecond; the body is the same bytes on every attempt.
    """
    when = timestamp.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    doc = {"type": event_type, "timestamp": when, "data": data}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def signing_secrets(
    secret: str,
    previous_secret: str | None,
    previous_expires_at: datetime | None,
    now: datetime,
) -> list[str]:
    """The secrets that sign now: the current one, and a rotated-out one until it expires."""
    found = [secret]
    if previous_secret and previous_expires_at is not None and previous_expires_at > now:
        found.append(previous_secret)
    return found


def signature(event_id: str, sent_at: datetime, body: bytes, keys: list[str]) -> str:
    """The `webhook-signature` value: `v1,<base64>` per secret, space-separated."""
    return " ".join(Webhook(key).sign(event_id, sent_at, body) for key in keys)


def headers(event_id: str, sent_at: datetime, body: bytes, keys: list[str]) -> dict[str, str]:
    """The headers of one attempt; `webhook-timestamp` is the attempt's time (a replay guard)."""
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": signature(event_id, sent_at, body, keys),
        "content-type": "application/json",
        "user-agent": "taskexec-webhooks/1",
    }
