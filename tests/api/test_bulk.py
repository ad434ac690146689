"""POST /api/v1/tasks/bulk: per-item outcomes, partial failure, one transaction, publishing."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from shared import db
from tests.helpers import SEED_ORDER

URL = "/api/v1/tasks/bulk"


def echo(n: int, **extra: Any) -> dict[str, Any]:
    return {"taskDefinitionId": "echo", "input": {"n": n}, **extra}


def rows(database_url: str) -> dict[str, dict[str, Any]]:
    """Every task row by id: what the database really holds."""
    conn = db.connect(database_url)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT id::text, type, status, published_at, created_at, input FROM tasks")
        found = {
            r[0]: {
                "type": r[1],
                "status": r[2],
                "published_at": r[3],
                "created_at": r[4],
                "input": r[5],
            }
            for r in cur.fetchall()
        }
    conn.close()
    return found


def queued(redis_url: str) -> dict[str, int]:
    """Messages waiting in Redis per queue (the Celery priority sub-queues summed)."""
    client = redis.Redis.from_url(redis_url)
    counts: dict[str, int] = {}
    for key in client.scan_iter():
        name = key.decode()
        if client.type(key) == b"list" and not name.startswith("_kombu"):
            queue = name.split(":")[0]
            counts[queue] = counts.get(queue, 0) + client.llen(key)
    return counts


@pytest.fixture
def headers(auth: Any) -> dict[str, str]:
    return auth.key(["tasks:execute", "tasks:read"])


def test_valid_items_are_accepted_when_others_fail(client, headers, backends):
    batch = [
        echo(0),
        {"taskDefinitionId": "no-such-definition", "input": {}},
        {"taskDefinitionId": "calculate-order-total", "input": {"orderId": 7, "items": []}},
        {"input": {}},
        "not an object",
        SEED_ORDER,
        {"taskDefinitionId": "echo", "priority": "URGENT"},
        {"taskDefinitionId": "approve-order", "input": {"orderId": "ORD-1"}},
    ]
    response = client.post(URL, json={"tasks": batch}, headers=headers)
    assert response.status_code == 201
    items = response.get_json()["items"]
    assert [item["index"] for item in items] == list(range(len(batch)))
    accepted = {item["index"]: item for item in items if "id" in item}
    assert sorted(accepted) == [0, 5, 7]
    assert all(
        item["status"] == "PENDING" and set(item) == {"index", "id", "status"}
        for item in accepted.values()
    )

    errors = {item["index"]: item["error"] for item in items if "error" in item}
    assert errors[1]["code"] == "NOT_FOUND"
    assert errors[2]["code"] == "VALIDATION_ERROR"  # input fails the inputSchema
    assert errors[2]["details"]["field"] == "$.orderId"
    assert errors[3]["code"] == "VALIDATION_ERROR"
    assert errors[3]["details"]["field"] == "taskDefinitionId"
    assert errors[4]["details"]["field"] == "tasks[4]"
    assert errors[6]["details"]["field"] == "priority"
    assert all(set(e) == {"code", "message", "details"} for e in errors.values())

    stored = rows(backends.database_url)
    assert set(stored) == {item["id"] for item in accepted.values()}
    assert stored[accepted[5]["id"]]["input"] == SEED_ORDER["input"]
    # now() is the transaction's start: one created_at means one transaction.
    assert len({row["created_at"] for row in stored.values()}) == 1
    for item in accepted.values():
        got = client.get(f"/api/v1/tasks/{item['id']}", headers=headers)
        assert got.status_code == 200


def test_accepted_items_are_published_and_manual_ones_are_not(client, headers, backends):
    batch = [echo(n) for n in range(4)] + [
        {"taskDefinitionId": "approve-order", "input": {"orderId": "ORD-9"}},
        {"taskDefinitionId": "no-such-definition"},
    ]
    items = client.post(URL, json={"tasks": batch}, headers=headers).get_json()["items"]
    ids = [item.get("id") for item in items]
    stored = rows(backends.database_url)
    for task_id in ids[:4]:
        assert stored[task_id]["published_at"] is not None
    manual = stored[ids[4]]
    assert (manual["type"], manual["published_at"]) == ("MANUAL", None)
    # The messages really reached Redis: four on the echo queue, none for the manual one.
    assert queued(backends.redis_url) == {"standard-executor": 4}


def test_the_whole_batch_may_fail(client, headers, backends):
    batch = [{"taskDefinitionId": "nope"}, {"taskDefinitionId": "echo", "input": []}]
    response = client.post(URL, json={"tasks": batch}, headers=headers)
    assert response.status_code == 201
    assert [set(item) for item in response.get_json()["items"]] == [{"index", "error"}] * 2
    assert rows(backends.database_url) == {}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "tasks"),
        ({"tasks": []}, "tasks"),
        ({"tasks": {"taskDefinitionId": "echo"}}, "tasks"),
        ({"tasks": [echo(1)], "extra": True}, "extra"),
    ],
)
def test_malformed_envelope_is_400(client, headers, backends, body, field):
    response = client.post(URL, json=body, headers=headers)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["details"]["field"] == field
    assert rows(backends.database_url) == {}


def test_at_most_the_default_hundred_tasks(client, headers, backends):
    response = client.post(URL, json={"tasks": [echo(n) for n in range(101)]}, headers=headers)
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["field"] == "tasks"
    assert rows(backends.database_url) == {}
    response = client.post(URL, json={"tasks": [echo(n) for n in range(100)]}, headers=headers)
    assert response.status_code == 201
    assert len(rows(backends.database_url)) == 100


def test_the_maximum_is_configurable(app_with, headers, backends):
    client = app_with(bulk_max_tasks=3).test_client()
    refused = client.post(URL, json={"tasks": [echo(n) for n in range(4)]}, headers=headers)
    assert refused.status_code == 400
    assert "at most 3" in refused.get_json()["error"]["message"]
    assert (
        client.post(URL, json={"tasks": [echo(n) for n in range(3)]}, headers=headers).status_code
        == 201
    )


def test_idempotency_keys_per_item(client, headers, backends):
    batch = [echo(1, idempotencyKey="k-1"), echo(2, idempotencyKey="k-2"), echo(3)]
    first = client.post(URL, json={"tasks": batch}, headers=headers).get_json()["items"]
    assert len(rows(backends.database_url)) == 3

    again = client.post(URL, json={"tasks": batch}, headers=headers).get_json()["items"]
    assert [i["id"] for i in again[:2]] == [i["id"] for i in first[:2]]
    assert [i.get("replayed") for i in again] == [True, True, None]
    assert again[2]["id"] != first[2]["id"]  # no key: a new task every time
    assert len(rows(backends.database_url)) == 4

    # The key of item 0 with another body: that item conflicts, the rest go ahead.
    mixed = [echo(99, idempotencyKey="k-1"), echo(4, idempotencyKey="k-4")]
    items = client.post(URL, json={"tasks": mixed}, headers=headers).get_json()["items"]
    assert items[0]["error"]["code"] == "CONFLICT"
    assert items[0]["error"]["details"]["taskId"] == first[0]["id"]
    assert "id" in items[1]
    assert len(rows(backends.database_url)) == 5


def test_a_key_repeated_within_one_batch(client, headers, backends):
    batch = [
        echo(1, idempotencyKey="same"),
        echo(1, idempotencyKey="same"),
        echo(2, idempotencyKey="same"),
    ]
    items = client.post(URL, json={"tasks": batch}, headers=headers).get_json()["items"]
    assert items[1]["id"] == items[0]["id"]
    assert items[1]["replayed"] is True
    assert items[2]["error"]["code"] == "CONFLICT"
    assert len(rows(backends.database_url)) == 1


def test_the_header_is_refused_on_bulk(client, headers, backends):
    response = client.post(
        URL, json={"tasks": [echo(1)]}, headers={**headers, "Idempotency-Key": "k"}
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["field"] == "Idempotency-Key"
    assert rows(backends.database_url) == {}


def test_bulk_needs_tasks_execute(client, auth):
    response = client.post(URL, json={"tasks": [echo(1)]}, headers=auth.key(["tasks:read"]))
    assert response.status_code == 403
