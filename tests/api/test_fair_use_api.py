"""Fair use at the API: the dispatch window's fast path, concurrency fields, the queued cap."""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis

from shared import db, store
from tests.helpers import get

URL = "/api/v1/tasks"


def echo(**extra: Any) -> dict[str, Any]:
    return {"taskDefinitionId": "echo", "input": {}, **extra}


def row(database_url: str, task_id: str) -> store.Task:
    conn = db.connect(database_url)
    try:
        with conn:
            task = store.get_task(conn, uuid.UUID(task_id))
    finally:
        conn.close()
    assert task is not None
    return task


def submit(client: Any, headers: dict[str, str], **extra: Any) -> str:
    response = client.post(URL, json=echo(**extra), headers=headers)
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["id"])


def drain(redis_url: str) -> None:
    """Empty the executor's queue in Redis, as workers taking the messages would."""
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter("standard-executor*"):
        client.delete(key)


def test_an_idle_submission_is_published_at_insert(client, auth, backends):
    headers = auth.key("*")
    task_id = submit(client, headers)
    stored = row(backends.database_url, task_id)
    # The fast path: stamped in the INSERT, the message sent after the commit; no releaser.
    assert stored.published_at is not None and stored.published_at == stored.created_at
    wire = redis.Redis.from_url(backends.redis_url)
    assert sum(wire.llen(k) for k in wire.scan_iter("standard-executor*")) == 1


def test_a_full_window_keeps_work_in_postgres_and_an_owner_in_order(app_with, auth, backends):
    client = app_with(dispatch_window_min=2).test_client()
    alice, bob = auth.key("*", owner="alice"), auth.key("*", owner="bob")
    first = [submit(client, alice) for _ in range(2)]
    assert all(row(backends.database_url, i).published_at is not None for i in first)
    time.sleep(0.1)  # the API's view of the window is at most 50 ms old
    waiting = submit(client, alice)  # the window (2, no worker up) is full
    assert row(backends.database_url, waiting).published_at is None
    assert get(client, alice, waiting)["pendingReason"] == "NO_WORKER"

    drain(backends.redis_url)
    time.sleep(0.1)  # the API's view of the window is at most 50 ms old
    # Room again, but alice has a task waiting: a new one must not overtake it.
    later = submit(client, alice)
    assert row(backends.database_url, later).published_at is None
    # bob has nothing waiting: his goes out at once.
    assert row(backends.database_url, submit(client, bob)).published_at is not None


def test_limited_work_waits_for_the_releaser(client, auth, backends):
    headers = auth.key("*")
    task_id = submit(client, headers, executionConfig={"concurrency": {"key": "c-1", "limit": 1}})
    stored = row(backends.database_url, task_id)
    assert (stored.concurrency_key, stored.key_limit, stored.published_at) == ("c-1", 1, None)
    capped = auth.key("*", owner="carol", max_running=3)
    assert row(backends.database_url, submit(client, capped)).owner_limit == 3


def test_concurrency_is_validated(client, auth):
    headers = auth.key("*")
    for bad in ({"key": "k", "limit": 0}, {"limit": 1}, {"key": "", "limit": 1}, {"key": "k"}):
        response = client.post(
            URL, json=echo(executionConfig={"concurrency": bad}), headers=headers
        )
        assert response.status_code == 400, bad
        assert response.get_json()["error"]["details"]["field"].startswith(
            "executionConfig.concurrency"
        )


def test_queue_full_single_and_bulk(app_with, auth, backends):
    client = app_with(max_queued_per_principal=3).test_client()
    alice, bob = auth.key("*", owner="alice"), auth.key("*", owner="bob")
    kept = [submit(client, alice) for _ in range(3)]
    refused = client.post(URL, json=echo(), headers=alice)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "5"
    error = refused.get_json()["error"]
    assert (error["code"], error["details"]) == ("QUEUE_FULL", {"maxQueued": 3})
    assert row(backends.database_url, submit(client, bob)).owner == "bob"  # per principal

    # Bulk: items past the cap are refused one by one, the first ones go ahead.
    bulk = client.post(f"{URL}/bulk", json={"tasks": [echo()] * 3}, headers=bob).get_json()
    codes = [item.get("error", {}).get("code") for item in bulk["items"]]
    assert codes == [None, None, "QUEUE_FULL"]

    # Room comes back as queued tasks start or end (a count at most a second old).
    cancelled = client.post(f"{URL}/{kept[0]}/cancel", json={}, headers=alice)
    assert cancelled.status_code == 200
    time.sleep(1.1)
    assert client.post(URL, json=echo(), headers=alice).status_code == 201


def test_pending_reason_filter_and_fields(client, auth):
    headers = auth.key("*")
    due = submit(client, headers)
    later = submit(client, headers, delay=60_000)
    doc = get(client, headers, due)
    assert (doc["pendingReason"], doc["pendingDetails"], doc["queuePosition"]) == (
        "NO_WORKER",
        None,
        None,
    )
    listed = client.get(f"{URL}?pendingReason=SCHEDULED", headers=headers).get_json()
    assert [(i["id"], i["pendingReason"]) for i in listed["items"]] == [(later, "SCHEDULED")]
    both = client.get(f"{URL}?pendingReason=SCHEDULED,NO_WORKER", headers=headers).get_json()
    assert {i["id"] for i in both["items"]} == {due, later}
    bad = client.get(f"{URL}?pendingReason=SLEEPY", headers=headers)
    assert bad.status_code == 400
    assert bad.get_json()["error"]["details"]["field"] == "pendingReason"


def test_a_claim_past_the_limit_holds_the_task_back_until_room(backends):
    from shared.status import Status
    from tests.helpers import task_row

    rows = [task_row(concurrency_key="k", key_limit=1) for _ in range(2)]
    conn = db.connect(backends.database_url)
    conn.autocommit = True
    try:
        store.insert_tasks(conn, rows)
        first = store.claim_task(conn, rows[0].id, "host", 1, 30)
        assert first is not None and first.status is Status.RUNNING
        assert store.claim_task(conn, rows[1].id, "host", 2, 30) is None
        held = store.get_task(conn, rows[1].id)
        assert held is not None
        assert (held.status, held.held_on, held.published_at) == (
            Status.PENDING,
            "key:alice:k",
            None,
        )
        assert store.get_attempts(conn, rows[1].id) == []  # it never ran
        assert store.let_held_go(conn) == 0  # no room yet
        assert store.finish_attempt(conn, rows[0].id, 1, Status.COMPLETED, output={})
        assert store.let_held_go(conn) == 1
        again = store.get_task(conn, rows[1].id)
        assert again is not None and again.held_on is None
        assert store.claim_task(conn, rows[1].id, "host", 2, 30) is not None
    finally:
        conn.close()
