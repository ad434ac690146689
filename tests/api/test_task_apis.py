"""The Cortex Task API surface (seed 003) through the test client against a real Postgres."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from api.responses.cortex import cortex_status
from shared import db, store
from shared.definitions import TaskDefinition
from shared.status import Status, TaskType
from workers.definitions import DIAGNOSTICS, load_registry

BASE = "/api/v1/task-apis"
BUILTIN = load_registry(DIAGNOSTICS)
CORTEX_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
SUBMIT_KEYS = [
    "job_id",
    "api_name",
    "kind",
    "workers",
    "config",
    "api_id",
    "timeout",
    "created_time",
]
STATUS_KEYS = [
    "job_id",
    "api_name",
    "kind",
    "workers",
    "config",
    "api_id",
    "status",
    "created_time",
    "start_time",
]
GREETER = TaskDefinition(
    id="cortex-greeter",
    name="Cortex Greeter",
    description="A test definition with a default config, on an executor no worker consumes",
    type=TaskType.AUTOMATED,
    version="2.1.0",
    input_schema={
        "type": "object",
        "properties": {"greeting": {"type": "string"}, "times": {"type": "integer"}},
        "required": ["greeting", "times"],
    },
    output_schema={"type": "object"},
    executor="unserved-executor",
    default_config={"greeting": "hello", "times": 1},
    resource_requirements={"cpu": "0.5", "memory": "64Mi"},
)


def parse_time(text: str) -> datetime:
    assert CORTEX_TIME.match(text), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def conn(backends):
    connection = db.connect(backends.database_url)
    connection.autocommit = True
    yield connection
    connection.close()


@pytest.fixture
def greeter(conn):
    """Publish a definition with a default config for one test, and remove it afterwards."""
    store.publish_definitions(conn, [GREETER])
    yield GREETER
    with conn.cursor() as cur:
        cur.execute("DELETE FROM task_definitions WHERE id = %s", (GREETER.id,))
        cur.execute("DELETE FROM task_definition_versions WHERE id = %s", (GREETER.id,))


def submit(client, headers, api="echo", body=None):
    response = client.post(f"{BASE}/{api}", json=body if body is not None else {}, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def assert_error(response, status, code):
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    return body["error"]


# ------------------------------------------------------------------ submit (seed: "Submit a Job")


def test_submit_response_matches_the_seed_field_by_field(client, auth, conn):
    headers = auth.key("*")
    before = datetime.now(UTC)
    response = client.post(
        f"{BASE}/sleep", json={"timeout": 60, "config": {"seconds": 5}}, headers=headers
    )
    assert response.status_code == 200
    body = response.get_json()
    assert list(body) == SUBMIT_KEYS  # exactly the seed's fields, in its order
    assert str(uuid.UUID(body["job_id"])) == body["job_id"]
    assert body["api_name"] == "sleep"
    assert body["kind"] == "TaskAPI"
    assert body["workers"] == 1
    assert body["config"] == {"seconds": 5}
    assert body["api_id"] == f"sleep-{BUILTIN.get('sleep').version}"
    assert body["timeout"] == 60
    created = parse_time(body["created_time"])
    assert before - timedelta(seconds=5) < created < datetime.now(UTC) + timedelta(seconds=5)

    # The job is a task: same id, input and status through the main API.
    task = client.get(f"/api/v1/tasks/{body['job_id']}", headers=headers).get_json()
    assert task["taskDefinitionId"] == "sleep"
    assert task["input"] == {"seconds": 5}
    assert task["status"] == "PENDING"
    # The per-attempt limit never outlasts the job's timeout (sleep's own is one hour).
    assert task["executionConfig"]["timeout"] == 60_000
    row = store.get_task(conn, uuid.UUID(body["job_id"]))
    assert row.source == "task_apis"
    # "Since submission" is exact against the created_time the response reports.
    assert row.deadline_at - row.created_at == timedelta(seconds=60)


def test_submit_without_body_or_timeout_uses_the_defaults(client, auth, conn):
    headers = auth.key("*")
    response = client.post(f"{BASE}/echo", headers=headers)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert list(body) == SUBMIT_KEYS
    assert body["config"] == {} and body["timeout"] is None
    row = store.get_task(conn, uuid.UUID(body["job_id"]))
    assert row.deadline_at is None
    assert row.timeout_ms == 60_000  # echo's own attempt timeout, untouched


def test_config_is_merged_over_the_definition_default_config(client, auth, greeter):
    headers = auth.key("*")
    body = submit(client, headers, greeter.id, {"config": {"times": 3}})
    assert body["config"] == {"greeting": "hello", "times": 3}
    assert body["api_id"] == "cortex-greeter-2.1.0"
    task = client.get(f"/api/v1/tasks/{body['job_id']}", headers=headers).get_json()
    assert task["input"] == {"greeting": "hello", "times": 3}
    # No config at all: the default config alone is the input.
    assert submit(client, headers, greeter.id)["config"] == {"greeting": "hello", "times": 1}


def test_unknown_api_is_not_found(client, auth):
    headers = auth.key("*")
    error = assert_error(
        client.post(f"{BASE}/no-such-api", json={}, headers=headers), 404, "NOT_FOUND"
    )
    assert "no-such-api" in error["message"]
    assert_error(client.get(f"{BASE}/no-such-api", headers=headers), 404, "NOT_FOUND")


def test_config_failing_the_input_schema_is_422(client, auth):
    headers = auth.key("*")
    response = client.post(f"{BASE}/sleep", json={"config": {"seconds": "soon"}}, headers=headers)
    error = assert_error(response, 422, "VALIDATION_ERROR")
    assert error["details"]["field"] == "$.seconds"
    response = client.post(f"{BASE}/sleep", json={"config": {}}, headers=headers)
    assert_error(response, 422, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    "body",
    [
        {"timeout": 0},
        {"timeout": -5},
        {"timeout": 1.5},
        {"timeout": "60"},
        {"timeout": True},
        {"timeout": 10**9},
        {"config": [1, 2]},
        {"config": "x"},
        {"unexpected": 1},
        [],
    ],
)
def test_malformed_bodies_are_400(client, auth, body):
    response = client.post(f"{BASE}/echo", json=body, headers=auth.key("*"))
    assert_error(response, 400, "VALIDATION_ERROR")


def test_a_body_that_is_not_json_is_refused_not_ignored(client, auth):
    response = client.post(
        f"{BASE}/echo",
        data='{"config": {"a": 1}}',
        headers={**auth.key("*"), "Content-Type": "text/plain"},
    )
    assert_error(response, 400, "VALIDATION_ERROR")


# ------------------------------------------------------------------ status (seed: "Job status")


def test_job_status_matches_the_seed_in_both_forms(client, auth):
    headers = auth.key("*")
    job = submit(client, headers, "echo", {"config": {"x": 1}, "timeout": 30})
    by_query = client.get(f"{BASE}/echo?jobID={job['job_id']}", headers=headers)
    by_path = client.get(f"{BASE}/echo/{job['job_id']}", headers=headers)
    assert by_query.status_code == by_path.status_code == 200
    body = by_query.get_json()
    assert body == by_path.get_json()
    assert list(body) == ["job_status", "endpoint", "api_spec"]
    status = body["job_status"]
    assert list(status) == STATUS_KEYS  # no end_time while it has not finished
    assert status["job_id"] == job["job_id"]
    assert status["api_name"] == "echo"
    assert status["kind"] == "TaskAPI"
    assert status["workers"] == 1
    assert status["config"] == {"x": 1}
    echo_version = BUILTIN.get("echo").version
    assert status["api_id"] == job["api_id"] == f"echo-{echo_version}"
    assert status["status"] == "status_running"
    assert status["created_time"] == job["created_time"]
    assert status["start_time"] is None  # no worker has started it yet
    assert body["endpoint"] == "http://localhost/api/v1/task-apis/echo"
    spec = body["api_spec"]
    assert spec["name"] == "echo" and spec["kind"] == "TaskAPI" and spec["id"] == job["api_id"]
    assert spec["definition"]["id"] == "echo"
    assert spec["definition"]["version"] == echo_version
    assert spec["definition"]["inputSchema"] == {"type": "object"}
    assert spec["definition"]["executionConfig"]["executor"] == "standard-executor"
    assert spec["definition"]["config"] == {}
    assert spec["networking"] == {"endpoint": "/api/v1/task-apis/echo"}


def test_finished_job_has_start_and_end_times(client, auth, conn):
    headers = auth.key("*")
    job = submit(client, headers, "echo", {"config": {"x": 1}})
    tid = uuid.UUID(job["job_id"])
    store.claim_task(conn, tid, "host-a", 42, 30)
    store.finish_attempt(conn, tid, 1, Status.COMPLETED, output={"x": 1})
    status = client.get(f"{BASE}/echo/{tid}", headers=headers).get_json()["job_status"]
    assert list(status) == [*STATUS_KEYS, "end_time"]
    assert status["status"] == "status_succeeded"
    created = parse_time(status["created_time"])
    started = parse_time(status["start_time"])
    ended = parse_time(status["end_time"])
    assert created <= started <= ended


def _fail(kind):
    def move(conn, tid):
        store.claim_task(conn, tid, "host-a", 42, 30)
        error = {"code": "X", "message": "x"} | ({"kind": kind} if kind else {})
        store.fail_task(conn, tid, Status.FAILED, error, attempt=1)

    return move


def _claim(conn, tid):
    store.claim_task(conn, tid, "host-a", 42, 30)


def _retrying(conn, tid):
    _claim(conn, tid)
    error = {"code": "TASK_ERROR", "message": "x", "kind": "TASK_ERROR"}
    store.schedule_retry(conn, tid, 1, error=error, delay_ms=60_000, published=False)


def _timed_out(conn, tid):
    error = {"code": "DEADLINE_EXCEEDED", "message": "x", "kind": "TASK_ERROR"}
    store.fail_task(conn, tid, Status.TIMED_OUT, error, attempt=None)


def _completed(conn, tid):
    _claim(conn, tid)
    store.finish_attempt(conn, tid, 1, Status.COMPLETED, output={})


def _cancelled(conn, tid):
    store.cancel_task(conn, tid, owner=None, reason="r", by="alice", force=False)


@pytest.mark.parametrize(
    ("move", "task_status", "expected"),
    [
        (lambda conn, tid: None, "PENDING", "status_running"),
        (_claim, "RUNNING", "status_running"),
        (_retrying, "RETRYING", "status_running"),
        (_completed, "COMPLETED", "status_succeeded"),
        (_fail("TASK_ERROR"), "FAILED", "status_worker_error"),
        (_fail("OUT_OF_MEMORY"), "FAILED", "status_worker_oom"),
        (_fail("WORKER_LOST"), "FAILED", "status_unexpected_error"),
        (_fail("INTERNAL"), "FAILED", "status_unexpected_error"),
        (_fail(None), "FAILED", "status_unknown"),
        (_timed_out, "TIMED_OUT", "status_timed_out"),
        (_cancelled, "CANCELLED", "status_stopped"),
    ],
)
def test_every_task_status_maps_to_the_cortex_vocabulary(
    client, auth, conn, move, task_status, expected
):
    headers = auth.key("*")
    job = submit(client, headers, "echo")
    move(conn, uuid.UUID(job["job_id"]))
    task = client.get(f"/api/v1/tasks/{job['job_id']}", headers=headers).get_json()
    assert task["status"] == task_status  # the same task, consistent on both surfaces
    status = client.get(f"{BASE}/echo/{job['job_id']}", headers=headers).get_json()["job_status"]
    assert status["status"] == expected
    assert ("end_time" in status) == (
        task_status in {"COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"}
    )


def test_unreadable_statuses_are_status_unknown():
    assert cortex_status("SOMETHING_NEW", None) == "status_unknown"
    assert cortex_status("FAILED", "not an object") == "status_unknown"
    assert cortex_status("FAILED", {"kind": "NEW_KIND"}) == "status_unknown"


def test_jobs_of_another_api_or_owner_are_not_found(client, auth):
    alice = auth.key("*", owner="alice")
    job = submit(client, alice, "echo")
    # The job exists, but not as a job of `sleep`.
    assert_error(client.get(f"{BASE}/sleep/{job['job_id']}", headers=alice), 404, "NOT_FOUND")
    assert_error(client.get(f"{BASE}/sleep?jobID={job['job_id']}", headers=alice), 404, "NOT_FOUND")
    assert_error(client.delete(f"{BASE}/sleep/{job['job_id']}", headers=alice), 404, "NOT_FOUND")
    assert_error(client.get(f"{BASE}/echo/{uuid.uuid4()}", headers=alice), 404, "NOT_FOUND")
    assert_error(client.get(f"{BASE}/echo/not-a-uuid", headers=alice), 404, "NOT_FOUND")
    # Tenancy: bob does not see alice's job; an admin does.
    bob = auth.key("*", owner="bob")
    bob_reader = auth.key(["tasks:read", "tasks:cancel"], owner="bob")
    assert_error(client.get(f"{BASE}/echo/{job['job_id']}", headers=bob_reader), 404, "NOT_FOUND")
    assert_error(
        client.delete(f"{BASE}/echo/{job['job_id']}", headers=bob_reader), 404, "NOT_FOUND"
    )
    admin = auth.key(["tasks:read", "tasks:admin"], owner="root")
    assert client.get(f"{BASE}/echo/{job['job_id']}", headers=admin).status_code == 200
    assert client.get(f"{BASE}/echo/{job['job_id']}", headers=bob).status_code == 200  # * = admin


def test_a_task_submitted_through_the_main_api_is_a_job_of_its_definition(client, auth):
    headers = auth.key("*")
    created = client.post(
        "/api/v1/tasks", json={"taskDefinitionId": "echo", "input": {"k": "v"}}, headers=headers
    ).get_json()
    status = client.get(f"{BASE}/echo/{created['id']}", headers=headers).get_json()["job_status"]
    assert status["config"] == {"k": "v"} and status["status"] == "status_running"


def test_a_job_id_query_must_not_be_empty(client, auth):
    headers = auth.key("*")
    assert_error(client.get(f"{BASE}/echo?jobID=", headers=headers), 400, "VALIDATION_ERROR")
    error = assert_error(client.delete(f"{BASE}/echo", headers=headers), 400, "VALIDATION_ERROR")
    assert error["details"]["field"] == "jobID"


# ------------------------------------------------------------------ stop (seed: "Stop a Job")


@pytest.mark.parametrize("form", ["path", "query"])
def test_delete_stops_a_job_then_it_is_status_stopped(client, auth, form):
    headers = auth.key("*")
    job_id = submit(client, headers, "sleep", {"config": {"seconds": 30}})["job_id"]
    url = f"{BASE}/sleep/{job_id}" if form == "path" else f"{BASE}/sleep?jobID={job_id}"
    response = client.delete(url, headers=headers)
    assert response.status_code == 200
    assert response.get_json() == {"message": f"stopped job {job_id}"}
    status = client.get(f"{BASE}/sleep/{job_id}", headers=headers).get_json()["job_status"]
    assert status["status"] == "status_stopped"
    assert "end_time" in status
    task = client.get(f"/api/v1/tasks/{job_id}", headers=headers).get_json()
    assert task["status"] == "CANCELLED"
    assert task["cancellation"]["reason"] == "stopped through the Task API"
    # Stopping a finished job is a conflict, in the usual envelope.
    error = assert_error(client.delete(url, headers=headers), 409, "CONFLICT")
    assert error["details"] == {"status": "CANCELLED"}


# ------------------------------------------------------------------ the API itself


def test_get_api_shows_its_spec_and_its_in_progress_and_recent_jobs(client, auth, greeter):
    headers = auth.key("*", owner="alice")
    running = submit(client, headers, greeter.id)["job_id"]
    stopped = submit(client, headers, greeter.id)["job_id"]
    client.delete(f"{BASE}/{greeter.id}/{stopped}", headers=headers)
    submit(client, auth.key("*", owner="bob"), "echo")  # another API's job
    other_owner = auth.key(["tasks:execute"], owner="carol")
    submit(client, other_owner, greeter.id)  # another owner's job of this API
    reader = auth.key(["tasks:definitions:read", "tasks:list"], owner="alice")
    response = client.get(f"{BASE}/{greeter.id}", headers=reader)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert list(body) == ["api_spec", "endpoint", "task_job_statuses", "recent_job_statuses"]
    assert body["endpoint"] == f"http://localhost/api/v1/task-apis/{greeter.id}"
    spec = body["api_spec"]
    assert spec["name"] == greeter.id and spec["id"] == "cortex-greeter-2.1.0"
    assert spec["definition"]["config"] == {"greeting": "hello", "times": 1}
    assert spec["definition"]["defaultConfig"] == {"greeting": "hello", "times": 1}
    assert spec["definition"]["name"] == "Cortex Greeter"
    assert spec["definition"]["inputSchema"] == greeter.input_schema
    assert spec["definition"]["executionConfig"]["executor"] == "unserved-executor"
    assert spec["compute"] == {"cpu": "0.5", "gpu": 0, "mem": "64Mi"}
    assert [j["job_id"] for j in body["task_job_statuses"]] == [running]
    assert [j["job_id"] for j in body["recent_job_statuses"]] == [stopped]
    assert body["recent_job_statuses"][0]["status"] == "status_stopped"


def test_get_api_lists_are_bounded(client, auth):
    headers = auth.key("*")
    ids = [submit(client, headers, "echo")["job_id"] for _ in range(23)]
    cancelled = client.post("/api/v1/tasks/cancel", json={"ids": ids}, headers=headers)
    assert cancelled.status_code == 200
    body = client.get(f"{BASE}/echo", headers=headers).get_json()
    assert body["task_job_statuses"] == []
    recent = [j["job_id"] for j in body["recent_job_statuses"]]
    assert len(recent) == 20
    assert set(recent) <= set(ids)


# ------------------------------------------------------------------ auth


@pytest.mark.parametrize(
    ("method", "path", "permission"),
    [
        ("post", "/echo", "tasks:execute"),
        ("get", "/echo?jobID={job}", "tasks:read"),
        ("get", "/echo/{job}", "tasks:read"),
        ("delete", "/echo?jobID={job}", "tasks:cancel"),
        ("delete", "/echo/{job}", "tasks:cancel"),
        ("get", "/echo", "tasks:definitions:read"),
    ],
)
def test_each_operation_needs_the_main_apis_permission(client, auth, method, path, permission):
    owner = auth.key("*", owner="alice")
    job = submit(client, owner, "echo")["job_id"]
    url = BASE + path.format(job=job)
    call = getattr(client, method)
    kwargs = {"json": {}} if method == "post" else {}
    assert_error(call(url, **kwargs), 401, "UNAUTHORIZED")
    others = [
        p for p in ("tasks:execute", "tasks:read", "tasks:cancel", "tasks:list") if p != permission
    ]
    error = assert_error(
        call(url, headers=auth.key(others, owner="alice"), **kwargs), 403, "FORBIDDEN"
    )
    assert error["details"] == {"required": permission}
    needed = [permission, "tasks:list"] if permission == "tasks:definitions:read" else [permission]
    response = call(url, headers=auth.key(needed, owner="alice"), **kwargs)
    assert response.status_code == 200, response.get_json()


def test_listing_an_apis_jobs_also_needs_tasks_list(client, auth):
    error = assert_error(
        client.get(f"{BASE}/echo", headers=auth.key(["tasks:definitions:read"])), 403, "FORBIDDEN"
    )
    assert error["details"] == {"required": "tasks:list"}


def test_bearer_tokens_work_as_on_the_main_api(client, auth):
    token = auth.token(["tasks:execute", "tasks:read"], subject="dave")
    job = submit(client, token, "echo", {"config": {"n": 1}})
    status = client.get(f"{BASE}/echo/{job['job_id']}", headers=token).get_json()["job_status"]
    assert status["config"] == {"n": 1}
