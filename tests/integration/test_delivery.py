"""At-least-once delivery, exactly-once execution: duplicate messages run the handler once."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from shared import db, outbox, store
from shared.broker import Broker
from shared.status import TERMINAL
from tests.helpers import wait_for, wait_for_status

pytestmark = pytest.mark.integration


def broker_is_empty(client_: redis.Redis) -> bool:
    """No message anywhere in Redis: not queued, not held unacknowledged by a worker."""
    queued = sum(
        client_.llen(key)
        for key in client_.scan_iter("standard-executor*")
        if client_.type(key) == b"list"
    )
    return queued == 0 and client_.hlen("unacked") == 0


def dead_pid() -> int:
    """The id of a process that existed on this host and is gone."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_duplicate_messages_run_the_handler_once(client, auth, processes, settings):
    headers = auth.key("*")
    body = {"taskDefinitionId": "sleep", "input": {"seconds": 0.5}}
    task_id = client.post("/api/v1/tasks", json=body, headers=headers).get_json()["id"]
    conn = db.connect(settings.database_url)
    with conn:
        task = store.get_task(conn, uuid.UUID(task_id))
    conn.close()
    dispatch = outbox.Dispatch.of(task)
    broker = Broker(settings)
    for _ in range(4):  # as redeliveries, a republishing sweeper and a retrying client would
        broker.publish(dispatch)

    # Two slots take the copies concurrently: they race for the claim and one wins.
    # With Celery's per-task lines, which say what each delivery returned.
    worker = processes.worker(concurrency=2, extra_env={"TASKEXEC_WORKER_TASK_LOG": "true"})
    done = wait_for_status(client, headers, task_id, TERMINAL)
    assert done["status"] == "COMPLETED", done
    queue = redis.Redis.from_url(settings.redis_url)
    wait_for(lambda: broker_is_empty(queue), timeout=15)
    log = Path(worker.log_path).read_text(errors="replace")
    assert log.count(f"nothing to claim for {task_id}") == 4  # delivered, then refused
    # One handler run reached its end and recorded it (Celery logs what each delivery
    # returned: 'completed' once, 'skipped' for the copies that found nothing to claim).
    returned = re.findall(rf"\[{task_id}\] succeeded in \S+: '(\w+)'", log)
    assert sorted(returned) == ["completed"] + ["skipped"] * 4

    # A copy arriving after the end changes nothing either.
    broker.publish(dispatch)
    wait_for(
        lambda: Path(worker.log_path).read_text().count(f"nothing to claim for {task_id}") == 5,
        timeout=15,
    )
    task = client.get(f"/api/v1/tasks/{task_id}", headers=headers).get_json()
    assert task["status"] == "COMPLETED" and task["output"] == done["output"]
    assert task["executionMetadata"]["attempts"] == 1 and len(task["attempts"]) == 1
    assert task["updatedAt"] == done["updatedAt"]


def test_a_redelivered_message_ends_an_attempt_whose_process_is_gone(
    client, auth, processes, settings
):
    headers = auth.key("*")
    body = {
        "taskDefinitionId": "echo",
        "input": {"x": 1},
        "executionConfig": {"retryPolicy": {"maxRetries": 1, "retryInterval": 100}},
    }
    task_id = client.post("/api/v1/tasks", json=body, headers=headers).get_json()["id"]
    # A worker process on this host claimed it and died, leaving a lease that runs for ten
    # minutes; its message is still in the queue, as after a requeue or a visibility timeout.
    gone = dead_pid()
    conn = db.connect(settings.database_url)
    with conn:
        assert store.claim_task(conn, uuid.UUID(task_id), socket.gethostname(), gone, 600)
    conn.close()

    processes.worker(concurrency=1)  # and no sweeper: the lease is not what ends it
    task = wait_for_status(client, headers, task_id, TERMINAL)
    assert task["status"] == "COMPLETED" and task["output"] == {"x": 1}, task
    lost, retried = task["attempts"]
    assert lost["status"] == "FAILED" and lost["error"]["kind"] == "WORKER_LOST"
    assert f":{gone})" in lost["error"]["message"]
    assert retried["status"] == "COMPLETED"


def test_celery_logs_a_line_per_task_only_when_asked(
    client: Any, auth: Any, processes: Any
) -> None:
    """By default a worker logs no line per routine task; TASKEXEC_WORKER_TASK_LOG adds them."""
    headers = auth.key("*")
    quiet = processes.worker(concurrency=1)
    body = {"taskDefinitionId": "echo", "input": {"quiet": True}}
    first = client.post("/api/v1/tasks", json=body, headers=headers).get_json()["id"]
    assert wait_for_status(client, headers, first, TERMINAL)["status"] == "COMPLETED"
    os.killpg(quiet.pid, signal.SIGTERM)
    quiet.wait(15)
    log = Path(quiet.log_path).read_text(errors="replace")
    assert " ready." in log and first not in log

    talkative = processes.worker(concurrency=1, extra_env={"TASKEXEC_WORKER_TASK_LOG": "true"})
    second = client.post("/api/v1/tasks", json=body, headers=headers).get_json()["id"]
    assert wait_for_status(client, headers, second, TERMINAL)["status"] == "COMPLETED"
    wait_for(lambda: "'completed'" in Path(talkative.log_path).read_text(), timeout=15)
    log = Path(talkative.log_path).read_text(errors="replace")
    assert re.search(rf"\[{second}\] received", log)
    assert re.search(rf"\[{second}\] succeeded in \S+: 'completed'", log)
