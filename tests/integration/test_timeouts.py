"""Attempt timeouts with real workers: the soft limit, the hard limit, and retry on timeout."""

from __future__ import annotations

import pytest

from shared.status import TERMINAL
from tests.helpers import submit, wait_for, wait_for_status
from tests.integration.extra_definitions import MODULE

pytestmark = pytest.mark.integration


def pid_of(environment: str) -> int:
    return int(environment.rsplit(":", 1)[1])


def alive(pid: int) -> bool:
    """Say whether a process runs (a zombie waiting to be reaped counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def task_log(client, headers, task_id: str) -> list[str]:
    response = client.get(f"/api/v1/tasks/{task_id}/logs", headers=headers)
    assert response.status_code == 200
    return [line["message"] for line in response.get_json()["items"]]


def test_soft_limit_times_out_and_retries_only_when_the_policy_says_so(client, auth, processes):
    processes.worker(concurrency=2, extra_env={"TASKEXEC_DEFINITION_MODULES": MODULE})
    headers = auth.key("*")
    policy = {"maxRetries": 2, "retryInterval": 100, "backoffMultiplier": 1}
    plain = submit(
        client,
        headers,
        "sleep",
        {"seconds": 30},
        executionConfig={"timeout": 600, "retryPolicy": policy},
    )
    retried = submit(
        client,
        headers,
        "sleep",
        {"seconds": 30},
        executionConfig={"timeout": 600, "retryPolicy": {**policy, "retryOnTimeout": True}},
    )

    task = wait_for_status(client, headers, plain, TERMINAL)
    assert task["status"] == "TIMED_OUT", task
    assert task["error"]["code"] == "TIMEOUT" and "600 ms" in task["error"]["message"]
    assert "killed" not in task["error"]["message"]  # the soft limit stopped it
    assert task["output"] is None
    # Timeouts are not retried by default, even with retries left in the policy.
    assert task["executionMetadata"]["attempts"] == 1
    assert [a["status"] for a in task["attempts"]] == ["TIMED_OUT"]
    # The handler was interrupted, not killed: it had the chance to clean up (it logged).
    assert any("SoftTimeLimitExceeded" in line for line in task_log(client, headers, plain))

    task = wait_for_status(client, headers, retried, TERMINAL, timeout=30)
    assert task["status"] == "TIMED_OUT", task
    assert task["executionMetadata"]["attempts"] == 3
    assert [a["status"] for a in task["attempts"]] == ["TIMED_OUT"] * 3

    # Without a timeout in the submission, the definition's (500 ms here) bounds the attempt.
    fallback = submit(client, headers, "test-short-sleep", {"seconds": 30})
    task = wait_for_status(client, headers, fallback, TERMINAL)
    assert task["status"] == "TIMED_OUT" and "500 ms" in task["error"]["message"], task


def test_handler_ignoring_the_soft_limit_is_killed_at_the_hard_limit(client, auth, processes):
    processes.worker(concurrency=1)  # no sweeper: the worker itself must record the kill
    headers = auth.key("*")
    stuck = submit(
        client,
        headers,
        "sleep",
        {"seconds": 60, "ignoreSoftLimit": True},
        executionConfig={"timeout": 500, "retryPolicy": {"maxRetries": 0}},
    )
    running = wait_for_status(client, headers, stuck, {"RUNNING"} | TERMINAL)
    pid = pid_of(running["executionMetadata"]["executionEnvironment"])

    task = wait_for_status(client, headers, stuck, TERMINAL, timeout=20)
    assert task["status"] == "TIMED_OUT", task
    assert task["error"]["code"] == "TIMEOUT" and "killed" in task["error"]["message"]
    assert task["attempts"][0]["status"] == "TIMED_OUT" and task["attempts"][0]["endTime"]
    wait_for(lambda: not alive(pid), timeout=10)  # the child that ignored the limit is gone

    # The worker goes on serving, on a fresh child.
    after = submit(client, headers, "echo", {"n": 1})
    done = wait_for_status(client, headers, after, TERMINAL)
    assert done["status"] == "COMPLETED" and done["output"] == {"n": 1}
    assert pid_of(done["executionMetadata"]["executionEnvironment"]) != pid
