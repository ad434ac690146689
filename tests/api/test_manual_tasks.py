"""MANUAL tasks: never dispatched, completed through POST /api/v1/tasks/{id}/complete."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis

from shared import db, store
from shared.definitions import TaskDefinition
from shared.status import TaskType
from workers.definitions.manual import APPROVE_ORDER

APPROVE = {"taskDefinitionId": "approve-order", "input": {"orderId": "ORD-123"}}


@pytest.fixture
def headers(auth: Any) -> dict[str, str]:
    return auth.key(["tasks:execute", "tasks:read", "tasks:complete", "tasks:cancel"])


def submit(client: Any, headers: dict[str, str], body: dict[str, Any] = APPROVE) -> str:
    response = client.post("/api/v1/tasks", json=body, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def complete(client: Any, headers: dict[str, str], task_id: str, body: Any) -> Any:
    return client.post(f"/api/v1/tasks/{task_id}/complete", json=body, headers=headers)


def status_of(client: Any, headers: dict[str, str], task_id: str) -> str:
    return client.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json()["status"]


def test_a_manual_task_is_never_sent_to_a_worker(client, headers, backends):
    task_id = submit(client, headers)
    conn = db.connect(backends.database_url)
    with conn:
        task = store.get_task(conn, uuid.UUID(task_id))
        assert (task.type, task.status, task.published_at) == ("MANUAL", "PENDING", None)
        # The sweeper, which publishes anything unpublished, passes it over ...
        due = store.take_due_for_publish(conn, republish_after=0)
        assert uuid.UUID(task_id) not in {d.id for d in due}
        # ... and a worker that got its id anyway could not claim it.
        assert store.claim_task(conn, uuid.UUID(task_id), "host", 1, 30) is None
    conn.close()
    assert [
        k
        for k in redis.Redis.from_url(backends.redis_url).scan_iter()
        if not k.startswith(b"_kombu")
    ] == []
    assert status_of(client, headers, task_id) == "PENDING"


def test_complete_with_valid_output(client, headers):
    task_id = submit(client, headers)
    output = {"approved": True, "approver": "dana", "comment": "fine"}
    response = complete(client, headers, task_id, {"output": output})
    assert response.status_code == 200
    task = response.get_json()
    assert (task["id"], task["status"], task["output"]) == (task_id, "COMPLETED", output)
    assert task["type"] == "MANUAL"
    assert task["executionMetadata"]["endTime"] is not None
    assert task["executionMetadata"]["attempts"] == 0
    assert client.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json()["output"] == output


@pytest.mark.parametrize(
    ("output", "field"),
    [
        ({"approver": "dana"}, "$"),  # `approved` is required
        ({"approved": "yes"}, "$.approved"),
        ([True], "$"),
    ],
)
def test_output_failing_the_output_schema_is_422(client, headers, output, field):
    task_id = submit(client, headers)
    response = complete(client, headers, task_id, {"output": output})
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["details"]["field"].startswith(field)
    assert status_of(client, headers, task_id) == "PENDING"


@pytest.mark.parametrize("body", [{}, {"output": {"approved": True}, "extra": 1}])
def test_malformed_body_is_400(client, headers, body):
    task_id = submit(client, headers)
    response = complete(client, headers, task_id, body)
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["location"] == "body"


def test_an_automated_task_cannot_be_completed(client, headers):
    task_id = submit(client, headers, {"taskDefinitionId": "echo", "input": {}})
    response = complete(client, headers, task_id, {"output": {}})
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "CONFLICT"
    assert response.get_json()["error"]["details"]["type"] == "AUTOMATED"


def test_only_a_pending_task_can_be_completed(client, headers):
    task_id = submit(client, headers)
    assert complete(client, headers, task_id, {"output": {"approved": True}}).status_code == 200
    again = complete(client, headers, task_id, {"output": {"approved": False}})
    assert again.status_code == 409
    assert again.get_json()["error"]["details"] == {"status": "COMPLETED"}

    cancelled = submit(client, headers)
    assert client.post(f"/api/v1/tasks/{cancelled}/cancel", headers=headers).status_code == 200
    response = complete(client, headers, cancelled, {"output": {"approved": True}})
    assert response.status_code == 409
    assert response.get_json()["error"]["details"] == {"status": "CANCELLED"}
    # Refused before the output is even looked at: a bad output is still a 409, not a 422.
    assert complete(client, headers, cancelled, {"output": {}}).status_code == 409


def test_unknown_or_someone_elses_task_is_404(client, headers, auth):
    assert complete(client, headers, str(uuid.uuid4()), {"output": {}}).status_code == 404
    assert complete(client, headers, "not-a-uuid", {"output": {}}).status_code == 404
    task_id = submit(client, headers)
    bob = auth.key(["tasks:complete"], owner="bob")
    response = complete(client, bob, task_id, {"output": {"approved": True}})
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "NOT_FOUND"
    assert status_of(client, headers, task_id) == "PENDING"
    # An admin may complete anyone's.
    admin = auth.key(["tasks:complete", "tasks:admin"], owner="ops")
    assert complete(client, admin, task_id, {"output": {"approved": True}}).status_code == 200


def test_completing_needs_tasks_complete(client, headers, auth):
    task_id = submit(client, headers)
    response = complete(
        client, auth.key(["tasks:read", "tasks:execute"]), task_id, {"output": {"approved": True}}
    )
    assert response.status_code == 403
    assert response.get_json()["error"]["details"] == {"required": "tasks:complete"}


@pytest.fixture
def review(backends: Any) -> Iterator[TaskDefinition]:
    """A manual definition of this test's own (definitions outlive clean_db)."""
    definition = replace(APPROVE_ORDER, id=f"test-review-{uuid.uuid4().hex[:8]}", version="1.0.0")
    yield definition
    conn = db.connect(backends.database_url)
    with conn, conn.cursor() as cur:
        cur.execute("DELETE FROM task_definitions WHERE id = %s", (definition.id,))
        cur.execute("DELETE FROM task_definition_versions WHERE id = %s", (definition.id,))
    conn.close()


def test_output_is_checked_against_the_tasks_own_definition_version(
    client, headers, backends, review
):
    conn = db.connect(backends.database_url)
    with conn:
        store.publish_definitions(conn, [review])
    body = {"taskDefinitionId": review.id, "input": {"orderId": "ORD-1"}}
    old_task = submit(client, headers, body)
    newer = replace(
        review,
        version="2.0.0",
        type=TaskType.MANUAL,
        output_schema={
            "type": "object",
            "required": ["decision"],
            "properties": {"decision": {"enum": ["approve", "reject"]}},
        },
    )
    with conn:
        store.publish_definitions(conn, [newer])
    conn.close()
    new_task = submit(client, headers, body)
    # Each task is held to the outputSchema of the version it was submitted with.
    old_form, new_form = {"output": {"approved": True}}, {"output": {"decision": "reject"}}
    assert complete(client, headers, old_task, new_form).status_code == 422
    assert complete(client, headers, old_task, old_form).status_code == 200
    assert complete(client, headers, new_task, old_form).status_code == 422
    assert complete(client, headers, new_task, new_form).status_code == 200
