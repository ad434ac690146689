"""GET /api/v1/tasks/{id}/logs: paging, bounds, tenancy, and progress on the task itself."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared import db, store
from shared.status import Status


def _submit(client: Any, headers: dict[str, str]) -> str:
    response = client.post(
        "/api/v1/tasks", json={"taskDefinitionId": "echo", "input": {}}, headers=headers
    )
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["id"])


def _write(database_url: str, task_id: str, lines: list[tuple[int, str, str]]) -> None:
    conn = db.connect(database_url)
    with conn:
        for attempt, level, message in lines:
            store.append_log(conn, uuid.UUID(task_id), attempt, level, message)
    conn.close()


def _finish(database_url: str, task_id: str) -> None:
    """Move the task through a real claim and a recorded outcome, as a worker would."""
    conn = db.connect(database_url)
    with conn:
        task = store.claim_task(conn, uuid.UUID(task_id), "test-host", 1, 30)
        assert task is not None
        store.finish_attempt(conn, task.id, task.attempts, Status.COMPLETED, output={})
    conn.close()


def test_lines_come_back_in_order_with_their_attempt_and_level(client, auth, settings):
    headers = auth.key(["tasks:execute", "tasks:read"])
    task_id = _submit(client, headers)
    _write(
        settings.database_url,
        task_id,
        [(1, "INFO", "starting"), (1, "WARNING", "slow gateway"), (2, "INFO", "retried")],
    )
    response = client.get(f"/api/v1/tasks/{task_id}/logs", headers=headers)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert [(i["attempt"], i["level"], i["message"]) for i in body["items"]] == [
        (1, "INFO", "starting"),
        (1, "WARNING", "slow gateway"),
        (2, "INFO", "retried"),
    ]
    seqs = [item["seq"] for item in body["items"]]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert all(item["createdAt"].endswith("Z") for item in body["items"])
    # Still PENDING: more lines may come, so the cursor stays usable for polling.
    assert body["nextAfter"] == seqs[-1]


def test_paging_with_after_and_limit_walks_every_line_once(client, auth, settings):
    headers = auth.key("*")
    task_id = _submit(client, headers)
    _write(settings.database_url, task_id, [(1, "INFO", f"line {n}") for n in range(7)])
    seen: list[str] = []
    after = 0
    for _ in range(10):
        body = client.get(
            f"/api/v1/tasks/{task_id}/logs?after={after}&limit=3", headers=headers
        ).get_json()
        seen += [item["message"] for item in body["items"]]
        if not body["items"]:
            break
        after = body["nextAfter"]
    assert seen == [f"line {n}" for n in range(7)]


def test_a_finished_task_ends_the_paging_with_a_null_cursor(client, auth, settings):
    headers = auth.key("*")
    task_id = _submit(client, headers)
    _write(settings.database_url, task_id, [(1, "INFO", "a"), (1, "INFO", "b"), (1, "INFO", "c")])
    _finish(settings.database_url, task_id)
    full_page = client.get(f"/api/v1/tasks/{task_id}/logs?limit=3", headers=headers).get_json()
    assert len(full_page["items"]) == 3
    assert full_page["nextAfter"] == full_page["items"][-1]["seq"]  # a full page: maybe more
    rest = client.get(
        f"/api/v1/tasks/{task_id}/logs?after={full_page['nextAfter']}", headers=headers
    ).get_json()
    assert rest == {"items": [], "nextAfter": None}
    short = client.get(f"/api/v1/tasks/{task_id}/logs?limit=10", headers=headers).get_json()
    assert len(short["items"]) == 3 and short["nextAfter"] is None


def test_default_limit_is_100(client, auth, settings):
    headers = auth.key("*")
    task_id = _submit(client, headers)
    _write(settings.database_url, task_id, [(1, "INFO", f"{n}") for n in range(105)])
    body = client.get(f"/api/v1/tasks/{task_id}/logs", headers=headers).get_json()
    assert len(body["items"]) == 100
    assert body["items"][-1]["message"] == "99"


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "after=-1", "limit=x", "after=y"])
def test_bad_paging_is_a_validation_error(client, auth, query):
    headers = auth.key("*")
    task_id = _submit(client, headers)
    response = client.get(f"/api/v1/tasks/{task_id}/logs?{query}", headers=headers)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "VALIDATION_ERROR"


def test_limit_1000_is_allowed(client, auth):
    headers = auth.key("*")
    task_id = _submit(client, headers)
    response = client.get(f"/api/v1/tasks/{task_id}/logs?limit=1000", headers=headers)
    assert response.status_code == 200


def test_another_tenants_task_is_not_found_but_an_admin_sees_it(client, auth, settings):
    alice = auth.key("*", owner="alice")
    task_id = _submit(client, alice)
    _write(settings.database_url, task_id, [(1, "INFO", "private")])
    bob = auth.key(["tasks:read"], owner="bob")
    response = client.get(f"/api/v1/tasks/{task_id}/logs", headers=bob)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "NOT_FOUND"
    admin = auth.key(["tasks:read", "tasks:admin"], owner="root")
    body = client.get(f"/api/v1/tasks/{task_id}/logs", headers=admin).get_json()
    assert [item["message"] for item in body["items"]] == ["private"]


def test_permission_and_authentication_are_required(client, auth):
    owner = auth.key("*")
    task_id = _submit(client, owner)
    assert client.get(f"/api/v1/tasks/{task_id}/logs").status_code == 401
    no_read = auth.key(["tasks:execute"])
    response = client.get(f"/api/v1/tasks/{task_id}/logs", headers=no_read)
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "FORBIDDEN"


@pytest.mark.parametrize("task_id", ["not-a-uuid", str(uuid.uuid4())])
def test_unknown_task_is_not_found(client, auth, task_id):
    response = client.get(f"/api/v1/tasks/{task_id}/logs", headers=auth.key("*"))
    assert response.status_code == 404


def test_progress_shows_on_the_task(client, auth, settings):
    headers = auth.key("*")
    task_id = _submit(client, headers)
    conn = db.connect(settings.database_url)
    with conn:
        task = store.claim_task(conn, uuid.UUID(task_id), "test-host", 1, 30)
        assert task is not None
        store.set_progress(conn, task.id, task.attempts, {"fraction": 0.4, "message": "2 of 5"})
    conn.close()
    body = client.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json()
    assert body["progress"] == {"fraction": 0.4, "message": "2 of 5"}
