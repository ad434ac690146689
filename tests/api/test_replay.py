"""Replay: POST /api/v1/tasks/{id}/retry and POST /api/v1/tasks/retry (issue 17, part 2)."""

from __future__ import annotations

from typing import Any

import pytest

from cli.base import ledger
from tests.helpers import get, submit

TASKS = "/api/v1/tasks"
PERMS = ["tasks:execute", "tasks:read", "tasks:cancel", "tasks:list"]


@pytest.fixture
def alice(auth: Any) -> dict[str, str]:
    return auth.key(PERMS, owner="alice")


@pytest.fixture
def ended(backends: Any) -> Any:
    """End a task in a status of our choosing, as a worker or the sweeper would."""

    def end(task_id: str, status: str) -> None:
        with ledger(backends.database_url) as conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE tasks SET status = %s, end_time = now(), published_at = now()"
                " WHERE id = %s",
                (status, task_id),
            )

    return end


def retry(client: Any, headers: dict[str, str], task_id: str, body: Any = None) -> Any:
    kwargs = {} if body is None else {"json": body}
    return client.post(f"{TASKS}/{task_id}/retry", headers=headers, **kwargs)


@pytest.mark.parametrize("status", ["FAILED", "TIMED_OUT", "CANCELLED"])
def test_a_task_that_ended_without_its_work_is_replayed(client, alice, ended, status):
    original = submit(client, alice, "echo", {"n": 1}, workflowInstanceId="wf-7", priority="HIGH")
    ended(original, status)
    response = retry(client, alice, original)
    assert response.status_code == 201, response.get_json()
    doc = response.get_json()
    assert doc["status"] == "PENDING" and doc["retryOf"] == original and doc["createdAt"]
    assert response.headers["Location"].endswith(f"{TASKS}/{doc['id']}")
    new = get(client, alice, doc["id"])
    assert new["retryOf"] == original and new["retriedBy"] == []
    assert (new["taskDefinitionId"], new["workflowInstanceId"]) == ("echo", "wf-7")
    assert (new["input"], new["priority"]) == ({"n": 1}, "HIGH")
    old = get(client, alice, original)
    assert old["retriedBy"] == [doc["id"]] and old["retryOf"] is None
    assert old["status"] == status  # the original stays as it ended


def test_a_body_replaces_input_priority_and_execution_config(client, alice, ended):
    original = submit(client, alice, "sleep", {"seconds": 5})
    ended(original, "FAILED")
    body = {
        "input": {"seconds": 1},
        "priority": "LOW",
        "executionConfig": {"timeout": 5000, "retryPolicy": {"maxRetries": 0}},
    }
    response = retry(client, alice, original, body)
    assert response.status_code == 201, response.get_json()
    new = get(client, alice, response.get_json()["id"])
    assert (new["input"], new["priority"]) == ({"seconds": 1}, "LOW")
    assert new["executionConfig"]["timeout"] == 5000
    assert new["executionConfig"]["retryPolicy"]["maxRetries"] == 0


def test_without_a_body_the_original_execution_config_is_kept(client, alice, ended):
    config = {"timeout": 7000, "retryPolicy": {"maxRetries": 5, "retryInterval": 10}}
    original = submit(client, alice, "echo", {}, executionConfig=config)
    ended(original, "TIMED_OUT")
    new_id = retry(client, alice, original).get_json()["id"]
    assert (
        get(client, alice, new_id)["executionConfig"]
        == get(client, alice, original)["executionConfig"]
    )


@pytest.mark.parametrize("status", ["PENDING", "RUNNING", "RETRYING", "COMPLETED"])
def test_a_task_that_did_not_end_without_its_work_is_a_conflict(client, alice, ended, status):
    original = submit(client, alice, "echo", {})
    ended(original, status)
    response = retry(client, alice, original)
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert error["code"] == "CONFLICT" and error["details"]["status"] == status
    assert get(client, alice, original)["retriedBy"] == []


def test_input_failing_the_current_schema_is_422(client, alice, ended):
    original = submit(client, alice, "sleep", {"seconds": 1})
    ended(original, "FAILED")
    response = retry(client, alice, original, {"input": {"seconds": "soon"}})
    assert response.status_code == 422
    assert response.get_json()["error"]["details"]["field"] == "$.seconds"
    assert retry(client, alice, original, {"input": {}}).status_code == 422  # seconds required
    assert retry(client, alice, original, {"colour": "red"}).status_code == 400  # unknown field


def test_another_owners_task_is_404_and_an_admin_replays_it_for_its_owner(
    client, alice, auth, ended
):
    original = submit(client, alice, "echo", {})
    ended(original, "FAILED")
    bob = auth.key(PERMS, owner="bob")
    assert retry(client, bob, original).status_code == 404
    assert retry(client, bob, "not-a-uuid").status_code == 404
    admin = auth.key([*PERMS, "tasks:admin"], owner="ops")
    response = retry(client, admin, original)
    assert response.status_code == 201
    new_id = response.get_json()["id"]
    assert get(client, alice, new_id)["retryOf"] == original  # alice's, not ops'


def test_retry_needs_tasks_execute(client, alice, auth, ended):
    original = submit(client, alice, "echo", {})
    ended(original, "FAILED")
    reader = auth.key(["tasks:read"], owner="alice")
    assert retry(client, reader, original).status_code == 403


def test_a_retry_that_fails_is_replayed_in_turn(client, alice, ended):
    original = submit(client, alice, "echo", {})
    ended(original, "FAILED")
    first = retry(client, alice, original).get_json()["id"]
    ended(first, "FAILED")
    second = retry(client, alice, first).get_json()["id"]
    assert get(client, alice, first)["retriedBy"] == [second]
    third = retry(client, alice, original).get_json()["id"]  # retried again by hand
    assert get(client, alice, original)["retriedBy"] == [first, third]


# ------------------------------------------------------------------ many at once


def bulk(client: Any, headers: dict[str, str], body: Any) -> Any:
    return client.post(f"{TASKS}/retry", json=body, headers=headers)


def test_bulk_by_ids_gives_one_outcome_per_task_in_order(client, alice, auth, ended):
    failed = submit(client, alice, "echo", {})
    ended(failed, "FAILED")
    running = submit(client, alice, "echo", {})
    ended(running, "RUNNING")
    bobs = submit(client, auth.key(PERMS, owner="bob"), "echo", {})
    ended(bobs, "FAILED")
    response = bulk(client, alice, {"ids": [failed, running, bobs, "nope", failed]})
    assert response.status_code == 201
    items = response.get_json()["items"]
    assert [item["retryOf"] for item in items] == [failed, running, bobs, "nope"]
    assert items[0]["status"] == "PENDING" and "error" not in items[0]
    assert [item.get("error", {}).get("code") for item in items[1:]] == [
        "CONFLICT",
        "NOT_FOUND",
        "NOT_FOUND",
    ]
    assert get(client, alice, failed)["retriedBy"] == [items[0]["id"]]


def test_bulk_by_filter_replays_matches_not_yet_retried_up_to_the_limit(client, alice, ended):
    failed = [submit(client, alice, "echo", {"i": i}) for i in range(3)]
    for task_id in failed:
        ended(task_id, "FAILED")
    timed_out = submit(client, alice, "echo", {})
    ended(timed_out, "TIMED_OUT")
    other = submit(client, alice, "sleep", {"seconds": 1})
    ended(other, "FAILED")
    done = submit(client, alice, "echo", {})
    ended(done, "COMPLETED")
    body = {"filter": {"status": "FAILED", "taskDefinitionId": "echo"}, "limit": 2}
    first = bulk(client, alice, body).get_json()["items"]
    assert [item["retryOf"] for item in first] == [failed[2], failed[1]]  # newest first
    second = bulk(client, alice, body).get_json()["items"]
    assert [item["retryOf"] for item in second] == [failed[0]]  # the rest, once each
    assert bulk(client, alice, body).get_json()["items"] == []
    # No status: FAILED, TIMED_OUT and CANCELLED; never another owner's, never COMPLETED.
    rest = bulk(client, alice, {"filter": {}}).get_json()["items"]
    assert sorted(item["retryOf"] for item in rest) == sorted([timed_out, other])


def test_bulk_filter_by_workflow_and_creation_time(client, alice, ended):
    in_wf = submit(client, alice, "echo", {}, workflowInstanceId="wf-r")
    elsewhere = submit(client, alice, "echo", {}, workflowInstanceId="wf-other")
    for task_id in (in_wf, elsewhere):
        ended(task_id, "CANCELLED")
    created = get(client, alice, in_wf)["createdAt"]
    flt = {"workflowInstanceId": "wf-r", "createdBefore": created}
    assert bulk(client, alice, {"filter": flt}).get_json()["items"] == []
    flt = {"workflowInstanceId": "wf-r", "createdAfter": created}
    items = bulk(client, alice, {"filter": flt}).get_json()["items"]
    assert [item["retryOf"] for item in items] == [in_wf]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"ids": ["a"], "filter": {}},
        {"ids": ["a"], "limit": 5},
        {"ids": []},
        {"ids": ["a"] * 1001},
        {"filter": {}, "limit": 1001},
        {"filter": {}, "limit": 0},
        {"filter": {"status": "COMPLETED"}},
        {"filter": {"status": "NOPE"}},
        {"filter": {"owner": "bob"}},
    ],
)
def test_bulk_refuses_a_malformed_body(client, alice, body):
    response = bulk(client, alice, body)
    assert response.status_code == 400, response.get_json()


def test_bulk_counts_against_the_bulk_rate_limit(app):
    from api.limits import BULK

    view = app.view_functions["replay.retry_many"]
    assert getattr(view, "rate_limit_group", None) == BULK
