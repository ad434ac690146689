"""The receiver example of docs/webhooks.md runs: it accepts what taskexec signs, refuses the rest.

The code block is taken from the document itself and run as a process; the requests are
signed by shared/webhook_signing.py, the code the deliverer signs with, using a secret from
`POST /api/v1/webhooks`. (tests/integration/test_webhook_receiver_example.py has the real
deliverer send to it.)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from cli.servers import free_port
from shared.webhook_signing import event_body, headers, new_secret, signing_secrets
from tests.helpers import ROOT, wait_for

DOC = ROOT / "docs" / "webhooks.md"


def receiver_code() -> str:
    """The first python block under the receiver heading of docs/webhooks.md."""
    text = DOC.read_text()
    section = text.split("## A receiver that verifies signatures", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block under the receiver heading"
    return match.group(1)


class Example:
    """The example receiver, running as a process on a free port."""

    def __init__(self, secret: str, tmp: Path) -> None:
        script = tmp / "receiver.py"
        script.write_text(receiver_code())
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self.out = tmp / "receiver.out"
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            env={"TASKEXEC_WEBHOOK_SECRET": secret, "PORT": str(self.port), "PATH": ""},
            stdout=self.out.open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: f"listening on {self.port}" in self.output(), timeout=20)

    def output(self) -> str:
        return self.out.read_text()

    def lines(self) -> list[str]:
        return self.output().splitlines()[1:]  # after "listening on"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def subscription(client: Any, auth: Any) -> dict[str, Any]:
    response = client.post(
        "/api/v1/webhooks", json={"url": "https://hooks.example.com/x"}, headers=auth.key("*")
    )
    assert response.status_code == 201
    return dict(response.get_json())


@pytest.fixture
def example(subscription: dict[str, Any], tmp_path: Path) -> Iterator[Example]:
    receiver = Example(subscription["secret"], tmp_path)
    yield receiver
    receiver.stop()


def send(
    url: str,
    event_id: str,
    body: bytes,
    keys: list[str],
    sent_at: datetime | None = None,
) -> int:
    sent = headers(event_id, sent_at or datetime.now(UTC), body, keys)
    return requests.post(url, data=body, headers=sent, timeout=10).status_code


TASK = {"id": "c019b4f6-0000-4000-8000-000000000001", "status": "COMPLETED", "output": {"t": 1}}


def test_the_example_accepts_a_signed_event_once(example, subscription):
    body = event_body("task.completed", datetime.now(UTC), TASK)
    event_id = str(uuid.uuid4())
    assert send(example.url, event_id, body, [subscription["secret"]]) == 204
    # A retry (same webhook-id, a new timestamp and signature) is acknowledged, not handled.
    later = datetime.now(UTC) + timedelta(seconds=2)
    assert send(example.url, event_id, body, [subscription["secret"]], later) == 204
    failed = event_body("task.failed", datetime.now(UTC), {**TASK, "error": {"code": "X"}})
    assert send(example.url, str(uuid.uuid4()), failed, [subscription["secret"]]) == 204
    wait_for(lambda: len(example.lines()) == 2, timeout=10)
    assert example.lines() == [
        f'completed {TASK["id"]} {{"t": 1}}',
        f'task.failed {TASK["id"]} {{"code": "X"}}',
    ]


def test_the_example_refuses_forged_stale_and_unsigned_requests(example, subscription):
    body = event_body("task.completed", datetime.now(UTC), TASK)
    assert send(example.url, str(uuid.uuid4()), body, [new_secret()]) == 401
    stale = datetime.now(UTC) - timedelta(minutes=10)
    assert send(example.url, str(uuid.uuid4()), body, [subscription["secret"]], stale) == 401
    tampered = body.replace(b'"t":1', b'"t":2')
    sent = headers(str(uuid.uuid4()), datetime.now(UTC), body, [subscription["secret"]])
    assert requests.post(example.url, data=tampered, headers=sent, timeout=10).status_code == 401
    assert requests.post(example.url, data=body, timeout=10).status_code == 401
    time.sleep(0.2)
    assert example.lines() == []


def test_after_a_rotation_both_secrets_verify(client, auth, tmp_path, subscription):
    rotated = client.post(
        f"/api/v1/webhooks/{subscription['id']}/rotate-secret", headers=auth.key("*")
    ).get_json()
    expires = datetime.fromisoformat(rotated["previousSecretExpiresAt"].replace("Z", "+00:00"))
    keys = signing_secrets(rotated["secret"], subscription["secret"], expires, datetime.now(UTC))
    assert keys == [rotated["secret"], subscription["secret"]]
    body = event_body("webhook.test", datetime.now(UTC), {"webhookId": subscription["id"]})
    # A receiver still on the old secret, and one already on the new, both accept it.
    for secret in (subscription["secret"], rotated["secret"]):
        place = tmp_path / ("old" if secret == subscription["secret"] else "new")
        place.mkdir()
        receiver = Example(secret, place)
        try:
            assert send(receiver.url, str(uuid.uuid4()), body, keys) == 204
            wait_for(lambda r=receiver: len(r.lines()) == 1, timeout=10)
            assert json.loads(receiver.lines()[0].split(" ", 1)[1]) == {
                "webhookId": subscription["id"]
            }
        finally:
            receiver.stop()
