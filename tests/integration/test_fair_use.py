"""Concurrency limits and fair dispatch with real workers and sweepers (kills included)."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from typing import Any

import pytest

from cli.base import ledger
from shared.status import TERMINAL
from tests.helpers import get, wait_for, wait_for_status
from tests.integration.limited_definitions import MODULE

pytestmark = pytest.mark.integration
URL = "/api/v1/tasks"
LIMITED = {"TASKEXEC_DEFINITION_MODULES": MODULE}


def bulk(client: Any, headers: dict[str, str], items: list[dict[str, Any]]) -> list[str]:
    """Submit items 100 at a time; return their ids (every item must be accepted)."""
    ids: list[str] = []
    for start in range(0, len(items), 100):
        response = client.post(
            f"{URL}/bulk", json={"tasks": items[start : start + 100]}, headers=headers
        )
        assert response.status_code == 201, response.get_json()
        for item in response.get_json()["items"]:
            assert "id" in item, item
            ids.append(item["id"])
    return ids


def attempt_intervals(database_url: str, ids: list[str]) -> list[tuple[datetime, datetime | None]]:
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT started_at, ended_at FROM task_attempts WHERE task_id = ANY(%s::uuid[])",
            (ids,),
        )
        return list(cur.fetchall())


def most_at_once(intervals: list[tuple[datetime, datetime | None]]) -> int:
    """The most attempts RUNNING at the same moment (an end before a start at the same time)."""
    events = []
    for started, ended in intervals:
        events.append((started, 1))
        if ended is not None:
            events.append((ended, -1))
    running = most = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        running += step
        most = max(most, running)
    return most


def statuses(client: Any, headers: dict[str, str], ids: list[str]) -> dict[str, dict[str, Any]]:
    return {i: get(client, headers, i) for i in ids}


def test_limit_one_over_four_workers_with_a_worker_killed(client, auth, processes, settings):
    """The issue's test: limit 1, four worker processes, 200 tasks, a worker SIGKILLed midway."""
    workers = [processes.worker(concurrency=1, extra_env=LIMITED) for _ in range(4)]
    processes.sweeper()
    processes.sweeper()  # two releasers at once: each executor's round is one's at a time
    headers = auth.key("*")
    items = [{"taskDefinitionId": "limited-sleep", "input": {"seconds": 0.02}}] * 200
    items[100] = {"taskDefinitionId": "limited-sleep", "input": {"seconds": 3}}
    ids = bulk(client, headers, items)

    # Midway, kill (SIGKILL, the whole process group: the machine is lost) the worker running
    # the long one: its attempt holds the limit until the sweeper rescues its lease (6 s).
    def running_long() -> int | None:
        task = get(client, headers, ids[100])
        return _pid(task) if task["status"] == "RUNNING" else None

    pid = wait_for(running_long, timeout=120)
    killed = next(w for w in workers if _parent_of(pid) == w.pid)
    os.killpg(killed.pid, signal.SIGKILL)

    wait_for(lambda: _done(settings.database_url, ids) == 200, timeout=240, interval=0.5)
    tasks = statuses(client, headers, ids)
    assert {t["status"] for t in tasks.values()} == {"COMPLETED"}
    assert most_at_once(attempt_intervals(settings.database_url, ids)) == 1
    assert tasks[ids[100]]["executionMetadata"]["attempts"] == 2  # run again once rescued
    assert tasks[ids[100]]["attempts"][0]["error"]["kind"] == "WORKER_LOST"
    # Every other task ran once: no duplicate release, no refused claim that ran anyway.
    others = [t for i, t in tasks.items() if i != ids[100]]
    assert {t["executionMetadata"]["attempts"] for t in others} == {1}


def _done(database_url: str, ids: list[str]) -> int:
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM tasks WHERE id = ANY(%s::uuid[]) AND status = 'COMPLETED'", (ids,)
        )
        return int(cur.fetchone()[0])


def _pid(task: dict[str, Any]) -> int:
    return int(task["executionMetadata"]["executionEnvironment"].rsplit(":", 1)[1])


def _parent_of(pid: int) -> int:
    """The parent process of `pid` (a pool child's worker)."""
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def test_per_key_limit_holds_tasks_back_and_says_why(client, auth, processes, settings):
    for _ in range(2):
        processes.worker(concurrency=2)
    processes.sweeper()
    headers = auth.key("*")
    keyed = {
        "taskDefinitionId": "sleep",
        "input": {"seconds": 0.4},
        "executionConfig": {"concurrency": {"key": "customer-42", "limit": 2}},
    }
    ids = bulk(client, headers, [keyed] * 8)
    # Another owner's tasks with the same key are not under the limit (keys are per owner).
    other = bulk(client, auth.key("*", owner="bob"), [keyed] * 2)

    def held() -> dict[str, Any] | None:
        for task in statuses(client, headers, ids).values():
            if task["pendingReason"] == "CONCURRENCY_LIMIT":
                return task
        return None

    task = wait_for(held, timeout=20)
    assert task["status"] == "PENDING"
    assert task["pendingDetails"] == {"limit": "key", "key": "customer-42", "max": 2}
    listed = client.get(f"{URL}?pendingReason=CONCURRENCY_LIMIT", headers=headers).get_json()
    assert listed["items"] and {i["pendingReason"] for i in listed["items"]} == {
        "CONCURRENCY_LIMIT"
    }

    for i in ids + other:
        assert (
            wait_for_status(
                client, headers if i in ids else auth.key("*", owner="bob"), i, TERMINAL, timeout=60
            )["status"]
            == "COMPLETED"
        )
    assert most_at_once(attempt_intervals(settings.database_url, ids)) == 2
    # Held-back tasks never took a worker: one attempt each.
    assert all(
        t["executionMetadata"]["attempts"] == 1 for t in statuses(client, headers, ids).values()
    )


def test_per_principal_limits_for_keys_and_tokens(client, auth, app_with, processes, settings):
    processes.worker(concurrency=4)
    processes.sweeper()
    capped = auth.key("*", owner="carol", max_running=1)
    ids = bulk(client, capped, [{"taskDefinitionId": "sleep", "input": {"seconds": 0.3}}] * 4)
    for i in ids:
        assert wait_for_status(client, capped, i, TERMINAL, timeout=30)["status"] == "COMPLETED"
    assert most_at_once(attempt_intervals(settings.database_url, ids)) == 1

    # A JWT principal gets TASKEXEC_MAX_RUNNING_PER_PRINCIPAL.
    api = app_with(max_running_per_principal=2).test_client()
    token = auth.token("*", subject="dave")
    tids = bulk(api, token, [{"taskDefinitionId": "sleep", "input": {"seconds": 0.3}}] * 6)
    for i in tids:
        assert wait_for_status(api, token, i, TERMINAL, timeout=30)["status"] == "COMPLETED"
    assert most_at_once(attempt_intervals(settings.database_url, tids)) == 2


def test_a_small_owner_is_not_stuck_behind_a_backlog(client, auth, processes, settings):
    processes.worker(concurrency=2)
    processes.sweeper()
    alice, bob = auth.key("*", owner="alice"), auth.key("*", owner="bob")
    backlog = bulk(
        client, alice, [{"taskDefinitionId": "sleep", "input": {"seconds": 0.05}}] * 1000
    )
    time.sleep(1.0)  # the backlog is running, its window full
    submitted = time.monotonic()
    small = bulk(client, bob, [{"taskDefinitionId": "sleep", "input": {"seconds": 0.05}}] * 10)
    for i in small:
        assert wait_for_status(client, bob, i, TERMINAL, timeout=30)["status"] == "COMPLETED"
    took = time.monotonic() - submitted
    waiting = _count(settings.database_url, backlog, "status = 'PENDING'")
    # Round robin: bob's ten took about twenty task slots (~0.5 s on two slots), while a
    # first-come queue would have made them wait for most of alice's thousand (~25 s).
    assert took < 5.0, took
    assert waiting > 500, waiting
    # Only a bounded window of alice's backlog is in Redis; the rest waits in Postgres.
    assert (
        _count(settings.database_url, backlog, "status = 'PENDING' AND published_at IS NOT NULL")
        <= 40
    )


def _count(database_url: str, ids: list[str], where: str) -> int:
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM tasks WHERE id = ANY(%s::uuid[]) AND {where}", (ids,))
        return int(cur.fetchone()[0])


def test_pending_reasons_of_each_kind(client, auth, processes, settings):
    headers = auth.key("*")
    # No worker at all: a due task has nobody to run it.
    lonely = client.post(
        URL, json={"taskDefinitionId": "echo", "input": {}}, headers=headers
    ).get_json()["id"]
    assert get(client, headers, lonely)["pendingReason"] == "NO_WORKER"
    listed = client.get(f"{URL}?pendingReason=NO_WORKER", headers=headers).get_json()
    assert [i["id"] for i in listed["items"]] == [lonely]

    processes.worker(concurrency=1)
    processes.sweeper()
    wait_for_status(client, headers, lonely, TERMINAL, timeout=30)
    # The API reads the workers' heartbeats at most every 2 s (shared/window.py): a view
    # taken just before the worker came up says NO_WORKER until then.
    time.sleep(2.1)
    scheduled = client.post(
        URL, json={"taskDefinitionId": "echo", "input": {}, "delay": 60_000}, headers=headers
    ).get_json()["id"]
    assert get(client, headers, scheduled)["pendingReason"] == "SCHEDULED"
    flaky = client.post(
        URL,
        json={
            "taskDefinitionId": "flaky",
            "input": {"failTimes": 1},
            "executionConfig": {"retryPolicy": {"maxRetries": 1, "retryInterval": 60_000}},
        },
        headers=headers,
    ).get_json()["id"]
    task = wait_for(
        lambda: (t := get(client, headers, flaky))["status"] == "RETRYING" and t, timeout=20
    )
    assert task["pendingReason"] == "RETRY_BACKOFF"
    # The one slot busy: the tasks behind it are QUEUED, in order.
    busy = client.post(
        URL, json={"taskDefinitionId": "sleep", "input": {"seconds": 3}}, headers=headers
    ).get_json()["id"]
    wait_for(lambda: get(client, headers, busy)["status"] == "RUNNING", timeout=20)
    queued = [
        client.post(
            URL, json={"taskDefinitionId": "echo", "input": {"n": n}}, headers=headers
        ).get_json()["id"]
        for n in range(3)
    ]
    docs = [get(client, headers, i) for i in queued]
    assert [d["pendingReason"] for d in docs] == ["QUEUED"] * 3
    positions = [d["queuePosition"] for d in docs]
    assert all(p >= 1 for p in positions) and positions[0] <= positions[-1], positions
    assert get(client, headers, busy)["pendingReason"] is None
    kinds = {
        r: {
            i["id"]
            for i in client.get(f"{URL}?pendingReason={r}", headers=headers).get_json()["items"]
        }
        for r in ("SCHEDULED", "RETRY_BACKOFF", "QUEUED")
    }
    assert kinds["SCHEDULED"] == {scheduled} and kinds["RETRY_BACKOFF"] == {flaky}
    assert set(queued) <= kinds["QUEUED"]


def test_a_limited_task_starts_soon_after_room_opens(client, auth, processes, settings):
    """Room freed by a finish wakes the releaser: the next held task starts within a second."""
    processes.worker(concurrency=2, extra_env=LIMITED)
    processes.sweeper(extra_env={"TASKEXEC_SWEEP_INTERVAL": "30"})  # only the NOTIFY wakes it
    headers = auth.key("*")
    ids = bulk(
        client, headers, [{"taskDefinitionId": "limited-sleep", "input": {"seconds": 0.2}}] * 6
    )
    for i in ids:
        wait_for_status(client, headers, i, TERMINAL, timeout=30)
    with ledger(settings.database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT started_at, ended_at FROM task_attempts WHERE task_id = ANY(%s::uuid[])"
            " ORDER BY started_at",
            (ids,),
        )
        rows = cur.fetchall()
    gaps = [(b[0] - a[1]).total_seconds() for a, b in zip(rows, rows[1:], strict=False)]
    assert all(0 <= g < 1.0 for g in gaps), gaps


def test_cancelling_the_running_one_lets_the_held_one_start(client, auth, processes):
    processes.worker(concurrency=2)
    processes.sweeper(extra_env={"TASKEXEC_SWEEP_INTERVAL": "30"})  # only the NOTIFY wakes it
    headers = auth.key("*")
    body = {
        "taskDefinitionId": "sleep",
        "input": {"seconds": 30},
        "executionConfig": {"concurrency": {"key": "one-at-a-time", "limit": 1}},
    }
    first, second = bulk(client, headers, [body, body])
    wait_for(lambda: get(client, headers, first)["status"] == "RUNNING", timeout=20)
    held = wait_for(
        lambda: (t := get(client, headers, second))["pendingReason"] == "CONCURRENCY_LIMIT" and t,
        timeout=10,
    )
    assert held["executionMetadata"]["attempts"] == 0
    cancelled = time.monotonic()
    assert client.post(f"{URL}/{first}/cancel", json={}, headers=headers).status_code == 200
    wait_for(lambda: get(client, headers, second)["status"] == "RUNNING", timeout=10)
    assert time.monotonic() - cancelled < 2.0
    client.post(f"{URL}/{second}/cancel", json={"force": True}, headers=headers)
