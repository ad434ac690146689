"""Standard Webhooks signing: secrets, the event body, and the three webhook-* headers."""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import json
import math
import secrets
from datetime import UTC, datetime
from typing import Any

import orjson

#: Secret bytes (192 bits): Standard Webhooks asks for 24 to 64.
SECRET_BYTES = 24
SECRET_PREFIX = "whsec_"

# Types json.dumps refuses are refused by orjson too (their `default` is missing): the body
# is then written by json.dumps, which raises as it always did.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
#: Bytes of a number's digits (the value before its exponent).
_DIGITS = frozenset(b"0123456789.")


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
    # orjson when it writes the bytes json.dumps would (a fifth of the time); json.dumps
    # otherwise (tiny floats, integers past 64 bits, non-string keys, unencodable text).
    try:
        fast = orjson.dumps(doc, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        fast = None
    if fast is not None and not _tiny_number(fast):
        return fast
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _tiny_number(text: bytes) -> bool:
    """Whether orjson's `text` may hold a number below 1e-4 in magnitude, which json.dumps
    writes otherwise (1e-05 for 0.00001, 2.5e-07 for 2.5e-7); every other float, integer and
    string comes out the same from both. Text in a string may look like one: a false yes
    costs only the slower writer. (A regular expression took 5 us a body; this, under 1.)"""
    for marker in (b"e-", b"0.0000"):
        at = text.find(marker)
        while at >= 0:
            start = at  # back to the number's first byte: after `:`, `,` or `[`, and a sign
            while start > 0 and text[start - 1] in _DIGITS:
                start -= 1
            if start > 0 and text[start - 1] == 0x2D:  # -
                start -= 1
            if start > 0 and text[start - 1] in b":,[":
                return True
            at = text.find(marker, at + 1)
    return False


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


@functools.lru_cache(maxsize=4096)
def _key(secret: str) -> bytes:
    """The HMAC key of a secret, decoded as standardwebhooks' `Webhook(secret)` does."""
    raw = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    key = base64.b64decode(raw + "==")  # unpadded base64 too (extra padding is ignored)
    if not key:
        raise ValueError("a webhook secret may not be empty")
    return key


def _seconds(sent_at: datetime) -> str:
    if sent_at.tzinfo is None:
        sent_at = sent_at.replace(tzinfo=UTC)  # as standardwebhooks reads a naive time
    return str(math.floor(sent_at.timestamp()))


def signature(event_id: str, sent_at: datetime, body: bytes, keys: list[str]) -> str:
    """The `webhook-signature` value: `v1,<base64>` per secret, space-separated.

    HMAC-SHA256 of `id.timestamp.body`, as standardwebhooks' `Webhook(key).sign` computes it
    (tests verify with that package), without decoding the secret again per delivery.
    """
    return _signature(event_id, _seconds(sent_at), body, keys)


def _signature(event_id: str, seconds: str, body: bytes, keys: list[str]) -> str:
    message = f"{event_id}.{seconds}.".encode() + body
    return " ".join(
        "v1," + binascii.b2a_base64(hmac.digest(_key(k), message, "sha256"), newline=False).decode()
        for k in keys
    )


def headers(event_id: str, sent_at: datetime, body: bytes, keys: list[str]) -> dict[str, str]:
    """The headers of one attempt; `webhook-timestamp` is the attempt's time (a replay guard)."""
    seconds = _seconds(sent_at)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": seconds,
        "webhook-signature": _signature(event_id, seconds, body, keys),
        "content-type": "application/json",
        "user-agent": "taskexec-webhooks/1",
    }
