"""Tenant isolation: another principal's task is 404 on every endpoint and never listed."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared.credentials import PERMISSIONS

TASKS = "/api/v1/tasks"
WORKFLOW = "wf-shared-name"
EVERYTHING_BUT_ADMIN = [p for p in PERMISSIONS if p != "tasks:admin"]


def submit(client: Any, headers: dict[str, str], definition: str = "echo", **extra: Any) -> str:
    body = {"taskDefinitionId": definition, "workflowInstanceId": WORKFLOW, "input": {}, **extra}
    if definition == "approve-order":
        body["input"] = {"orderId": "ORD-1"}
    response = client.post(TASKS, json=body, headers=headers)
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["id"])


@pytest.fixture
def tenants(client, auth) -> dict[str, Any]:
    alice = auth.key(EVERYTHING_BUT_ADMIN, owner="alice")
    bob = auth.key(EVERYTHING_BUT_ADMIN, owner="bob")
    return {
        "alice": alice,
        "bob": bob,
        "bob_jwt": auth.token(EVERYTHING_BUT_ADMIN, subject="bob"),
        "admin": auth.key([*EVERYTHING_BUT_ADMIN, "tasks:admin"], owner="ops"),
        "alice_echo": submit(client, alice),
        "alice_manual": submit(client, alice, "approve-order"),
        "bob_echo": submit(client, bob),
    }


def status_of(client: Any, headers: dict[str, str], task_id: str) -> str:
    response = client.get(f"{TASKS}/{task_id}", headers=headers)
    assert response.status_code == 200
    return str(response.get_json()["status"])


def assert_not_found(response: Any) -> None:
    assert response.status_code == 404, response.get_json()
    assert response.get_json()["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize("who", ["bob", "bob_jwt"])
def test_another_principals_task_is_not_found_on_every_endpoint(client, tenants, who):
    bob, alice_task, manual = tenants[who], tenants["alice_echo"], tenants["alice_manual"]
    assert_not_found(client.get(f"{TASKS}/{alice_task}", headers=bob))
    assert_not_found(client.post(f"{TASKS}/{alice_task}/cancel", json={}, headers=bob))
    complete = client.post(
        f"{TASKS}/{manual}/complete", json={"output": {"approved": True}}, headers=bob
    )
    assert_not_found(complete)
    if "task_logs.task_logs" in client.application.view_functions:
        assert_not_found(client.get(f"{TASKS}/{alice_task}/logs", headers=bob))
    # A task that does not exist looks exactly the same.
    assert_not_found(client.get(f"{TASKS}/{uuid.uuid4()}", headers=bob))
    # Nothing happened to alice's tasks.
    assert status_of(client, tenants["alice"], alice_task) == "PENDING"
    assert status_of(client, tenants["alice"], manual) == "PENDING"


@pytest.mark.parametrize("who", ["bob", "bob_jwt"])
def test_lists_never_show_another_principals_tasks(client, tenants, who):
    bob = tenants[who]
    for query in (
        "",
        f"?workflowInstanceId={WORKFLOW}",
        "?taskDefinitionId=approve-order",
        "?status=PENDING",
        "?limit=100",
    ):
        response = client.get(f"{TASKS}{query}", headers=bob)
        assert response.status_code == 200, response.get_json()
        ids = {item["id"] for item in response.get_json()["items"]}
        assert tenants["alice_echo"] not in ids and tenants["alice_manual"] not in ids, query
    listed = client.get(TASKS, headers=bob).get_json()
    assert {i["id"] for i in listed["items"]} == {tenants["bob_echo"]}
    assert listed["pagination"]["totalItems"] == 1


def test_bulk_cancel_cannot_reach_another_principals_tasks(client, tenants):
    bob, alice_task = tenants["bob"], tenants["alice_echo"]
    by_ids = client.post(f"{TASKS}/cancel", json={"ids": [alice_task]}, headers=bob)
    assert by_ids.status_code == 200
    assert by_ids.get_json()["items"][0]["error"]["code"] == "NOT_FOUND"
    by_workflow = client.post(f"{TASKS}/cancel", json={"workflowInstanceId": WORKFLOW}, headers=bob)
    assert by_workflow.status_code == 200
    # Only bob's own task of that workflow name was cancelled.
    assert [i["id"] for i in by_workflow.get_json()["items"]] == [tenants["bob_echo"]]
    assert status_of(client, tenants["alice"], alice_task) == "PENDING"
    assert status_of(client, tenants["alice"], tenants["alice_manual"]) == "PENDING"


def test_an_idempotency_key_is_per_principal(client, tenants):
    body = {"taskDefinitionId": "echo", "input": {"n": 1}}
    key = {"Idempotency-Key": "same-key"}
    alice = client.post(TASKS, json=body, headers={**tenants["alice"], **key})
    bob = client.post(TASKS, json=body, headers={**tenants["bob"], **key})
    assert alice.status_code == bob.status_code == 201
    assert alice.get_json()["id"] != bob.get_json()["id"]


def test_tasks_admin_sees_and_acts_on_every_owners_tasks(client, tenants):
    admin = tenants["admin"]
    assert client.get(f"{TASKS}/{tenants['alice_echo']}", headers=admin).status_code == 200
    if "task_logs.task_logs" in client.application.view_functions:
        assert client.get(f"{TASKS}/{tenants['alice_echo']}/logs", headers=admin).status_code == 200
    ids = {i["id"] for i in client.get(f"{TASKS}?limit=100", headers=admin).get_json()["items"]}
    assert {tenants["alice_echo"], tenants["alice_manual"], tenants["bob_echo"]} <= ids
    done = client.post(
        f"{TASKS}/{tenants['alice_manual']}/complete",
        json={"output": {"approved": True}},
        headers=admin,
    )
    assert done.status_code == 200, done.get_json()
    cancelled = client.post(f"{TASKS}/{tenants['alice_echo']}/cancel", json={}, headers=admin)
    assert cancelled.status_code == 200
    assert status_of(client, tenants["alice"], tenants["alice_echo"]) == "CANCELLED"


def test_the_owner_is_the_jwt_subject_or_the_keys_owner(client, tenants, auth):
    # A token whose subject is alice is the same tenant as alice's keys.
    alice_jwt = auth.token(EVERYTHING_BUT_ADMIN, subject="alice")
    assert status_of(client, alice_jwt, tenants["alice_echo"]) == "PENDING"


# ---------------------------------------------------------------- Cortex Task API surface


def _has_route(client: Any, endpoint: str) -> bool:
    return endpoint in client.application.view_functions


def test_cortex_task_apis_hide_another_principals_jobs(client, tenants):
    if not _has_route(client, "task_apis.get_job"):
        pytest.skip("the Cortex Task API is not registered")
    bob, alice = tenants["bob"], tenants["alice"]
    job = client.post("/api/v1/task-apis/echo", json={"config": {}}, headers=alice)
    assert job.status_code == 200, job.get_json()
    job_id = job.get_json()["job_id"]
    base = "/api/v1/task-apis/echo"
    assert_not_found(client.get(f"{base}/{job_id}", headers=bob))
    assert_not_found(client.get(f"{base}?jobID={job_id}", headers=bob))
    assert_not_found(client.delete(f"{base}/{job_id}", headers=bob))
    assert_not_found(client.delete(f"{base}?jobID={job_id}", headers=bob))
    listing = client.get(base, headers=bob)
    assert listing.status_code == 200
    assert job_id not in listing.get_data(as_text=True)
    assert client.get(f"{base}/{job_id}", headers=alice).status_code == 200
    assert status_of(client, alice, job_id) == "PENDING"
