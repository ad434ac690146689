"""GET /api/v1/queues and the queue gauges: what is counted where, heartbeats' slots, tenancy."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import redis

from api import gauges
from shared import db, heartbeats, store
from tests.api.test_metrics import sample, scrape
from tests.helpers import submit, task_row

EXECUTOR = "standard-executor"


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """No caching of the scrape-time readings, so a test sees its own writes."""
    monkeypatch.setattr(gauges, "CACHE_SECONDS", 0.0)


def _queues(client, headers) -> dict[str, dict]:
    response = client.get("/api/v1/queues", headers=headers)
    assert response.status_code == 200, response.get_json()
    return {q["executor"]: q for q in response.get_json()["items"]}


def _sql(settings, statement: str, *params) -> None:
    conn = db.connect(settings.database_url)
    with conn, conn.cursor() as cur:
        cur.execute(statement, params)
    conn.close()


def test_queues_need_tasks_admin(client, auth):
    assert client.get("/api/v1/queues").status_code == 401
    everything_else = auth.key(["tasks:read", "tasks:execute", "definitions:read"], owner="bob")
    refused = client.get("/api/v1/queues", headers=everything_else)
    assert refused.status_code == 403
    assert refused.get_json()["error"]["details"]["required"] == "tasks:admin"
    assert client.get("/api/v1/queues", headers=auth.key("tasks:admin")).status_code == 200


def test_waiting_dispatched_running_and_the_oldest_due_age(client, auth, settings):
    admin = auth.key("*")
    idle = _queues(client, admin)
    # Every executor a worker-run definition names is listed, idle; manual ones are not.
    assert idle[EXECUTOR] == {
        "executor": EXECUTOR,
        "waiting": 0,
        "dispatched": 0,
        "running": 0,
        "workers": 0,
        "slots": 0,
        "oldestWaitingAge": None,
    }
    assert "manual" not in idle

    dispatched = [submit(client, admin, "echo", {"n": i}) for i in range(3)]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    submit(client, admin, "echo", {"n": "later"}, runAt=future)  # waiting, not due
    submit(client, admin, "approve-order", {"orderId": "ORD-1", "amount": 5})  # manual
    conn = db.connect(settings.database_url)
    with conn:
        assert store.claim_task(conn, uuid.UUID(dispatched[0]), "host", 1, 30) is not None
    conn.close()
    # A publish that failed: due, but no message in Redis (the sweeper will release it).
    _sql(
        settings,
        "UPDATE tasks SET published_at = NULL, created_at = now() - interval '5 minutes'"
        " WHERE id = %s",
        dispatched[1],
    )
    q = _queues(client, admin)[EXECUTOR]
    assert (q["waiting"], q["dispatched"], q["running"]) == (2, 1, 1)
    # The oldest due task not yet running is the unpublished one, due five minutes ago; the
    # delayed one is not due, and the running one no longer waits.
    assert 300_000 <= q["oldestWaitingAge"] < 330_000
    assert "manual" not in _queues(client, admin)


def test_a_released_retry_counts_its_age_from_when_it_became_due(client, auth, settings):
    """The sweeper clears next_attempt_at to make a task ready: its age still counts from then."""
    admin = auth.key("*")
    task_id = submit(client, admin, "echo", {"n": "retry"})
    # A retry submitted an hour ago whose backoff ended two minutes ago, not yet released.
    _sql(
        settings,
        "UPDATE tasks SET status = 'RETRYING', published_at = NULL,"
        " created_at = now() - interval '1 hour',"
        " next_attempt_at = now() - interval '2 minutes' WHERE id = %s",
        task_id,
    )
    before = _queues(client, admin)[EXECUTOR]["oldestWaitingAge"]
    conn = db.connect(settings.database_url)
    with conn:
        assert store.ready_due(conn) == 1
    with conn, conn.cursor() as cur:
        cur.execute("SELECT next_attempt_at FROM tasks WHERE id = %s", (task_id,))
        assert cur.fetchone() == (None,)  # released: in tasks_ready, where the releaser looks
    conn.close()
    after = _queues(client, admin)[EXECUTOR]["oldestWaitingAge"]
    # Two minutes, before and after the release; never the hour since its submission.
    assert 120_000 <= before < 150_000
    assert 120_000 <= after < 150_000


def test_workers_and_slots_come_from_fresh_heartbeats(client, auth, settings):
    admin = auth.key("tasks:admin")
    r = redis.Redis.from_url(settings.redis_url)
    heartbeats.beat(r, "a@host", [EXECUTOR], 4)
    heartbeats.beat(r, "b@host", [EXECUTOR, "gpu"], 2)
    heartbeats.beat(r, "old@host", ["gpu"])  # an earlier release: no slots announced
    now = r.time()[0]
    r.zadd(heartbeats.KEY, {heartbeats.member("gone@host", [EXECUTOR], 16): now - 60})
    found = _queues(client, admin)
    assert (found[EXECUTOR]["workers"], found[EXECUTOR]["slots"]) == (2, 6)
    # An executor no definition names is listed because a worker consumes it.
    assert (found["gpu"]["workers"], found["gpu"]["slots"]) == (2, 2)
    assert found["gpu"]["waiting"] == 0

    heartbeats.leave(r, "b@host", [EXECUTOR, "gpu"], 2)
    found = _queues(client, admin)
    assert (found[EXECUTOR]["workers"], found[EXECUTOR]["slots"]) == (1, 4)


def test_workers_and_slots_are_null_when_redis_cannot_be_read(app_with, auth, settings):
    app = app_with(redis_url="redis://127.0.0.1:1/0")
    client = app.test_client()
    found = _queues(client, auth.key("tasks:admin"))
    assert found[EXECUTOR]["workers"] is None and found[EXECUTOR]["slots"] is None
    assert found[EXECUTOR]["waiting"] == 0  # the ledger's figures still answer


def test_the_same_figures_are_gauges_with_the_top_owners(client, auth, settings, fresh):
    admin = auth.key("*")
    r = redis.Redis.from_url(settings.redis_url)
    heartbeats.beat(r, "a@host", [EXECUTOR], 3)
    # Owner k has k + 1 waiting tasks: twelve owners, 2..13 tasks, 90 in all.
    rows = [
        task_row(owner=f"tenant-{k:02d}", run_at=datetime.now(UTC) + timedelta(hours=1))
        for k in range(1, 13)
        for _ in range(k + 1)
    ]
    conn = db.connect(settings.database_url)
    with conn:
        store.insert_tasks(conn, rows)
    conn.close()
    submit(client, admin, "echo", {})  # dispatched, owner alice
    api = _queues(client, admin)[EXECUTOR]
    text = scrape(client)
    assert sample(text, "taskexec_queues_up") == 1
    assert sample(text, "taskexec_queue_waiting_tasks", executor=EXECUTOR) == api["waiting"] == 90
    assert sample(text, "taskexec_queue_dispatched_tasks", executor=EXECUTOR) == 1
    assert sample(text, "taskexec_queue_running_tasks", executor=EXECUTOR) == 0
    assert sample(text, "taskexec_queue_workers", executor=EXECUTOR) == 1
    assert sample(text, "taskexec_queue_slots", executor=EXECUTOR) == 3
    assert sample(text, "taskexec_queue_oldest_waiting_age_seconds", executor=EXECUTOR) < 60
    # Ten owners by name (the most first), everyone else summed: 13 owners, 11 series.
    owners = {
        line.split('owner="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("taskexec_queue_owner_queued_tasks{")
    }
    assert len(owners) == gauges.TOP_OWNERS + 1
    assert sample(text, "taskexec_queue_owner_queued_tasks", owner="tenant-12") == 13
    assert sample(text, "taskexec_queue_owner_queued_tasks", owner="tenant-03") == 4
    assert sample(text, "taskexec_queue_owner_queued_tasks", owner="tenant-02") is None
    # tenant-01 (2), alice (1) and tenant-02 (3) are the rest.
    assert sample(text, "taskexec_queue_owner_queued_tasks", owner="(other)") == 6


def test_responses_match_the_openapi_document(client, auth, settings):
    from tests.api.test_openapi import Conformance

    spec = client.get("/api/v1/openapi.json").get_json()
    conforms = Conformance(spec)
    admin = auth.key("*")
    submit(client, admin, "echo", {})
    r = redis.Redis.from_url(settings.redis_url)
    heartbeats.beat(r, "a@host", [EXECUTOR], 2)
    items = conforms("GET", "/api/v1/queues", client.get("/api/v1/queues", headers=admin))["items"]
    mine = next(q for q in items if q["executor"] == EXECUTOR)
    assert (mine["dispatched"], mine["slots"]) == (1, 2) and mine["oldestWaitingAge"] >= 0
    refused = client.get("/api/v1/queues", headers=auth.key("tasks:read", owner="bob"))
    conforms("GET", "/api/v1/queues", refused)
