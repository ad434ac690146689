"""Delayed submission at the API: runAt/delay validated, stored waiting, never published early."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import redis

from shared import db, store
from tests.helpers import get

URL = "/api/v1/tasks"


def echo(**extra: Any) -> dict[str, Any]:
    return {"taskDefinitionId": "echo", "input": {}, **extra}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def iso(moment: datetime) -> str:
    return moment.isoformat()


def row(database_url: str, task_id: str) -> store.Task:
    conn = db.connect(database_url)
    try:
        with conn:
            task = store.get_task(conn, uuid.UUID(task_id))
    finally:
        conn.close()
    assert task is not None
    return task


def messages(redis_url: str) -> int:
    """Messages waiting in Redis on any queue (Celery's priority sub-queues included)."""
    client = redis.Redis.from_url(redis_url)
    return sum(
        client.llen(key)
        for key in client.scan_iter()
        if client.type(key) == b"list" and not key.startswith(b"_kombu")
    )


@pytest.fixture
def headers(auth: Any) -> dict[str, str]:
    return auth.key("*")


@pytest.mark.parametrize(
    ("extra", "field", "issue"),
    [
        ({"runAt": "2030-01-01T00:00:00Z", "delay": 10}, "delay", "not both"),
        ({"delay": -1}, "delay", "greater than or equal to 0"),
        ({"delay": 1.5}, "delay", "integer"),
        ({"delay": "100"}, "delay", "integer"),
        ({"delay": 366 * 24 * 3600 * 1000 + 1}, "delay", "less than or equal to"),
        ({"runAt": "2030-01-01T00:00:00"}, "runAt", "aware"),  # no offset
        ({"runAt": "tomorrow"}, "runAt", ""),
        ({"runAt": "2030-01-01T00:00:00+25:00"}, "runAt", ""),
        ({"runAt": "0001-01-01T00:00:00+01:00"}, "runAt", "out of range"),
        ({"runAt": None}, "runAt", "null"),
    ],
)
def test_bad_start_times_are_400_naming_the_field(client, headers, backends, extra, field, issue):
    response = client.post(URL, json=echo(**extra), headers=headers)
    assert response.status_code == 400, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["details"]["field"] == field
    assert issue in error["details"]["issue"]
    assert messages(backends.redis_url) == 0


def test_more_than_366_days_ahead_is_refused(client, headers):
    now = datetime.now(UTC)
    too_far = client.post(
        URL, json=echo(runAt=iso(now + timedelta(days=366, minutes=1))), headers=headers
    )
    assert too_far.status_code == 400
    assert too_far.get_json()["error"]["details"] == {
        "field": "runAt",
        "issue": "at most 366 days ahead",
        "location": "body",
        "errors": [{"field": "runAt", "issue": "at most 366 days ahead"}],
    }
    just_in = client.post(URL, json=echo(runAt=iso(now + timedelta(days=365))), headers=headers)
    assert just_in.status_code == 201, just_in.get_json()
    longest = client.post(URL, json=echo(delay=366 * 24 * 3600 * 1000), headers=headers)
    assert longest.status_code == 201, longest.get_json()


def test_a_delayed_task_waits_in_postgres_only(client, headers, backends):
    run_at = datetime.now(UTC) + timedelta(hours=1)
    # Any offset is read as the moment it names and stored in UTC (Postgres itself refuses
    # an offset such as +17:38 that Python accepts).
    local = run_at.astimezone(timezone(timedelta(hours=17, minutes=38)))
    response = client.post(URL, json=echo(runAt=iso(local)), headers=headers)
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    assert set(created) == {"id", "status", "createdAt", "runAt"}
    assert created["status"] == "PENDING"
    assert abs(at(created["runAt"]) - run_at) < timedelta(milliseconds=1)
    assert created["runAt"].endswith("Z")

    stored = row(backends.database_url, created["id"])
    assert stored.published_at is None  # no message: the sweeper releases it when due
    assert stored.next_attempt_at == stored.run_at
    assert messages(backends.redis_url) == 0

    task = get(client, headers, created["id"])
    assert task["status"] == "PENDING"
    assert task["runAt"] == created["runAt"]
    assert task["pendingReason"] == "SCHEDULED"


def test_delay_counts_from_the_request(client, headers, backends):
    before = datetime.now(UTC)
    created = client.post(URL, json=echo(delay=60_000), headers=headers).get_json()
    after = datetime.now(UTC)
    run_at = at(created["runAt"])
    assert before + timedelta(seconds=60) - timedelta(milliseconds=1) <= run_at
    assert run_at <= after + timedelta(seconds=60)
    assert row(backends.database_url, created["id"]).published_at is None
    assert messages(backends.redis_url) == 0


def test_an_immediate_task_keeps_its_shapes(client, headers, backends):
    created = client.post(URL, json=echo(), headers=headers).get_json()
    assert list(created) == ["id", "status", "createdAt"]
    task = get(client, headers, created["id"])
    # Due, and no worker runs in these tests: it waits for one (shared/pending.py).
    assert (task["runAt"], task["pendingReason"]) == (None, "NO_WORKER")
    assert messages(backends.redis_url) == 1
    # delay 0 and a runAt already past are immediate too: published at once, runAt kept.
    for extra in ({"delay": 0}, {"runAt": "2020-01-01T00:00:00Z"}):
        created = client.post(URL, json=echo(**extra), headers=headers).get_json()
        stored = row(backends.database_url, created["id"])
        assert stored.published_at is not None and stored.run_at is not None, extra
        task = get(client, headers, created["id"])
        assert task["runAt"] == created["runAt"] and task["pendingReason"] == "NO_WORKER"
    assert messages(backends.redis_url) == 3


def test_cancel_before_it_is_due(client, headers, backends):
    created = client.post(URL, json=echo(delay=3_600_000), headers=headers).get_json()
    response = client.post(f"{URL}/{created['id']}/cancel", json={}, headers=headers)
    assert response.status_code == 200 and response.get_json()["status"] == "CANCELLED"
    task = get(client, headers, created["id"])
    assert task["status"] == "CANCELLED"
    assert task["runAt"] == created["runAt"] and task["pendingReason"] is None
    stored = row(backends.database_url, created["id"])
    assert stored.next_attempt_at is None and stored.published_at is None
    conn = db.connect(backends.database_url)
    try:
        with conn:
            assert store.next_release_in(conn) is None  # nothing left for the sweeper
    finally:
        conn.close()


def test_an_idempotent_replay_publishes_nothing(client, headers, backends):
    body = echo(delay=3_600_000, idempotencyKey="later-1")
    first = client.post(URL, json=body, headers=headers)
    again = client.post(URL, json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.get_json() == first.get_json()
    assert messages(backends.redis_url) == 0


def test_bulk_items_may_be_delayed_one_by_one(client, headers, backends):
    soon = iso(datetime.now(UTC) + timedelta(minutes=5))
    batch = [
        echo(),
        echo(runAt=soon),
        echo(delay=60_000, idempotencyKey="bulk-later"),
        echo(runAt=soon, delay=5),
        echo(delay=-5),
        echo(runAt="2030-01-01T00:00:00"),
        echo(runAt=iso(datetime.now(UTC) + timedelta(days=400))),
    ]
    response = client.post(f"{URL}/bulk", json={"tasks": batch}, headers=headers)
    assert response.status_code == 201
    items = response.get_json()["items"]
    assert set(items[0]) == {"index", "id", "status"}
    assert timedelta(0) <= at(soon) - at(items[1]["runAt"]) < timedelta(milliseconds=1)
    assert "runAt" in items[2]
    # A refused item names the field within the item, as every bulk item error does.
    assert [items[i]["error"]["details"]["field"] for i in (3, 4, 5, 6)] == [
        "delay",
        "delay",
        "runAt",
        "runAt",
    ]
    assert all(items[i]["error"]["code"] == "VALIDATION_ERROR" for i in (3, 4, 5, 6))
    assert messages(backends.redis_url) == 1  # only the immediate one
    for index in (1, 2):
        task = get(client, headers, items[index]["id"])
        assert task["pendingReason"] == "SCHEDULED"
        assert row(backends.database_url, items[index]["id"]).published_at is None


def test_a_deadline_since_submission_counts_from_run_at(backends):
    """anchor_deadline (the Task API's timeout) starts a delayed task's clock at its runAt."""
    from tests.helpers import task_row

    conn = db.connect(backends.database_url)
    try:
        with conn:
            run_at = datetime.now(UTC) + timedelta(hours=2)
            delayed, immediate = store.insert_tasks(
                conn, [task_row(run_at=run_at), task_row(run_at=datetime(2020, 1, 1, tzinfo=UTC))]
            )
            assert store.anchor_deadline(conn, delayed.id, 60) == delayed.run_at + timedelta(
                seconds=60
            )
            # A runAt before the submission counts from the submission.
            assert store.anchor_deadline(conn, immediate.id, 60) == immediate.created_at + (
                timedelta(seconds=60)
            )
    finally:
        conn.close()


def test_a_group_commit_batch_may_mix_delayed_and_immediate_rows(client, headers, backends):
    """Without idempotency keys a bulk request is one group-commit flush: one INSERT for all."""
    batch = [echo(), echo(delay=3_600_000), echo(runAt="2020-01-01T00:00:00Z"), echo()]
    items = client.post(f"{URL}/bulk", json={"tasks": batch}, headers=headers).get_json()["items"]
    stored = [row(backends.database_url, item["id"]) for item in items]
    assert [t.published_at is not None for t in stored] == [True, False, True, True]
    assert [t.run_at is not None for t in stored] == [False, True, True, False]
    assert len({t.created_at for t in stored}) == 1  # one statement
    assert messages(backends.redis_url) == 3
