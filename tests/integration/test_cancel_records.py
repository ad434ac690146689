"""What a cancel leaves behind: the attempt, the task log and the worker log all say cancelled."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import get, submit, wait_for, wait_for_status
from tests.integration.extra_definitions import MODULE

pytestmark = pytest.mark.integration


def closed(client, headers, task_id: str) -> dict | None:
    """The task once its last attempt has ended, else None."""
    task = get(client, headers, task_id)
    return task if task["attempts"] and task["attempts"][-1]["endTime"] else None


def log_lines(client, headers, task_id: str) -> list[str]:
    body = client.get(f"/api/v1/tasks/{task_id}/logs", headers=headers).get_json()
    return [line["message"] for line in body["items"]]


def assert_recorded_as_cancel(
    client, headers, worker, task_id: str, *, by: str, reason: str, force: bool
) -> None:
    """The attempt, the task log and the worker log each say who cancelled, why, and how."""
    task = wait_for(lambda: closed(client, headers, task_id), timeout=15)
    assert task["status"] == "CANCELLED"
    (attempt,) = task["attempts"]
    said = f"cancelled by {by}{' (forced)' if force else ''}: {reason}"
    assert attempt["status"] == "CANCELLED"
    assert attempt["error"] == {
        "code": "CANCELLED",
        "kind": "TASK_ERROR",
        "message": said,
        "details": {"reason": reason, "by": by, "force": force},
    }, attempt
    # The line is written just after the attempt is closed.
    lines = wait_for(
        lambda: (found := log_lines(client, headers, task_id)) and said in found and found,
        timeout=5,
    )
    assert not any("TIMEOUT" in line for line in lines), lines
    text = wait_for(
        lambda: (
            (log := Path(worker.log_path).read_text(errors="replace"))
            and f"attempt 1 of {task_id} {said}" in log
            and log
        ),
        timeout=5,
    )
    assert f"of {task_id} ended TIMED_OUT" not in text


def test_a_forced_cancel_is_recorded_as_a_cancel_not_a_timeout(client, auth, processes):
    worker = processes.worker(concurrency=1)
    headers = auth.key("*", owner="dave")
    task_id = submit(client, headers, "sleep", {"seconds": 30})
    wait_for_status(client, headers, task_id, {"RUNNING"})
    time.sleep(1)
    response = client.post(
        f"/api/v1/tasks/{task_id}/cancel",
        json={"reason": "stop now", "force": True},
        headers=headers,
    )
    assert response.status_code == 200
    assert_recorded_as_cancel(
        client, headers, worker, task_id, by="dave", reason="stop now", force=True
    )


def test_graceful_and_escalated_cancels_say_so_too(client, auth, processes):
    worker = processes.worker(concurrency=2, extra_env={"TASKEXEC_DEFINITION_MODULES": MODULE})
    headers = auth.key("*", owner="erin")
    polite = submit(client, headers, "sleep", {"seconds": 30})
    # Deaf to the flag and to SIGTERM: its child is killed, and the worker's parent records it.
    deaf = submit(client, headers, "test-deaf-sleep", {"seconds": 30})
    for task_id in (polite, deaf):
        wait_for_status(client, headers, task_id, {"RUNNING"})
    for task_id in (polite, deaf):
        response = client.post(
            f"/api/v1/tasks/{task_id}/cancel", json={"reason": "changed my mind"}, headers=headers
        )
        assert response.status_code == 200
    for task_id in (polite, deaf):
        assert_recorded_as_cancel(
            client, headers, worker, task_id, by="erin", reason="changed my mind", force=False
        )


def test_an_attempt_that_finishes_after_the_cancel_says_it_was_cancelled(client, auth, processes):
    worker = processes.worker(concurrency=1, extra_env={"TASKEXEC_DEFINITION_MODULES": MODULE})
    headers = auth.key("*", owner="frank")
    task_id = submit(client, headers, "test-deaf-sleep", {"seconds": 1.5})
    wait_for_status(client, headers, task_id, {"RUNNING"})
    response = client.post(
        f"/api/v1/tasks/{task_id}/cancel", json={"reason": "too late"}, headers=headers
    )
    assert response.status_code == 200
    # The handler returns within the grace period; its output is refused.
    assert_recorded_as_cancel(
        client, headers, worker, task_id, by="frank", reason="too late", force=False
    )
    assert get(client, headers, task_id)["output"] is None
