"""Memory limits and lost worker processes with real workers: OOM, killed children, the cap."""

from __future__ import annotations

import os
import signal

import pytest

from shared.status import TERMINAL
from tests.helpers import get, submit, wait_for, wait_for_status
from tests.integration.extra_definitions import MODULE

pytestmark = pytest.mark.integration


def pid_of(task: dict) -> int:
    return int(task["executionMetadata"]["executionEnvironment"].rsplit(":", 1)[1])


def running_attempt(client, headers, task_id: str, attempt: int) -> dict:
    """Wait until the task runs its `attempt`-th attempt; return the task."""

    def check() -> dict | None:
        task = get(client, headers, task_id)
        ok = task["status"] == "RUNNING" and task["executionMetadata"]["attempts"] == attempt
        return task if ok else None

    return wait_for(check, timeout=20)


def test_memory_limit_fails_the_attempt_out_of_memory_and_the_worker_goes_on(
    client, auth, processes
):
    processes.worker(concurrency=1)
    headers = auth.key("*")
    # allocate-memory requires 128Mi; 256 MiB is over it. OOM is not retried: it would recur.
    hog = submit(
        client,
        headers,
        "allocate-memory",
        {"megabytes": 256},
        executionConfig={"retryPolicy": {"maxRetries": 2, "retryInterval": 100}},
    )
    task = wait_for_status(client, headers, hog, TERMINAL)
    assert task["status"] == "FAILED", task
    assert task["error"]["kind"] == "OUT_OF_MEMORY" and task["error"]["code"] == "OUT_OF_MEMORY"
    assert "128Mi" in task["error"]["message"]
    assert task["executionMetadata"]["attempts"] == 1
    hog_pid = pid_of(task)

    # The same child serves on, and the limit is per attempt: it does not accumulate.
    for megabytes in (16, 96):
        small = submit(client, headers, "allocate-memory", {"megabytes": megabytes})
        task = wait_for_status(client, headers, small, TERMINAL)
        assert task["status"] == "COMPLETED" and task["output"] == {"allocated": megabytes}, task
        assert pid_of(task) == hog_pid


def test_a_killed_child_ends_its_attempt_worker_lost_retried_up_to_the_cap(client, auth, processes):
    # No sweeper: the worker's parent process records the loss itself, without a lease expiry.
    processes.worker(
        concurrency=1,
        extra_env={"TASKEXEC_MAX_WORKER_LOST": "2", "TASKEXEC_DEFINITION_MODULES": MODULE},
    )
    headers = auth.key("*")
    victim = submit(
        client,
        headers,
        "sleep",
        {"seconds": 2},
        executionConfig={"retryPolicy": {"maxRetries": 5, "retryInterval": 100}},
    )
    first = pid_of(running_attempt(client, headers, victim, 1))
    os.kill(first, signal.SIGKILL)  # as the kernel's OOM killer would
    task = wait_for_status(client, headers, victim, TERMINAL, timeout=30)
    assert task["status"] == "COMPLETED", task
    lost, retried = task["attempts"]
    assert lost["status"] == "FAILED" and lost["error"]["kind"] == "WORKER_LOST"
    assert str(first) in lost["error"]["message"] and lost["endTime"]
    assert retried["status"] == "COMPLETED" and pid_of(task) != first

    # A task that kills its worker every time cannot loop: TASKEXEC_MAX_WORKER_LOST (2 here)
    # ends it although its policy allows 10 retries.
    bomb = submit(client, headers, "test-self-destruct", {})
    task = wait_for_status(client, headers, bomb, TERMINAL, timeout=30)
    assert task["status"] == "FAILED" and task["error"]["kind"] == "WORKER_LOST", task
    assert task["executionMetadata"]["attempts"] == 2
    assert [a["error"]["kind"] for a in task["attempts"]] == ["WORKER_LOST"] * 2

    after = submit(client, headers, "echo", {"still": "serving"})
    assert wait_for_status(client, headers, after, TERMINAL)["status"] == "COMPLETED"


def test_a_dead_worker_is_found_by_its_expired_lease(client, auth, processes, settings):
    processes.sweeper()
    doomed = processes.worker(concurrency=1)
    headers = auth.key("*")
    task_id = submit(
        client,
        headers,
        "sleep",
        {"seconds": 2},
        executionConfig={"retryPolicy": {"maxRetries": 1, "retryInterval": 100}},
    )
    running_attempt(client, headers, task_id, 1)
    os.killpg(doomed.pid, signal.SIGKILL)  # the whole worker: no parent is left to tell
    doomed.wait(10)
    processes.worker(concurrency=1)

    task = wait_for_status(client, headers, task_id, TERMINAL, timeout=settings.lease_seconds + 20)
    assert task["status"] == "COMPLETED", task
    assert task["executionMetadata"]["attempts"] == 2
    assert task["attempts"][0]["error"]["kind"] == "WORKER_LOST"
    assert "lease" in task["attempts"][0]["error"]["message"]
