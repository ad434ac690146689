"""Idempotency-Key on POST /api/v1/tasks: replay, conflict, scope, expiry and races."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from shared import db
from tests.helpers import SEED_ORDER

URL = "/api/v1/tasks"


def task_count(database_url: str) -> int:
    conn = db.connect(database_url)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM tasks")
        count = cur.fetchone()[0]
    conn.close()
    return count


def post(client: Any, headers: dict[str, str], key: str | None, body: dict[str, Any]) -> Any:
    extra = {"Idempotency-Key": key} if key is not None else {}
    return client.post(URL, json=body, headers={**headers, **extra})


@pytest.fixture
def alice(auth: Any) -> dict[str, str]:
    return auth.key(["tasks:execute", "tasks:read"], owner="alice")


def test_same_key_same_body_replays_the_original(client, alice, backends):
    first = post(client, alice, "order-123", SEED_ORDER)
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    again = post(client, alice, "order-123", SEED_ORDER)
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert again.headers["Location"] == first.headers["Location"]
    assert task_count(backends.database_url) == 1


def test_an_equivalent_body_is_the_same_request(client, alice, backends):
    first = post(client, alice, "k", {"taskDefinitionId": "echo", "input": {"a": 1, "b": 2}})
    spelled_out = {
        "input": {"b": 2, "a": 1},
        "priority": "MEDIUM",  # the default, written out
        "taskDefinitionId": "echo",
    }
    again = post(client, alice, "k", spelled_out)
    assert again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]


def test_the_key_may_also_be_a_body_field(client, alice, backends):
    body = {"taskDefinitionId": "echo", "input": {}, "idempotencyKey": "in-body"}
    first = client.post(URL, json=body, headers=alice)
    assert first.status_code == 201
    # The header form of the same key replays it too.
    again = post(client, alice, "in-body", {"taskDefinitionId": "echo", "input": {}})
    assert (again.status_code, again.get_json()["id"]) == (200, first.get_json()["id"])


def test_same_key_different_body_is_409(client, alice, backends):
    first = post(client, alice, "order-123", SEED_ORDER).get_json()
    other = {**SEED_ORDER, "priority": "HIGH"}
    response = post(client, alice, "order-123", other)
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert error["code"] == "CONFLICT"
    assert error["details"]["taskId"] == first["id"]
    assert task_count(backends.database_url) == 1


def test_keys_are_scoped_per_principal(client, alice, auth, backends):
    bob = auth.key(["tasks:execute", "tasks:read"], owner="bob")
    mine = post(client, alice, "shared-key", SEED_ORDER).get_json()["id"]
    response = post(client, bob, "shared-key", SEED_ORDER)
    assert response.status_code == 201
    assert response.get_json()["id"] != mine
    # Bob's use neither sees nor disturbs Alice's binding, even with another body.
    assert post(client, bob, "shared-key2", {"taskDefinitionId": "echo"}).status_code == 201
    assert post(client, alice, "shared-key", SEED_ORDER).get_json()["id"] == mine
    # The scope is the owner: Alice by JWT is still Alice.
    token = auth.token(["tasks:execute"], subject="alice")
    assert post(client, token, "shared-key", SEED_ORDER).get_json()["id"] == mine
    assert task_count(backends.database_url) == 3


def test_keys_expire(app_with, alice, backends):
    client = app_with(idempotency_ttl=1).test_client()
    first = post(client, alice, "short-lived", SEED_ORDER).get_json()["id"]
    assert post(client, alice, "short-lived", SEED_ORDER).status_code == 200
    time.sleep(1.3)
    response = post(client, alice, "short-lived", {"taskDefinitionId": "echo"})
    assert response.status_code == 201  # a new request may take the expired key
    assert response.get_json()["id"] != first
    assert post(client, alice, "short-lived", {"taskDefinitionId": "echo"}).status_code == 200
    assert task_count(backends.database_url) == 2


def test_a_refused_request_does_not_take_the_key(client, alice, backends):
    bad = post(client, alice, "k", {"taskDefinitionId": "calculate-order-total", "input": {}})
    assert bad.status_code == 422
    assert post(client, alice, "k", {"taskDefinitionId": "nope"}).status_code == 404
    assert post(client, alice, "k", SEED_ORDER).status_code == 201


@pytest.mark.parametrize("key", ["", "k" * 201])
def test_key_length_is_checked(client, alice, backends, key):
    response = post(client, alice, key, SEED_ORDER)
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["field"] == "Idempotency-Key"
    assert task_count(backends.database_url) == 0


def test_header_and_body_key_must_agree(client, alice):
    body = {**SEED_ORDER, "idempotencyKey": "a"}
    response = post(client, alice, "b", body)
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["field"] == "idempotencyKey"


def race(app: Any, headers: dict[str, str], requests: list[tuple[str, dict[str, Any]]]) -> list:
    """Send the requests from one thread each, released together; return the responses."""
    barrier = threading.Barrier(len(requests))
    results: list[Any] = [None] * len(requests)

    def send(i: int, key: str, body: dict[str, Any]) -> None:
        client = app.test_client()
        barrier.wait()
        results[i] = post(client, headers, key, body)

    threads = [threading.Thread(target=send, args=(i, *r)) for i, r in enumerate(requests)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_concurrent_requests_with_one_key_create_one_task(app, alice, backends):
    for round_ in range(5):
        responses = race(app, alice, [(f"race-{round_}", SEED_ORDER)] * 6)
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] * 5 + [201], [r.get_json() for r in responses]
        assert len({r.get_json()["id"] for r in responses}) == 1
    assert task_count(backends.database_url) == 5


def test_concurrent_different_bodies_with_one_key_create_one_task(app, alice, backends):
    bodies = [{"taskDefinitionId": "echo", "input": {"n": n}} for n in range(6)]
    responses = race(app, alice, [("contended", body) for body in bodies])
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 5, [r.get_json() for r in responses]
    winner = next(r for r in responses if r.status_code == 201).get_json()["id"]
    assert {
        r.get_json()["error"]["details"]["taskId"] for r in responses if r.status_code == 409
    } == {winner}
    assert task_count(backends.database_url) == 1
