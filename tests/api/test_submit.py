"""POST /api/v1/tasks and GET /api/v1/tasks/{id} through the Flask test client, real Postgres."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import pytest

from api.app import create_app
from cli.servers import free_port
from shared import db, store
from shared.credentials import mint_token
from shared.status import Status
from tests.helpers import JWT_SECRET, SEED_ORDER

RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
SEED_FIELDS = {
    "id",
    "taskDefinitionId",
    "workflowInstanceId",
    "status",
    "type",
    "input",
    "output",
    "executionMetadata",
    "createdAt",
    "updatedAt",
}
METADATA_FIELDS = {"startTime", "endTime", "duration", "executionEnvironment", "attempts"}


@pytest.fixture
def headers(auth: Any) -> dict[str, str]:
    return auth.key("*")


@pytest.fixture(scope="module")
def refusals(base_settings: Any) -> Any:
    """One app for tests whose requests are all refused: they store nothing, need no cleanup."""
    app = create_app(base_settings)
    app.config["TESTING"] = True
    yield app.test_client()
    app.extensions["taskexec"].db.close()


@pytest.fixture(scope="module")
def token() -> dict[str, str]:
    return {"Authorization": "Bearer " + mint_token(JWT_SECRET, "alice", ["*"])}


def submit(client: Any, headers: dict[str, str], body: Any = None, **kw: Any) -> Any:
    if body is not None:
        kw["json"] = body
    return client.post("/api/v1/tasks", headers=headers, **kw)


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    return body["error"]


def read_row(database_url: str, task_id: str) -> store.Task:
    conn = db.connect(database_url)
    try:
        with conn:
            task = store.get_task(conn, uuid.UUID(task_id))
    finally:
        conn.close()
    assert task is not None
    return task


# ---------------------------------------------------------------- the happy path


def test_submit_answers_201_with_id_status_created_at_and_location(client, headers):
    response = submit(client, headers, SEED_ORDER)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert list(body) == ["id", "status", "createdAt"]
    assert uuid.UUID(body["id"])
    assert body["status"] == "PENDING"
    assert RFC3339_Z.match(body["createdAt"])
    assert response.headers["Location"].endswith(f"/api/v1/tasks/{body['id']}")
    assert client.get(response.headers["Location"], headers=headers).status_code == 200


def test_get_returns_every_seed_field_of_a_pending_task(client, headers):
    task_id = submit(client, headers, SEED_ORDER).get_json()["id"]
    response = client.get(f"/api/v1/tasks/{task_id}", headers=headers)
    assert response.status_code == 200
    task = response.get_json()
    assert SEED_FIELDS <= set(task)
    assert task["id"] == task_id
    assert task["taskDefinitionId"] == "calculate-order-total"
    assert task["workflowInstanceId"] == "order-workflow-789"
    assert task["status"] == "PENDING"
    assert task["type"] == "AUTOMATED"
    assert task["input"] == SEED_ORDER["input"]
    assert task["output"] is None
    assert set(task["executionMetadata"]) == METADATA_FIELDS
    assert task["executionMetadata"] == {
        "startTime": None,
        "endTime": None,
        "duration": None,
        "executionEnvironment": None,
        "attempts": 0,
    }
    assert RFC3339_Z.match(task["createdAt"]) and RFC3339_Z.match(task["updatedAt"])
    assert task["priority"] == "MEDIUM"


def test_get_of_a_finished_task_shows_output_and_execution_metadata(client, headers, backends):
    task_id = submit(client, headers, SEED_ORDER).get_json()["id"]
    output = {"subtotal": 46.97, "tax": 3.76, "total": 50.73}
    # Play a worker's part through the store: claim, then complete.
    conn = db.connect(backends.database_url)
    try:
        with conn:
            claimed = store.claim_task(conn, uuid.UUID(task_id), "worker-host-1", 4242, 30)
            assert claimed is not None
        time.sleep(0.01)
        with conn:
            assert store.finish_attempt(
                conn, uuid.UUID(task_id), claimed.attempts, Status.COMPLETED, output=output
            )
    finally:
        conn.close()

    task = client.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json()
    assert task["status"] == "COMPLETED"
    assert task["output"] == output
    meta = task["executionMetadata"]
    assert set(meta) == METADATA_FIELDS
    assert RFC3339_Z.match(meta["startTime"]) and RFC3339_Z.match(meta["endTime"])
    assert meta["startTime"] <= meta["endTime"]
    assert isinstance(meta["duration"], int) and meta["duration"] >= 0
    assert meta["executionEnvironment"] == "worker-host-1:4242"
    assert meta["attempts"] == 1
    assert task["updatedAt"] >= task["createdAt"]


def test_priority_workflow_and_execution_config_are_kept(client, headers):
    body = {
        **SEED_ORDER,
        "priority": "CRITICAL",
        "executionConfig": {"timeout": 5000, "retryPolicy": {"maxRetries": 1}},
    }
    task_id = submit(client, headers, body).get_json()["id"]
    task = client.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json()
    assert task["priority"] == "CRITICAL"
    # Absent retry fields fall back to the definition's (60000 ms, x2).
    assert task["executionConfig"]["timeout"] == 5000
    assert task["executionConfig"]["retryPolicy"] == {
        "maxRetries": 1,
        "retryInterval": 60000,
        "backoffMultiplier": 2.0,
    }


def test_optional_fields_may_be_left_out(client, headers):
    response = submit(client, headers, {"taskDefinitionId": "echo"})
    assert response.status_code == 201
    task = client.get(f"/api/v1/tasks/{response.get_json()['id']}", headers=headers).get_json()
    assert task["input"] == {} and task["workflowInstanceId"] is None
    assert task["priority"] == "MEDIUM"


# ---------------------------------------------------------------- 422, 404


def test_input_failing_the_schema_is_422_with_the_failing_paths(refusals, token):
    bad = {
        **SEED_ORDER,
        "input": {"items": [{"id": "ITEM-1", "quantity": "two", "price": 10.99}, {"id": "I2"}]},
    }
    error = error_of(submit(refusals, token, bad), 422)
    assert error["code"] == "VALIDATION_ERROR"
    fields = [e["field"] for e in error["details"]["errors"]]
    assert fields == [
        "$.items[0].quantity",
        "$.items[1].price",
        "$.items[1].quantity",
        "$.orderId",
    ]
    assert error["details"]["field"] == "$.items[0].quantity"
    assert "not of type 'number'" in error["details"]["issue"]


def test_unknown_definition_is_404(refusals, token):
    error = error_of(submit(refusals, token, {**SEED_ORDER, "taskDefinitionId": "nope"}), 404)
    assert error["code"] == "NOT_FOUND"
    assert "nope" in error["message"]


# ---------------------------------------------------------------- 400: the envelope itself


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("truncated JSON", {"data": '{"taskDefinitionId": ', "content_type": "application/json"}),
        ("not JSON at all", {"data": "hello", "content_type": "application/json"}),
        ("NaN", {"data": '{"taskDefinitionId": "echo", "input": {"a": NaN}}'}),
        ("Infinity", {"data": '{"taskDefinitionId": "echo", "input": {"a": -Infinity}}'}),
        ("overflowing float", {"data": '{"taskDefinitionId": "echo", "input": {"a": 1e999}}'}),
        (
            "overlong integer",
            {"data": '{"taskDefinitionId": "echo", "input": {"a": 1' + "0" * 5000 + "}}"},
        ),
        ("invalid UTF-8", {"data": b'{"taskDefinitionId": "echo", "input": {"a": "\xff"}}'}),
        # Postgres stores neither NUL nor unpaired surrogates: refused, not a 500.
        ("NUL in input", {"data": r'{"taskDefinitionId": "echo", "input": {"a": "x\u0000"}}'}),
        ("NUL in a key", {"data": r'{"taskDefinitionId": "echo", "input": {"\u0000": 1}}'}),
        ("NUL in an id", {"data": r'{"taskDefinitionId": "ec\u0000ho"}'}),
        ("lone surrogate", {"data": r'{"taskDefinitionId": "echo", "input": {"a": ["\ud800"]}}'}),
    ],
)
def test_malformed_json_is_400(refusals, token, name, kwargs):
    kwargs.setdefault("content_type", "application/json")
    error = error_of(submit(refusals, token, **kwargs), 400)
    assert error["code"] == "VALIDATION_ERROR"


@pytest.mark.parametrize("body", [[SEED_ORDER], "calculate-order-total", 42, None])
def test_a_body_that_is_not_an_object_is_400(refusals, token, body):
    response = submit(refusals, token, data=json.dumps(body), content_type="application/json")
    assert error_of(response, 400)["code"] == "VALIDATION_ERROR"


def test_a_missing_body_is_400_naming_the_required_field(refusals, token):
    error = error_of(submit(refusals, token), 400)
    assert "taskDefinitionId" in json.dumps(error["details"])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"bogus": 1}, "bogus"),
        ({"executionConfig": {"retries": 3}}, "retries"),
        ({"executionConfig": {"retryPolicy": {"maxAttempts": 3}}}, "maxAttempts"),
    ],
)
def test_unknown_fields_are_400(refusals, token, change, field):
    error = error_of(submit(refusals, token, {**SEED_ORDER, **change}), 400)
    assert field in json.dumps(error["details"])


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"taskDefinitionId": 5}, "taskDefinitionId"),
        ({"taskDefinitionId": ""}, "taskDefinitionId"),
        ({"taskDefinitionId": None}, "taskDefinitionId"),
        ({"workflowInstanceId": 789}, "workflowInstanceId"),
        ({"input": "x"}, "input"),
        ({"input": [1, 2]}, "input"),
        ({"input": None}, "input"),
        ({"executionConfig": "fast"}, "executionConfig"),
        ({"executionConfig": None}, "executionConfig"),
    ],
)
def test_wrong_types_are_400(refusals, token, change, field):
    error = error_of(submit(refusals, token, {**SEED_ORDER, **change}), 400)
    assert field in json.dumps(error["details"])


@pytest.mark.parametrize("priority", ["URGENT", "high", "", 3, None])
def test_a_bad_priority_is_400(refusals, token, priority):
    error = error_of(submit(refusals, token, {**SEED_ORDER, "priority": priority}), 400)
    assert "priority" in json.dumps(error["details"])


@pytest.mark.parametrize(
    "config",
    [
        {"timeout": 0},
        {"timeout": -1},
        {"timeout": "1000"},
        {"timeout": 1.5},
        {"timeout": True},
        {"timeout": 10**12},
        {"retryPolicy": {"maxRetries": -1}},
        {"retryPolicy": {"maxRetries": 1000}},
        {"retryPolicy": {"maxRetries": "3"}},
        {"retryPolicy": {"retryInterval": -5}},
        {"retryPolicy": {"backoffMultiplier": 0.5}},
        {"retryPolicy": "often"},
    ],
)
def test_a_bad_execution_config_is_400(refusals, token, config):
    error = error_of(submit(refusals, token, {**SEED_ORDER, "executionConfig": config}), 400)
    assert (
        "executionConfig" in json.dumps(error["details"]) or "executionConfig" in error["message"]
    )


def test_nothing_is_stored_for_a_refused_submission(client, headers, backends):
    submit(client, headers, {**SEED_ORDER, "priority": "URGENT"})
    submit(client, headers, {**SEED_ORDER, "input": {}})
    submit(client, headers, {**SEED_ORDER, "taskDefinitionId": "nope"})
    conn = db.connect(backends.database_url)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM tasks")
        assert cur.fetchone()[0] == 0
    conn.close()


# ---------------------------------------------------------------- GET 404


def test_get_of_an_unknown_id_is_404(refusals, token):
    error = error_of(refusals.get(f"/api/v1/tasks/{uuid.uuid4()}", headers=token), 404)
    assert error["code"] == "NOT_FOUND"


@pytest.mark.parametrize("task_id", ["task-123456", "1", "' OR 1=1 --", "0" * 40])
def test_get_of_a_non_uuid_id_is_404(refusals, token, task_id):
    assert error_of(refusals.get(f"/api/v1/tasks/{task_id}", headers=token), 404)


# ---------------------------------------------------------------- backing services down


def test_submit_with_redis_down_is_still_201_and_left_for_the_sweeper(settings, clean_db, auth):
    app = create_app(settings.with_overrides(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    try:
        client = app.test_client()
        headers = auth.key("*")
        started = time.monotonic()
        response = submit(client, headers, SEED_ORDER)
        elapsed = time.monotonic() - started
        assert response.status_code == 201, response.get_json()
        task_id = response.get_json()["id"]
        assert client.get(f"/api/v1/tasks/{task_id}", headers=headers).status_code == 200
    finally:
        app.extensions["taskexec"].db.close()
    row = read_row(settings.database_url, task_id)
    assert row.status == "PENDING"
    assert row.published_at is None  # the sweeper publishes it at once when Redis is back
    assert elapsed < 15  # quick retries, not a hang (generous for a loaded machine)


@pytest.mark.parametrize("credentials", ["key", "token"])
def test_submit_with_postgres_down_is_503_never_500(settings, auth, credentials):
    headers = auth.key("*") if credentials == "key" else auth.token("*")
    down = settings.with_overrides(
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/none"
    )
    app = create_app(down)
    try:
        client = app.test_client()
        response = submit(client, headers, SEED_ORDER)
        error = error_of(response, 503)
        assert error["code"] == "SERVICE_UNAVAILABLE"
        assert response.headers.get("Retry-After")
        assert error_of(client.get(f"/api/v1/tasks/{uuid.uuid4()}", headers=headers), 503)
    finally:
        app.extensions["taskexec"].db.close()


def test_pool_exhaustion_is_503_not_500(settings, auth):
    # Every connection busy (a stuck query, a burst): refuse quickly rather than crash.
    app = create_app(settings.with_overrides(db_pool_max=1))
    headers = auth.token("*")
    svc = app.extensions["taskexec"]
    try:
        with svc.db.connection():
            response = submit(app.test_client(), headers, SEED_ORDER)
        assert error_of(response, 503)["code"] == "SERVICE_UNAVAILABLE"
    finally:
        svc.db.close()


def test_a_pooled_connection_the_server_closed_is_replaced_not_a_503(app, client, headers):
    # What a Postgres restart (or an idle-session kill) leaves in every process's pool.
    assert submit(client, headers, SEED_ORDER).status_code == 201
    svc = app.extensions["taskexec"]
    with svc.db.connection() as conn:
        backend = conn.get_backend_pid()
    killer = db.connect(svc.settings.database_url)
    killer.autocommit = True
    with killer.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (backend,))
        assert cur.fetchone()[0] is True
    killer.close()
    time.sleep(0.2)  # let the server's goodbye arrive
    response = submit(client, headers, SEED_ORDER)
    assert response.status_code == 201, response.get_json()


def test_escapes_that_postgres_can_store_are_accepted(client, headers):
    raw = r'{"taskDefinitionId": "echo", "input": {"emoji": "\ud83d\ude00", "text": "a\\u0000"}}'
    response = submit(client, headers, data=raw, content_type="application/json")
    assert response.status_code == 201, response.get_json()
    task = client.get(f"/api/v1/tasks/{response.get_json()['id']}", headers=headers).get_json()
    assert task["input"] == {"emoji": "\U0001f600", "text": "a\\u0000"}


@pytest.mark.parametrize(
    "path",
    ["/api/v1/tasks/ab%00cd", "/api/v1/tasks?workflowInstanceId=a%00b", "/api/v1/tasks?x%00=1"],
)
def test_nul_in_the_url_is_400(refusals, token, path):
    assert error_of(refusals.get(path, headers=token), 400)["code"] == "VALIDATION_ERROR"


def test_an_inserted_task_is_what_a_read_returns(settings, clean_db):
    # insert_tasks reads back only what the database decides (ids, times, the publish stamp)
    # and builds the rest from the rows sent: every field must equal a fresh SELECT's.
    from datetime import UTC, datetime, timedelta

    from tests.helpers import task_row

    database = db.Database(settings.database_url, max_connections=1)
    soon = datetime.now(UTC) + timedelta(hours=1)
    rows = [
        task_row(
            input={"b": [1, 2.5, None, "é"], "a": {"z": True}}, retry_policy={"maxRetries": 2}
        ),
        task_row(workflow_instance_id="wf-1", priority=3, deadline_at=soon, source="task_apis"),
        task_row(concurrency_key="k", key_limit=2, owner_limit=5, definition_limit=4),
        task_row(type="MANUAL", published=False),
    ]
    delayed = [task_row(run_at=soon), task_row(run_at=datetime.now(UTC) - timedelta(seconds=1))]
    try:
        with database.connection() as conn:
            stored = store.insert_tasks(conn, rows, {rows[0].id, rows[1].id})
            stored += store.insert_tasks(conn, delayed)
        assert [t.id for t in stored] == [r.id for r in rows + delayed]
        with database.connection() as conn:
            for task in stored:
                assert task == store.get_task(conn, task.id)
    finally:
        database.close()
