"""What the schedule endpoints show of skipped slots, and a trigger built as a submission."""

from __future__ import annotations

import dataclasses
import uuid

from cli.base import ledger
from shared import store
from workers.definitions.diagnostics import ECHO

URL = "/api/v1/schedules"


def test_a_new_schedule_has_no_skip_and_the_fields_are_documented(client, auth):
    headers = auth.key("*")
    body = {"name": "n", "interval": 60000, "task": {"taskDefinitionId": "echo", "input": {}}}
    doc = client.post(URL, json=body, headers=headers).get_json()
    assert (doc["skippedSlots"], doc["lastSkippedAt"]) == (0, None)
    assert (doc["lastSkipReason"], doc["lastSkipMessage"]) == (None, None)
    spec = client.get("/api/v1/openapi.json").get_json()
    schedule = spec["components"]["schemas"]["Schedule"]["properties"]
    assert set(schedule["lastSkipReason"]["enum"]) >= {
        "CATCHUP_WINDOW",
        "OVERLAP",
        "DEFINITION_NOT_FOUND",
        "INPUT_INVALID",
        "TEMPLATE_INVALID",
    }
    assert "lastSkipMessage" in schedule


def test_a_trigger_checks_the_input_against_the_current_schema(client, auth, settings):
    headers = auth.key("*")
    body = {"name": "n", "interval": 60000, "task": {"taskDefinitionId": "echo", "input": {}}}
    doc = client.post(URL, json=body, headers=headers).get_json()
    stricter = dataclasses.replace(
        ECHO, version="9.1.0", input_schema={"type": "object", "required": ["orderId"]}
    )
    try:
        with ledger(settings.database_url) as conn:
            store.publish_definitions(conn, [stricter])
            conn.commit()
        response = client.post(f"{URL}/{doc['id']}/trigger", headers=headers)
        assert response.status_code == 422, response.get_json()
        assert response.get_json()["error"]["details"]["field"].endswith("orderId")
        with ledger(settings.database_url) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM tasks WHERE schedule_id = %s", (uuid.UUID(doc["id"]),)
            )
            assert cur.fetchone() == (0,)
    finally:
        with ledger(settings.database_url) as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM task_definition_versions WHERE id = 'echo'")
            cur.execute("DELETE FROM task_definitions WHERE id = 'echo'")
            store.publish_definitions(conn, [ECHO])
            conn.commit()
