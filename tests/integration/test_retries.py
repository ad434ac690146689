"""Retries with real workers: backoff spacing, RETRYING, history, long delays, permanent errors."""

from __future__ import annotations

import time
import uuid
from datetime import datetime

import pytest
import redis

from shared import db, outbox, store
from shared.broker import Broker
from shared.status import TERMINAL
from tests.helpers import submit, wait_for, wait_for_status

pytestmark = pytest.mark.integration


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def gaps_ms(task: dict) -> list[float]:
    """Milliseconds between each attempt's end and the next one's start."""
    attempts = task["attempts"]
    return [
        (at(later["startTime"]) - at(earlier["endTime"])).total_seconds() * 1000
        for earlier, later in zip(attempts, attempts[1:], strict=False)
    ]


def republish(settings, task_id: str) -> None:
    """Send a second message for a task, as a redelivery or a sweeper would."""
    conn = db.connect(settings.database_url)
    with conn:
        task = store.get_task(conn, uuid.UUID(task_id))
    conn.close()
    broker = Broker(settings)
    broker.publish(outbox.Dispatch.of(task))


def test_backoff_spacing_history_and_the_last_error(client, auth, processes, settings):
    processes.worker(concurrency=2)
    headers = auth.key("*")
    policy = {"maxRetries": 2, "retryInterval": 400, "backoffMultiplier": 2}
    failing = submit(
        client, headers, "flaky", {"failTimes": 5}, executionConfig={"retryPolicy": policy}
    )
    recovering = submit(
        client,
        headers,
        "flaky",
        {"failTimes": 2},
        executionConfig={"retryPolicy": {**policy, "maxRetries": 3}},
    )

    # Between attempts the task waits in RETRYING, with the failed attempt's error.
    waiting = wait_for_status(client, headers, failing, {"RETRYING"} | TERMINAL)
    assert waiting["status"] == "RETRYING", waiting
    assert waiting["error"]["message"] == "flaky failure on attempt 1"
    # A message arriving early (a duplicate) must not start the retry before it is due.
    republish(settings, failing)

    task = wait_for_status(client, headers, failing, TERMINAL)
    assert task["status"] == "FAILED", task
    assert task["error"] == {
        "code": "TASK_ERROR",
        "message": "flaky failure on attempt 3",
        "kind": "TASK_ERROR",
        "details": {"attempt": 3},
    }
    assert task["executionMetadata"]["attempts"] == 3
    history = task["attempts"]
    assert [a["attempt"] for a in history] == [1, 2, 3]
    assert [a["status"] for a in history] == ["FAILED"] * 3
    assert [a["error"]["message"] for a in history] == [
        f"flaky failure on attempt {n}" for n in (1, 2, 3)
    ]
    assert all(
        a["startTime"] and a["endTime"] and ":" in a["executionEnvironment"] for a in history
    )
    # Attempt n+1 starts no earlier than retryInterval * backoffMultiplier^(n-1) after n failed.
    gaps = gaps_ms(task)
    assert gaps[0] >= 400 - 2 and gaps[1] >= 800 - 2, gaps

    task = wait_for_status(client, headers, recovering, TERMINAL)
    assert task["status"] == "COMPLETED" and task["output"] == {"attempts": 3}, task
    assert task["error"] is None
    assert [a["status"] for a in task["attempts"]] == ["FAILED", "FAILED", "COMPLETED"]
    gaps = gaps_ms(task)
    assert gaps[0] >= 400 - 2 and gaps[1] >= 800 - 2, gaps


def test_permanent_errors_are_not_retried(client, auth, processes):
    processes.worker(concurrency=1)
    headers = auth.key("*")
    # The gateway rejects the currency: retrying cannot help, whatever the policy allows.
    rejected = submit(
        client,
        headers,
        "process-payment",
        {"orderId": "o-1", "amount": 5, "currency": "XXX", "latencyMs": 0},
        executionConfig={"retryPolicy": {"maxRetries": 3, "retryInterval": 100}},
    )
    task = wait_for_status(client, headers, rejected, TERMINAL)
    assert task["status"] == "FAILED", task
    assert task["error"]["kind"] == "TASK_ERROR" and "XXX" in task["error"]["message"]
    assert task["executionMetadata"]["attempts"] == 1 and len(task["attempts"]) == 1


def broker_is_empty(client_: redis.Redis) -> bool:
    """No message anywhere in Redis: not queued, not held unacknowledged by a worker."""
    queued = sum(
        client_.llen(key)
        for key in client_.scan_iter("standard-executor*")
        if client_.type(key) == b"list"
    )
    return queued == 0 and client_.hlen("unacked") == 0


def test_long_delays_wait_in_postgres_until_the_sweeper_releases_them(
    client, auth, processes, settings
):
    # Every delay counts as long here: none may ride on a broker countdown.
    long_delays = {"TASKEXEC_RETRY_COUNTDOWN_MAX": "0"}
    processes.worker(concurrency=1, extra_env=long_delays)
    headers = auth.key("*")
    flaky = submit(
        client,
        headers,
        "flaky",
        {"failTimes": 1},
        executionConfig={"retryPolicy": {"maxRetries": 1, "retryInterval": 1500}},
    )
    assert wait_for_status(client, headers, flaky, {"RETRYING"} | TERMINAL)["status"] == "RETRYING"
    broker = redis.Redis.from_url(settings.redis_url)
    wait_for(lambda: broker_is_empty(broker), timeout=5)

    # Past its due time nothing has released it: the retry is only in Postgres.
    time.sleep(2.0)
    assert client.get(f"/api/v1/tasks/{flaky}", headers=headers).get_json()["status"] == "RETRYING"
    assert broker_is_empty(broker)

    processes.sweeper(extra_env=long_delays)
    task = wait_for_status(client, headers, flaky, TERMINAL)
    assert task["status"] == "COMPLETED" and task["output"] == {"attempts": 2}, task
    assert gaps_ms(task)[0] >= 1500 - 2
