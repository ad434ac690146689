"""Priorities and executor pools with real workers: queue order, per-executor queues."""

from __future__ import annotations

import sys
from datetime import datetime

import pytest

from shared.status import TERMINAL
from tests.helpers import get, submit, wait_for_status
from tests.integration.extra_definitions import MODULE, REMOTE_EXECUTOR

pytestmark = pytest.mark.integration
EXTRA = {"TASKEXEC_DEFINITION_MODULES": MODULE}


def started(task: dict) -> datetime:
    return datetime.fromisoformat(task["executionMetadata"]["startTime"].replace("Z", "+00:00"))


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def test_queued_higher_priorities_start_first_on_a_busy_worker(client, auth, processes):
    processes.worker(concurrency=1)
    headers = auth.key("*")
    blocker = submit(client, headers, "sleep", {"seconds": 60})
    wait_for_status(client, headers, blocker, {"RUNNING"})

    # Queued while the only slot is busy, lowest first: the order of arrival is the worst case.
    queued = {
        priority: [
            submit(client, headers, "echo", {"p": priority}, priority=priority) for _ in range(2)
        ]
        for priority in ("LOW", "MEDIUM", "HIGH", "CRITICAL")
    }
    assert get(client, headers, queued["CRITICAL"][0])["status"] == "PENDING"
    # Free the slot only once everything is queued (a cancel frees it within a moment).
    cancelled = client.post(f"/api/v1/tasks/{blocker}/cancel", headers=headers)
    assert cancelled.status_code == 200

    tasks = {
        task_id: wait_for_status(client, headers, task_id, TERMINAL)
        for ids in queued.values()
        for task_id in ids
    }
    assert all(t["status"] == "COMPLETED" for t in tasks.values())
    order = [t["priority"] for t in sorted(tasks.values(), key=started)]
    assert order == ["CRITICAL"] * 2 + ["HIGH"] * 2 + ["MEDIUM"] * 2 + ["LOW"] * 2, order


def test_each_executor_is_its_own_pool_and_tasks_wait_for_theirs(client, auth, processes, settings):
    # The standard pool's worker also publishes the test definitions, the remote one's included.
    processes.worker(concurrency=1, extra_env=EXTRA)
    headers = auth.key("*")
    definition = client.get("/api/v1/tasks/definitions/test-remote-echo", headers=headers)
    assert definition.status_code == 200
    assert definition.get_json()["executionConfig"]["executor"] == REMOTE_EXECUTOR

    # No worker serves the remote executor yet: the task is accepted and waits.
    remote = submit(client, headers, "test-remote-echo", {"x": 1})
    local = submit(client, headers, "echo", {"x": 2})
    assert wait_for_status(client, headers, local, TERMINAL)["status"] == "COMPLETED"
    task = get(client, headers, remote)
    assert task["status"] == "PENDING" and task["executionMetadata"]["attempts"] == 0
    assert task["executionConfig"]["executor"] == REMOTE_EXECUTOR

    # `taskexec worker --executor NAME` starts a pool for that executor only.
    pool = processes._spawn(
        "remote",
        [
            sys.executable,
            "-m",
            "cli",
            "worker",
            "--executor",
            REMOTE_EXECUTOR,
            "--concurrency",
            "1",
        ],
        EXTRA,
    )
    processes.wait_ready(pool)
    task = wait_for_status(client, headers, remote, TERMINAL)
    assert task["status"] == "COMPLETED" and task["output"]["input"] == {"x": 1}, task
    assert parent_of(task["output"]["pid"]) == pool.pid  # a child of the remote pool ran it

    # And that pool takes no standard work: echo still runs on the standard worker.
    again = submit(client, headers, "echo", {"x": 3})
    done = wait_for_status(client, headers, again, TERMINAL)
    pid = int(done["executionMetadata"]["executionEnvironment"].rsplit(":", 1)[1])
    assert parent_of(pid) != pool.pid
