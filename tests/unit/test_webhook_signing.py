"""Signing and the event body: the same signatures as the standardwebhooks package, the same bytes
as json.dumps (orjson writes them when it can)."""

from __future__ import annotations

import base64
import json
import random
import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from shared.webhook_signing import event_body, headers, new_secret, signature

WHEN = datetime(2026, 12, 6, 19, 0, 0, 123456, tzinfo=UTC)


def reference(event_type: str, timestamp: datetime, data: Any) -> bytes:
    """event_body as it was written before orjson: the bytes every receiver has seen."""
    when = timestamp.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    doc = {"type": event_type, "timestamp": when, "data": data}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize(
    "secret",
    [
        new_secret(),
        new_secret(),
        "whsec_" + base64.b64encode(b"k" * 32).decode().rstrip("="),  # unpadded
        base64.b64encode(b"no prefix at all").decode(),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  # the Standard Webhooks test vector's
    ],
)
def test_signatures_are_the_packages(secret):
    body = event_body("task.completed", WHEN, {"id": "t", "é": "ü"})
    for sent_at in (
        WHEN,
        datetime(2026, 1, 1, 12, 0, 0, 999999),
        WHEN.astimezone(timezone(timedelta(hours=5))),
    ):
        expected = Webhook(secret).sign("evt-1", sent_at, body)
        assert signature("evt-1", sent_at, body, [secret]) == expected
    now = datetime.now(UTC)  # verify() refuses old timestamps
    sent = headers("evt-1", now, body, [new_secret(), secret])
    assert sent["webhook-timestamp"] == str(int(now.timestamp()))
    assert Webhook(secret).verify(body, sent)["data"] == {"id": "t", "é": "ü"}


def test_the_standard_webhooks_test_vector():
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    sent_at = datetime.fromtimestamp(1614265330, UTC)
    assert (
        signature("msg_p5jXN8AQM9LWM0D4loKWxJek", sent_at, body, [secret])
        == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_an_empty_secret_is_refused():
    with pytest.raises(ValueError, match="empty"):
        signature("evt", WHEN, b"{}", ["whsec_"])


def random_float(rng: random.Random) -> float:
    while True:
        value: float = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        if value == value and abs(value) != float("inf"):
            return value


@pytest.mark.parametrize(
    "data",
    [
        {"id": "t", "n": 1, "ok": True, "none": None, "list": [1, "two", 3.5, {"x": []}]},
        {
            "text": "é ü 😀 \u2028 \u2029 \x7f",
            "ctl": "".join(chr(i) for i in range(32)),
            "q": '"\\/',
        },
        {
            "floats": [
                0.1,
                1e-4,
                1e-5,
                2.5e-7,
                -1e-10,
                1e16,
                1.5e16,
                1e22,
                5e-324,
                -0.0,
                1.0,
                123.456,
            ]
        },
        {"big": 2**64, "bigger": -(2**100), "edge": [2**63 - 1, -(2**63), 2**64 - 1]},
        {1: "an integer key", "k": {2.5: "a float key", None: 0, True: 1}},
        {"nested": [[[[{"deep": [1e-7]}]]]], "s": "looks like :0.00001 in a string"},
        "a string",
        [],
        None,
    ],
)
def test_event_bodies_are_byte_for_byte_json_dumps(data):
    assert event_body("task.completed", WHEN, data) == reference("task.completed", WHEN, data)


def test_random_floats_are_written_as_json_dumps_writes_them():
    rng = random.Random(15)
    for _ in range(2000):
        data = {"input": {"x": random_float(rng), "y": [rng.uniform(-1e6, 1e6), rng.random()]}}
        assert event_body("task.failed", WHEN, data) == reference("task.failed", WHEN, data)


def test_what_json_dumps_refuses_is_still_refused():
    with pytest.raises(TypeError):
        event_body("task.completed", WHEN, {"when": WHEN})
    with pytest.raises(UnicodeEncodeError):
        event_body("task.completed", WHEN, {"lone": "\ud800"})
