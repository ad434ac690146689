"""Cancel with real workers: waiting tasks, graceful, escalated and forced stops, bulk, answers."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from shared.status import TERMINAL
from tests.helpers import get, submit, wait_for, wait_for_status
from tests.integration.extra_definitions import MODULE

pytestmark = pytest.mark.integration
EXTRA = {"TASKEXEC_DEFINITION_MODULES": MODULE}


def cancel(client, headers, task_id: str, **body):
    return client.post(f"/api/v1/tasks/{task_id}/cancel", json=body, headers=headers)


def pid_of(task: dict) -> int:
    return int(task["executionMetadata"]["executionEnvironment"].rsplit(":", 1)[1])


def alive(pid: int) -> bool:
    """Say whether a process runs (a zombie waiting to be reaped counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def attempt_closed(client, headers, task_id: str) -> dict | None:
    """The task once its last attempt has ended (its handler stopped), else None."""
    task = get(client, headers, task_id)
    attempts = task["attempts"]
    return task if attempts and attempts[-1]["endTime"] else None


def running(client, headers, *task_ids: str) -> list[dict]:
    return [wait_for_status(client, headers, t, {"RUNNING"}) for t in task_ids]


def stop(proc) -> None:
    """Stop one worker (warm shutdown of its whole process group)."""
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(20)


def worker_log(proc) -> str:
    return Path(proc.log_path).read_text(errors="replace")


def test_cancelled_waiting_tasks_never_start_even_after_every_worker_restarts(
    client, auth, processes
):
    processes.sweeper()  # it must not resurrect them either
    first = processes.worker(concurrency=1)
    headers = auth.key("*")
    retrying = submit(
        client,
        headers,
        "flaky",
        {"failTimes": 5},
        executionConfig={"retryPolicy": {"maxRetries": 3, "retryInterval": 4000}},
    )
    assert wait_for_status(client, headers, retrying, {"RETRYING"})["error"]
    failed_at = time.time()  # just after attempt 1 ended, when its 4 s wait began
    stop(first)
    pending = submit(client, headers, "sleep", {"seconds": 0.1})

    for task_id in (retrying, pending):
        response = cancel(client, headers, task_id, reason="not needed")
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["status"] == "CANCELLED"

    second = processes.worker(concurrency=1)
    marker = submit(client, headers, "echo", {"after": "restart"})
    assert wait_for_status(client, headers, marker, TERMINAL)["status"] == "COMPLETED"
    # The pending task's message, queued before the marker's, was delivered and refused.
    assert f"nothing to claim for {pending}" in worker_log(second)
    # Wait until well past the retry's due time; the sweeper has had many rounds by then.
    time.sleep(max(0.0, failed_at + 4.0 + 1.0 - time.time()))

    task = get(client, headers, retrying)
    assert task["status"] == "CANCELLED" and task["executionMetadata"]["attempts"] == 1
    task = get(client, headers, pending)
    assert task["status"] == "CANCELLED" and task["executionMetadata"]["attempts"] == 0
    assert task["attempts"] == [] and task["executionMetadata"]["startTime"] is None
    assert task["cancellation"]["reason"] == "not needed"


def test_graceful_cancel_stops_the_handler_and_frees_the_slot(client, auth, processes):
    processes.worker(concurrency=1)
    headers = auth.key("*", owner="carol")
    slow = submit(client, headers, "sleep", {"seconds": 30})
    (task,) = running(client, headers, slow)
    pid = pid_of(task)

    response = cancel(client, headers, slow, reason="user asked", force=False)
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == slow and body["status"] == "CANCELLED" and body["updatedAt"]

    task = wait_for(lambda: attempt_closed(client, headers, slow), timeout=15)
    assert task["status"] == "CANCELLED" and task["output"] is None
    assert task["attempts"][0]["status"] == "CANCELLED"
    assert task["cancellation"]["reason"] == "user asked"
    assert task["cancellation"]["by"] == "carol" and task["cancellation"]["force"] is False
    assert task["cancellation"]["requestedAt"]

    # With one slot, the next task runs at once, in the same child: it was not killed.
    after = submit(client, headers, "echo", {})
    done = wait_for_status(client, headers, after, TERMINAL, timeout=15)
    assert done["status"] == "COMPLETED" and pid_of(done) == pid
    # The handler was told, not killed: it had the chance to clean up (it logged).
    lines = client.get(f"/api/v1/tasks/{slow}/logs", headers=headers).get_json()["items"]
    assert any("TaskCancelled" in line["message"] for line in lines)
    assert get(client, headers, slow)["status"] == "CANCELLED"


def test_handlers_ignoring_the_cancel_get_sigterm_then_sigkill(client, auth, processes):
    worker = processes.worker(concurrency=2, extra_env=EXTRA)
    headers = auth.key("*")
    ignores_flag = submit(client, headers, "sleep", {"seconds": 60, "ignoreCancel": True})
    ignores_term = submit(client, headers, "test-deaf-sleep", {"seconds": 60})
    first, second = (pid_of(t) for t in running(client, headers, ignores_flag, ignores_term))

    for task_id in (ignores_flag, ignores_term):
        assert cancel(client, headers, task_id).status_code == 200
    # The flag-ignoring child dies of SIGTERM; the one deaf to SIGTERM needs SIGKILL.
    exits = (
        f"pid:{first} exited with 'signal 15 (SIGTERM)'",
        f"pid:{second} exited with 'signal 9 (SIGKILL)'",
    )
    wait_for(lambda: all(line in worker_log(worker) for line in exits), timeout=20)
    for task_id in (ignores_flag, ignores_term):
        task = wait_for(lambda t=task_id: attempt_closed(client, headers, t), timeout=10)
        assert task["status"] == "CANCELLED" and task["attempts"][0]["status"] == "CANCELLED"
        assert task["executionMetadata"]["attempts"] == 1  # not retried as a lost worker

    # A handler that finishes before the grace period still never makes the task COMPLETED.
    short = submit(client, headers, "test-deaf-sleep", {"seconds": 1.5})
    (task,) = running(client, headers, short)
    assert cancel(client, headers, short).status_code == 200
    task = wait_for(lambda: attempt_closed(client, headers, short), timeout=10)
    assert task["status"] == "CANCELLED" and task["output"] is None
    assert task["attempts"][0]["status"] == "CANCELLED"
    assert alive(pid_of(task))  # it returned on its own; nothing was killed

    # Both slots serve again.
    echoes = [submit(client, headers, "echo", {"n": n}) for n in range(2)]
    assert all(
        wait_for_status(client, headers, e, TERMINAL)["status"] == "COMPLETED" for e in echoes
    )


def test_force_cancel_interrupts_the_handler_and_frees_its_slot_at_once(client, auth, processes):
    # A grace of a minute: only the forced path can stop a handler that ignores the flag.
    processes.worker(concurrency=1, extra_env={"TASKEXEC_CANCEL_GRACE": "60"})
    headers = auth.key("*")
    doomed = submit(client, headers, "sleep", {"seconds": 60, "ignoreCancel": True})
    (running_task,) = running(client, headers, doomed)
    response = cancel(client, headers, doomed, reason="stop now", force=True)
    assert response.status_code == 200 and response.get_json()["status"] == "CANCELLED"
    task = wait_for(lambda: attempt_closed(client, headers, doomed), timeout=10)
    assert task["attempts"][0]["status"] == "CANCELLED"
    # The same child, interrupted rather than killed, takes the next task.
    quick = submit(client, headers, "echo", {})
    quick_done = wait_for_status(client, headers, quick, TERMINAL, timeout=10)
    assert quick_done["status"] == "COMPLETED"
    assert pid_of(quick_done) == pid_of(running_task) and alive(pid_of(running_task))
    assert get(client, headers, doomed)["status"] == "CANCELLED"


def test_force_cancel_kills_a_handler_that_ignores_the_interrupt_and_no_other(
    client, auth, processes
):
    # A grace of a minute: only the forced path can stop a handler that ignores the flag.
    processes.worker(concurrency=2, extra_env={"TASKEXEC_CANCEL_GRACE": "60"})
    headers = auth.key("*")
    doomed = submit(
        client, headers, "sleep", {"seconds": 60, "ignoreCancel": True, "ignoreSoftLimit": True}
    )
    neighbour = submit(client, headers, "sleep", {"seconds": 6})
    doomed_pid, neighbour_pid = (pid_of(t) for t in running(client, headers, doomed, neighbour))
    assert doomed_pid != neighbour_pid

    response = cancel(client, headers, doomed, reason="stop now", force=True)
    assert response.status_code == 200 and response.get_json()["status"] == "CANCELLED"
    wait_for(lambda: not alive(doomed_pid), timeout=10)
    task = wait_for(lambda: attempt_closed(client, headers, doomed), timeout=10)
    assert task["status"] == "CANCELLED" and task["attempts"][0]["status"] == "CANCELLED"
    assert task["cancellation"]["force"] is True

    # The freed slot takes new work while the neighbour still sleeps, untouched.
    quick = submit(client, headers, "echo", {})
    quick_done = wait_for_status(client, headers, quick, TERMINAL)
    assert quick_done["status"] == "COMPLETED" and pid_of(quick_done) != doomed_pid
    task = wait_for_status(client, headers, neighbour, TERMINAL, timeout=20)
    assert task["status"] == "COMPLETED" and task["output"]["slept"] >= 6, task
    assert pid_of(task) == neighbour_pid and alive(neighbour_pid)
    assert task["executionMetadata"]["attempts"] == 1
    assert quick_done["executionMetadata"]["endTime"] < task["executionMetadata"]["endTime"]


def test_cancel_answers_404_409_and_400(client, auth):
    headers = auth.key("*")
    pending = submit(client, headers, "sleep", {"seconds": 1})  # no worker: it stays PENDING

    for body in ({"force": "maybe"}, {"reason": 5}, {"surprise": True}, ["force"]):
        response = client.post(f"/api/v1/tasks/{pending}/cancel", json=body, headers=headers)
        assert response.status_code == 400, body
        assert response.get_json()["error"]["code"] == "VALIDATION_ERROR"
    response = client.post(
        f"/api/v1/tasks/{pending}/cancel",
        data="{not json",
        headers=headers,
        content_type="application/json",
    )
    assert response.status_code == 400
    assert get(client, headers, pending)["status"] == "PENDING"  # nothing was cancelled

    for unknown in (str(uuid.uuid4()), "not-a-task-id"):
        response = cancel(client, headers, unknown)
        assert response.status_code == 404
        assert response.get_json()["error"]["code"] == "NOT_FOUND"
    # Another tenant's task is unknown to bob.
    bob = auth.key(["tasks:cancel", "tasks:read"], owner="bob")
    assert cancel(client, bob, pending).status_code == 404

    # No body at all is a plain, graceful cancel.
    response = client.post(f"/api/v1/tasks/{pending}/cancel", headers=headers)
    assert response.status_code == 200 and response.get_json()["status"] == "CANCELLED"
    response = cancel(client, headers, pending)
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "CONFLICT"
    assert response.get_json()["error"]["details"] == {"status": "CANCELLED"}

    # A completed task (a manual one, completed through the API) cannot be cancelled either.
    manual = submit(client, headers, "approve-order", {"orderId": "o-1"})
    completed = client.post(
        f"/api/v1/tasks/{manual}/complete", json={"output": {"approved": True}}, headers=headers
    )
    assert completed.status_code == 200
    response = cancel(client, headers, manual, force=True)
    assert response.status_code == 409
    assert get(client, headers, manual)["status"] == "COMPLETED"


def test_bulk_cancel_by_workflow_and_by_ids(client, auth, processes):
    processes.worker(concurrency=2)
    headers = auth.key("*")
    flow = {"workflowInstanceId": "wf-stop"}
    runs = [submit(client, headers, "sleep", {"seconds": 30}, **flow) for _ in range(2)]
    pids = [pid_of(t) for t in running(client, headers, *runs)]
    queued = submit(client, headers, "sleep", {"seconds": 30}, **flow)
    manual = submit(client, headers, "approve-order", {"orderId": "o-2"}, **flow)
    client.post(
        f"/api/v1/tasks/{manual}/complete", json={"output": {"approved": False}}, headers=headers
    )
    other = submit(client, headers, "sleep", {"seconds": 0.2}, workflowInstanceId="wf-other")

    response = client.post(
        "/api/v1/tasks/cancel", json={**flow, "reason": "workflow stopped"}, headers=headers
    )
    assert response.status_code == 200
    items = {item["id"]: item for item in response.get_json()["items"]}
    assert set(items) == {*runs, queued, manual}
    assert all(items[t]["status"] == "CANCELLED" for t in (*runs, queued))
    assert items[manual]["error"]["code"] == "CONFLICT"

    for task_id in runs:
        task = wait_for(lambda t=task_id: attempt_closed(client, headers, t), timeout=15)
        assert task["status"] == "CANCELLED" and task["attempts"][0]["status"] == "CANCELLED"
        assert task["cancellation"]["reason"] == "workflow stopped"
    assert all(alive(pid) for pid in pids)  # cooperative: the children live on
    assert wait_for_status(client, headers, other, TERMINAL)["status"] == "COMPLETED"
    assert get(client, headers, queued)["executionMetadata"]["attempts"] == 0

    # By ids, forced, with a duplicate, an unknown id and a malformed one.
    target = submit(client, headers, "sleep", {"seconds": 30, "ignoreCancel": True})
    (task,) = running(client, headers, target)
    unknown = str(uuid.uuid4())
    response = client.post(
        "/api/v1/tasks/cancel",
        json={"ids": [target, unknown, "junk", target], "force": True},
        headers=headers,
    )
    assert response.status_code == 200
    items = response.get_json()["items"]
    assert [item["id"] for item in items] == [target, unknown, "junk"]
    assert items[0]["status"] == "CANCELLED"
    assert items[1]["error"]["code"] == items[2]["error"]["code"] == "NOT_FOUND"
    closed = wait_for(lambda: attempt_closed(client, headers, target), timeout=10)
    assert closed["attempts"][0]["status"] == "CANCELLED" and closed["cancellation"]["force"]
    assert alive(pid_of(task))  # interrupted, not killed: the child serves on
    assert get(client, headers, other)["status"] == "COMPLETED"

    for body in ({}, {"ids": [target], **flow}, {"ids": []}):
        response = client.post("/api/v1/tasks/cancel", json=body, headers=headers)
        assert response.status_code == 400, body
        assert response.get_json()["error"]["code"] == "VALIDATION_ERROR"


def test_the_sweeper_closes_and_revokes_an_attempt_whose_worker_vanished(client, auth, processes):
    # A grace of a minute: when the worker wakes up, its own escalation is far off.
    worker = processes.worker(concurrency=1, extra_env={"TASKEXEC_CANCEL_GRACE": "60"})
    headers = auth.key("*")
    task_id = submit(client, headers, "sleep", {"seconds": 60, "ignoreCancel": True})
    wait_for_status(client, headers, task_id, {"RUNNING"})
    # Its worker goes silent for good (a host lost with the network): nothing can stop the
    # attempt cooperatively or record its end.
    os.killpg(worker.pid, signal.SIGSTOP)
    try:
        assert cancel(client, headers, task_id, reason="host lost").status_code == 200
        # A fast sweeper: closes such attempts grace + 2 s + lease (0.2 + 2 + 2 s) after.
        processes.sweeper(
            extra_env={
                "TASKEXEC_CANCEL_GRACE": "0.2",
                "TASKEXEC_LEASE_SECONDS": "2",
                "TASKEXEC_HEARTBEAT_SECONDS": "1",
            }
        )
        task = wait_for(lambda: attempt_closed(client, headers, task_id), timeout=20)
        assert task["status"] == "CANCELLED" and task["attempts"][0]["status"] == "CANCELLED"
        assert task["attempts"][0]["error"]["details"]["reason"] == "host lost"
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
    # The sweeper's revoke reaches the worker when it wakes, and kills the child at once.
    pid = pid_of(task)
    wait_for(lambda: not alive(pid), timeout=20)
    assert f"Terminating {task_id} (9)" in worker_log(worker)
