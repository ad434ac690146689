"""`taskexec webhooks …` against a running API: every subcommand, table and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.live_api import gunicorn
from tests.integration.test_cli_client import Service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RECEIVER = "https://hooks.example.com/taskexec"


@pytest.fixture
def live(settings, auth, tmp_path: Path):
    with gunicorn(settings, tmp_path, workers=1) as url:
        yield Service(url, auth.key("*")["X-API-Key"])


def test_webhook_commands(live):
    made = live.cli(
        "webhooks", "create", RECEIVER, "--event", "task.completed", "--event", "task.failed",
        "--definition", "approve-order", "--description", "orders", "-o", "json",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    doc = json.loads(made.stdout)
    assert doc["events"] == ["task.completed", "task.failed"] and doc["secret"].startswith("whsec_")
    assert doc["filter"] == {"taskDefinitionId": "approve-order", "workflowInstanceId": None}
    wid = doc["id"]

    table = live.cli("webhooks", "create", RECEIVER + "/2")
    assert table.returncode == 0, table.stderr
    assert "whsec_" in table.stdout and "not shown again" in table.stderr
    assert "task.completed, task.failed, task.timed_out, task.cancelled" in table.stdout

    listed = live.cli("webhooks", "list")
    assert listed.returncode == 0 and wid in listed.stdout
    assert "completed,failed" in listed.stdout and "taskDefinitionId=approve-order" in listed.stdout
    shown = live.cli("webhooks", "get", wid)
    assert "orders" in shown.stdout and "whsec_" not in shown.stdout

    changed = live.cli(
        "webhooks", "update", wid, "--workflow", "wf-9", "--event", "task.cancelled", "-o", "json"
    )
    assert changed.returncode == 0, changed.stderr
    new = json.loads(changed.stdout)
    assert new["events"] == ["task.cancelled"]
    assert new["filter"] == {"taskDefinitionId": "approve-order", "workflowInstanceId": "wf-9"}
    cleared = live.cli("webhooks", "update", wid, "--definition", "", "--new-url", RECEIVER + "/v2")
    assert cleared.returncode == 0, cleared.stderr
    assert "taskDefinitionId" not in cleared.stdout and "/v2" in cleared.stdout
    cleared = json.loads(live.cli("webhooks", "get", wid, "-o", "json").stdout)
    assert cleared["filter"] == {"taskDefinitionId": None, "workflowInstanceId": "wf-9"}

    off = json.loads(live.cli("webhooks", "disable", wid, "-o", "json").stdout)
    assert off["disabled"] is True and off["disabledReason"]
    assert wid in live.cli("webhooks", "list", "--disabled").stdout
    assert wid not in live.cli("webhooks", "list", "--enabled").stdout
    refused = live.cli("webhooks", "test", wid)
    assert refused.returncode == 1 and "disabled" in refused.stderr
    on = json.loads(live.cli("webhooks", "enable", wid, "-o", "json").stdout)
    assert on["disabled"] is False and on["disabledReason"] is None

    rotated = json.loads(live.cli("webhooks", "rotate-secret", wid, "-o", "json").stdout)
    assert rotated["secret"] != doc["secret"] and rotated["previousSecretExpiresAt"]

    sent = live.cli("webhooks", "test", wid, "-o", "json")
    assert sent.returncode == 0, sent.stderr
    delivery = json.loads(sent.stdout)
    assert delivery["type"] == "webhook.test" and delivery["status"] == "PENDING"
    log = live.cli("webhooks", "deliveries", wid)
    assert log.returncode == 0 and delivery["id"] in log.stdout and "webhook.test" in log.stdout
    failed = live.cli("webhooks", "deliveries", wid, "--status", "FAILED", "-o", "json")
    assert json.loads(failed.stdout)["items"] == []
    again = live.cli("webhooks", "redeliver", wid, delivery["id"])
    assert again.returncode == 0, again.stderr
    assert "PENDING" in again.stdout and delivery["eventId"] in again.stdout
    # By filter: two pending test events, one per request, brought forward.
    assert live.cli("webhooks", "test", wid).returncode == 0
    both = live.cli(
        "webhooks", "redeliver", wid, "--status", "pending", "--batch", "1", "-o", "json"
    )
    assert both.returncode == 0, both.stderr
    assert json.loads(both.stdout) == {"redelivered": 2}
    none = live.cli("webhooks", "redeliver", wid, "--since", "1h", "--until", "1s")
    assert none.returncode == 0 and "redelivered 0 FAILED" in none.stdout, none.stderr
    mixed = live.cli("webhooks", "redeliver", wid, delivery["id"], "--status", "FAILED")
    assert mixed.returncode == 2 and "not both" in mixed.stderr

    assert live.cli("webhooks", "delete", wid).returncode == 0
    gone = live.cli("webhooks", "get", wid)
    assert gone.returncode == 1 and "not found" in gone.stderr
    assert live.cli("webhooks", "delete", wid).returncode == 1

    bad = live.cli("webhooks", "create", "ftp://example.com/x")
    assert bad.returncode == 1 and "http or https" in bad.stderr
    unknown = live.cli("webhooks", "create", RECEIVER, "--event", "task.exploded")
    assert unknown.returncode == 2 and "task.exploded" in unknown.stderr
