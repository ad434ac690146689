"""Cortex job statuses for every terminal state, with real Celery workers and the sweeper."""

from __future__ import annotations

from datetime import datetime

import pytest

from shared import db, store
from shared.definitions import TaskDefinition
from shared.status import TaskType
from tests.helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE = "/api/v1/task-apis"
UNSERVED = TaskDefinition(
    id="cortex-unserved",
    name="Unserved",
    description="A definition on an executor that no worker consumes",
    type=TaskType.AUTOMATED,
    version="1.0.0",
    input_schema={"type": "object"},
    output_schema={"type": "object"},
    executor="unserved-executor",
)


def submit(client, headers, api, body):
    response = client.post(f"{BASE}/{api}", json=body, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["job_id"]


def job(client, headers, api, job_id):
    response = client.get(f"{BASE}/{api}/{job_id}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["job_status"]


def wait_for_job(client, headers, api, job_id, timeout=30):
    """Poll the Task API until the job leaves status_running; return its job_status."""
    last = {}

    def finished():
        nonlocal last
        last = job(client, headers, api, job_id)
        return last if last["status"] != "status_running" else None

    try:
        return wait_for(finished, timeout, interval=0.2)
    except AssertionError:
        raise AssertionError(f"job {job_id} still running after {timeout}s: {last}") from None


def task(client, headers, job_id):
    return client.get(f"/api/v1/tasks/{job_id}", headers=headers).get_json()


def when(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture
def unserved(backends):
    conn = db.connect(backends.database_url)
    conn.autocommit = True
    store.publish_definitions(conn, [UNSERVED])
    yield UNSERVED
    with conn.cursor() as cur:
        cur.execute("DELETE FROM task_definitions WHERE id = %s", (UNSERVED.id,))
        cur.execute("DELETE FROM task_definition_versions WHERE id = %s", (UNSERVED.id,))
    conn.close()


def test_succeeded_worker_error_and_oom(client, auth, processes):
    processes.worker(concurrency=2)
    headers = auth.key("*")
    echo = submit(client, headers, "echo", {"config": {"hello": "world"}})
    payment = submit(
        client,
        headers,
        "process-payment",
        {"config": {"orderId": "ORD-1", "amount": 10, "currency": "XXX", "latencyMs": 0}},
    )
    oom = submit(client, headers, "allocate-memory", {"config": {"megabytes": 512}})

    status = wait_for_job(client, headers, "echo", echo)
    assert status["status"] == "status_succeeded"
    assert when(status["created_time"]) <= when(status["start_time"]) <= when(status["end_time"])
    assert task(client, headers, echo)["output"] == {"hello": "world"}

    status = wait_for_job(client, headers, "process-payment", payment)
    assert status["status"] == "status_worker_error", task(client, headers, payment)
    failed = task(client, headers, payment)
    assert failed["status"] == "FAILED"
    assert failed["error"]["kind"] == "TASK_ERROR"
    assert "XXX" in failed["error"]["message"]
    assert failed["executionMetadata"]["attempts"] == 1  # permanent: never retried

    status = wait_for_job(client, headers, "allocate-memory", oom)
    assert status["status"] == "status_worker_oom", task(client, headers, oom)
    assert "end_time" in status
    assert task(client, headers, oom)["error"]["kind"] == "OUT_OF_MEMORY"


def test_timeout_and_stop_end_running_jobs_and_free_the_worker(client, auth, processes):
    processes.worker(concurrency=1)
    processes.sweeper()
    headers = auth.key("*")

    # Timed out: a 60 s sleep with an 8 s timeout since submission. It queues behind a 3 s
    # sleep, so the sweeper's deadline (8 s after submission) comes at least 3 s before the
    # attempt's own time limit (8 s after it started): this is the sweeper revoking a running
    # job, not the worker's soft time limit.
    submit(client, headers, "sleep", {"config": {"seconds": 3}})
    slow = submit(client, headers, "sleep", {"timeout": 8, "config": {"seconds": 60}})
    wait_for(lambda: task(client, headers, slow)["status"] == "RUNNING", 15)
    status = wait_for_job(client, headers, "sleep", slow, timeout=30)
    assert status["status"] == "status_timed_out", task(client, headers, slow)
    elapsed = (when(status["end_time"]) - when(status["created_time"])).total_seconds()
    assert 8 <= elapsed < 25
    assert task(client, headers, slow)["error"]["code"] == "DEADLINE_EXCEEDED"
    # The only worker slot is free again: the sleep was really stopped.
    quick = submit(client, headers, "echo", {"config": {"n": 1}})
    assert wait_for_job(client, headers, "echo", quick)["status"] == "status_succeeded"

    # Stopped: DELETE a running sleep.
    running = submit(client, headers, "sleep", {"config": {"seconds": 60}})
    wait_for(lambda: task(client, headers, running)["status"] == "RUNNING", 15)
    response = client.delete(f"{BASE}/sleep/{running}", headers=headers)
    assert response.get_json() == {"message": f"stopped job {running}"}
    status = job(client, headers, "sleep", running)
    assert status["status"] == "status_stopped" and "end_time" in status
    wait_for(lambda: task(client, headers, running)["attempts"][0]["endTime"], 20)
    assert task(client, headers, running)["attempts"][0]["status"] == "CANCELLED"
    quick = submit(client, headers, "echo", {"config": {"n": 2}})
    assert wait_for_job(client, headers, "echo", quick)["status"] == "status_succeeded"
    assert job(client, headers, "sleep", running)["status"] == "status_stopped"


def test_a_job_on_an_executor_without_workers_times_out_unstarted(
    client, auth, processes, unserved
):
    processes.worker(concurrency=1)  # standard-executor is served; unserved-executor is not
    processes.sweeper()
    headers = auth.key("*")
    stuck = submit(client, headers, unserved.id, {"timeout": 1, "config": {}})
    served = submit(client, headers, "echo", {"timeout": 30, "config": {}})
    assert wait_for_job(client, headers, "echo", served)["status"] == "status_succeeded"
    status = wait_for_job(client, headers, unserved.id, stuck, timeout=20)
    assert status["status"] == "status_timed_out"
    assert status["start_time"] is None  # never started
    elapsed = (when(status["end_time"]) - when(status["created_time"])).total_seconds()
    assert 1 <= elapsed < 15
    assert task(client, headers, stuck)["executionMetadata"]["attempts"] == 0


def test_a_job_times_out_while_no_worker_runs_at_all(client, auth, processes):
    processes.sweeper()
    headers = auth.key("*")
    queued = submit(client, headers, "sleep", {"timeout": 1, "config": {"seconds": 1}})
    status = wait_for_job(client, headers, "sleep", queued, timeout=20)
    assert status["status"] == "status_timed_out"
    assert status["start_time"] is None
    elapsed = (when(status["end_time"]) - when(status["created_time"])).total_seconds()
    assert 1 <= elapsed < 15
    assert task(client, headers, queued)["status"] == "TIMED_OUT"
