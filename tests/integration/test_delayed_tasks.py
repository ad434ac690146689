"""Delayed tasks with real workers and sweepers: on time, never early, cancelled, Redis-proof."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from shared.status import TERMINAL
from tests.helpers import get, wait_for, wait_for_status

pytestmark = pytest.mark.integration
URL = "/api/v1/tasks"
#: Only a sweeper's wake-up at the due time (or a NOTIFY) can release a task on time with
#: this interval; a round every 0.3 s (the tests' default) would hide a missing wake-up.
SLOW_SWEEPS = {"TASKEXEC_SWEEP_INTERVAL": "30", "TASKEXEC_REPUBLISH_AFTER": "60"}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def sweeper_running(proc: subprocess.Popen[bytes]) -> None:
    """Wait until a sweeper started its loop (and so LISTENs)."""
    path = Path(proc.log_path)  # type: ignore[attr-defined]
    wait_for(lambda: "sweeper running" in path.read_text(errors="replace"), timeout=30)
    time.sleep(0.3)  # its first round: the LISTEN is open before it sleeps


def delayed(client: Any, headers: dict[str, str], **when: Any) -> dict[str, Any]:
    body = {"taskDefinitionId": "echo", "input": {"hello": "later"}, **when}
    response = client.post(URL, json=body, headers=headers)
    assert response.status_code == 201, response.get_json()
    return dict(response.get_json())


def messages(redis_url: str) -> int:
    """Messages queued in Redis or held unacknowledged by a worker."""
    client = redis.Redis.from_url(redis_url)
    queued = sum(
        client.llen(key)
        for key in client.scan_iter()
        if client.type(key) == b"list" and not key.startswith(b"_kombu")
    )
    return queued + int(client.hlen("unacked"))


def lateness(task: dict[str, Any]) -> float:
    """Seconds from runAt to the start of the first attempt."""
    return (at(task["executionMetadata"]["startTime"]) - at(task["runAt"])).total_seconds()


def test_a_delayed_task_starts_at_its_time_not_before(client, auth, processes, settings):
    processes.worker(concurrency=1)
    sweeper_running(processes.sweeper(extra_env=SLOW_SWEEPS))
    headers = auth.key("*")
    created = delayed(client, headers, delay=2000)

    waiting = get(client, headers, created["id"])
    assert waiting["status"] == "PENDING"
    assert (waiting["runAt"], waiting["pendingReason"]) == (created["runAt"], "SCHEDULED")
    assert waiting["executionMetadata"]["startTime"] is None
    assert messages(settings.redis_url) == 0

    task = wait_for_status(client, headers, created["id"], TERMINAL, timeout=15)
    assert task["status"] == "COMPLETED", task
    assert task["output"] == {"hello": "later"}
    # The NOTIFY woke the sweeper (its interval is 30 s), which then slept until runAt.
    assert 0 <= lateness(task) < 1.0, task
    assert (task["runAt"], task["pendingReason"]) == (created["runAt"], None)
    assert task["executionMetadata"]["attempts"] == 1


def test_a_run_at_in_the_past_runs_at_once_without_a_sweeper(client, auth, processes):
    processes.worker(concurrency=1)
    headers = auth.key("*")
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    created = delayed(client, headers, runAt=past)
    task = wait_for_status(client, headers, created["id"], TERMINAL, timeout=15)
    assert task["status"] == "COMPLETED", task
    assert task["runAt"] == created["runAt"] and task["pendingReason"] is None


def test_cancelled_before_it_is_due_it_never_runs(client, auth, processes):
    processes.worker(concurrency=1)
    sweeper_running(processes.sweeper())
    headers = auth.key("*")
    created = delayed(client, headers, delay=1500)
    cancelled = client.post(f"{URL}/{created['id']}/cancel", json={}, headers=headers)
    assert cancelled.get_json()["status"] == "CANCELLED"

    time.sleep(3.0)  # well past runAt, sweeping every 0.3 s
    task = get(client, headers, created["id"])
    assert task["status"] == "CANCELLED"
    assert task["executionMetadata"]["attempts"] == 0
    assert task["executionMetadata"]["startTime"] is None and task["attempts"] == []


def test_a_redis_flush_while_it_waits_changes_nothing(client, auth, processes, settings):
    processes.worker(concurrency=1)
    sweeper_running(processes.sweeper(extra_env=SLOW_SWEEPS))
    headers = auth.key("*")
    created = delayed(client, headers, delay=2500)
    assert messages(settings.redis_url) == 0  # nothing of it lives in Redis
    redis.Redis.from_url(settings.redis_url).flushall()

    task = wait_for_status(client, headers, created["id"], TERMINAL, timeout=15)
    assert task["status"] == "COMPLETED", task
    assert 0 <= lateness(task) < 1.0, task


def test_two_sweepers_release_a_due_task_once(client, auth, processes, settings):
    first = processes.sweeper(extra_env=SLOW_SWEEPS)
    second = processes.sweeper(extra_env=SLOW_SWEEPS)
    sweeper_running(first)
    sweeper_running(second)
    headers = auth.key("*")
    run_at = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
    ids = [delayed(client, headers, runAt=run_at)["id"] for _ in range(5)]

    # No worker yet: the messages stay in Redis, where they can be counted.
    wait_for(lambda: messages(settings.redis_url) >= len(ids), timeout=10)
    time.sleep(1.0)  # both sweepers had their chance
    assert messages(settings.redis_url) == len(ids)

    processes.worker(concurrency=2)
    for task_id in ids:
        task = wait_for_status(client, headers, task_id, TERMINAL, timeout=20)
        assert task["status"] == "COMPLETED" and task["executionMetadata"]["attempts"] == 1
        assert lateness(task) >= 0


def test_a_sleeping_sweeper_stops_at_once_on_sigterm(processes):
    proc = processes.sweeper(extra_env=SLOW_SWEEPS)
    sweeper_running(proc)
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(5) == 0
    assert time.monotonic() - started < 2.0
