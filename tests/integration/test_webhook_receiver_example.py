"""End to end as a user sets it up: the API, a real deliverer, and the receiver of the docs.

A subscription made over the API, a manual task completed over the API, and the receiver
code block of the document (verifying every signature) prints the event; the delivery log
then shows it DELIVERED with the receiver's 204.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_webhooks_receiver import Example
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(base_settings):
    # The receiver listens on 127.0.0.1: allowed only with the development flag.
    return base_settings.with_overrides(webhook_allow_private=True)


def _log(client: Any, headers: dict[str, str], webhook_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/webhooks/{webhook_id}/deliveries", headers=headers)
    assert response.status_code == 200, response.get_json()
    return list(response.get_json()["items"])


def test_the_documented_receiver_gets_verified_events_from_the_deliverer(
    client, auth, processes, tmp_path: Path
):
    headers = auth.key("*")
    place = tmp_path / "receiver"
    place.mkdir()
    # The secret is only known once the subscription exists, and the URL once the receiver
    # listens: subscribe a placeholder, start the receiver with the secret, then point at it.
    made = client.post(
        "/api/v1/webhooks",
        json={"url": "http://127.0.0.1:9/placeholder", "events": ["task.completed"]},
        headers=headers,
    )
    assert made.status_code == 201, made.get_json()
    hook = made.get_json()
    receiver = Example(hook["secret"], place)
    try:
        moved = client.patch(
            f"/api/v1/webhooks/{hook['id']}", json={"url": receiver.url}, headers=headers
        )
        assert moved.status_code == 200, moved.get_json()
        processes._spawn("deliverer", [sys.executable, "-m", "cli", "deliverer"], None)

        task = client.post(
            "/api/v1/tasks",
            json={"taskDefinitionId": "approve-order", "input": {"orderId": "ORD-7"}},
            headers=headers,
        ).get_json()["id"]
        done = client.post(
            f"/api/v1/tasks/{task}/complete",
            json={"output": {"approved": True, "approver": "dana"}},
            headers=headers,
        )
        assert done.status_code == 200, done.get_json()
        wait_for(lambda: len(receiver.lines()) == 1, timeout=30)
        assert receiver.lines() == [f'completed {task} {{"approved": true, "approver": "dana"}}']

        sent = client.post(f"/api/v1/webhooks/{hook['id']}/test", headers=headers)
        assert sent.status_code == 202, sent.get_json()
        wait_for(lambda: len(receiver.lines()) == 2, timeout=30)
        assert receiver.lines()[1].startswith("webhook.test {")
        assert hook["id"] in receiver.lines()[1]

        def both_delivered() -> bool:
            return {d["status"] for d in _log(client, headers, hook["id"])} == {"DELIVERED"}

        wait_for(both_delivered, timeout=30)
        log = _log(client, headers, hook["id"])
        assert [(d["type"], d["taskId"]) for d in log] == [
            ("webhook.test", None),
            ("task.completed", task),
        ]
        assert all(d["responseStatus"] == 204 and d["attempts"] == 1 for d in log), log
        assert all(d["error"] is None and d["nextAttemptAt"] is None for d in log), log

        # Redelivered: the same webhook-id, which the receiver acknowledges but does not
        # handle again.
        again = client.post(
            f"/api/v1/webhooks/{hook['id']}/deliveries/{log[1]['id']}/redeliver", headers=headers
        )
        assert again.status_code == 202, again.get_json()

        def redelivered() -> bool:
            latest = [d for d in _log(client, headers, hook["id"]) if d["id"] == log[1]["id"]]
            return latest[0]["status"] == "DELIVERED" and latest[0]["attempts"] == 2

        wait_for(redelivered, timeout=30)
        assert len(receiver.lines()) == 2
    finally:
        receiver.stop()
