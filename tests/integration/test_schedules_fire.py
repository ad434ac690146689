"""Schedules fired by real sweepers: exactly one task per slot, whatever dies or is flushed."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from cli.base import ledger
from shared import store
from shared.status import TERMINAL
from tests.helpers import wait_for

pytestmark = pytest.mark.integration


def add_schedule(database_url: str, **values: Any) -> uuid.UUID:
    """Store a schedule of the `echo` definition, first due a second from now."""
    now = datetime.now(UTC)
    row: dict[str, Any] = {
        "name": "every second",
        "interval_ms": 1000,
        "timezone": "UTC",
        "task": {"taskDefinitionId": "echo", "input": {"hello": "slot"}},
        "overlap_policy": "ALLOW",
        "catchup_window_ms": 60_000,
        "next_run_at": now + timedelta(seconds=1),
        **values,
    }
    schedule_id = uuid.uuid4()
    with ledger(database_url) as conn:
        store.insert_schedule(conn, schedule_id, "tester", row, now)
        conn.commit()
    return schedule_id


def tasks_of(database_url: str, schedule_id: uuid.UUID) -> list[tuple[datetime, str]]:
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT scheduled_for, status FROM tasks WHERE schedule_id = %s ORDER BY 1",
            (schedule_id,),
        )
        return [(r[0], r[1]) for r in cur.fetchall()]


def pause(database_url: str, schedule_id: uuid.UUID) -> None:
    with ledger(database_url) as conn:
        store.update_schedule(conn, schedule_id, {"paused": True})
        conn.commit()


def test_two_sweepers_a_kill_and_a_flush_fire_each_slot_once(processes, settings):
    processes.worker(concurrency=2)
    first = processes.sweeper()
    processes.sweeper()
    schedule_id = add_schedule(settings.database_url)
    wait_for(lambda: len(tasks_of(settings.database_url, schedule_id)) >= 3, timeout=20)
    os.killpg(first.pid, signal.SIGKILL)  # mid-flight: whatever it held is rolled back
    redis.Redis.from_url(settings.redis_url).flushall()
    time.sleep(4)
    pause(settings.database_url, schedule_id)

    fired = tasks_of(settings.database_url, schedule_id)
    slots = [slot for slot, _ in fired]
    assert all(n == 1 for n in Counter(slots).values())  # the unique index: once per slot
    assert len(slots) >= 6
    # At least once: consecutive slots, a second apart, none missing.
    assert all(b - a == timedelta(seconds=1) for a, b in zip(slots, slots[1:], strict=False))
    wait_for(
        lambda: all(s in TERMINAL for _, s in tasks_of(settings.database_url, schedule_id)),
        timeout=60,
    )
    assert {s for _, s in tasks_of(settings.database_url, schedule_id)} == {"COMPLETED"}


def test_skip_policy_fires_nothing_while_the_previous_task_runs(processes, settings):
    processes.sweeper()  # no worker: the first task stays PENDING
    schedule_id = add_schedule(settings.database_url, overlap_policy="SKIP")
    time.sleep(4)
    pause(settings.database_url, schedule_id)
    assert len(tasks_of(settings.database_url, schedule_id)) == 1
    with ledger(settings.database_url) as conn:
        row = store.get_schedule(conn, schedule_id, None)
    assert row is not None and row.skipped_count >= 2 and row.last_skipped_at is not None


def test_cancel_previous_cancels_then_fires(processes, settings):
    processes.sweeper()
    schedule_id = add_schedule(settings.database_url, overlap_policy="CANCEL_PREVIOUS")
    wait_for(lambda: len(tasks_of(settings.database_url, schedule_id)) >= 3, timeout=20)
    pause(settings.database_url, schedule_id)
    statuses = [s for _, s in tasks_of(settings.database_url, schedule_id)]
    assert statuses[-1] == "PENDING" and set(statuses[:-1]) == {"CANCELLED"}


def test_slots_missed_beyond_the_catchup_window_are_skipped(processes, settings):
    past = datetime.now(UTC) - timedelta(seconds=30)
    schedule_id = add_schedule(
        settings.database_url, catchup_window_ms=5000, next_run_at=past, start_at=past
    )
    processes.sweeper()
    wait_for(lambda: len(tasks_of(settings.database_url, schedule_id)) >= 7, timeout=20)
    pause(settings.database_url, schedule_id)
    slots = [slot for slot, _ in tasks_of(settings.database_url, schedule_id)]
    assert min(slots) >= past + timedelta(seconds=24)  # nothing older than the window fired
    with ledger(settings.database_url) as conn:
        row = store.get_schedule(conn, schedule_id, None)
    # Every slot before the first fired one was skipped and counted (the sweeper's start-up
    # took some of the window); none after it.
    skipped = round((min(slots) - past) / timedelta(seconds=1))
    assert row is not None and row.skipped_count == skipped and row.last_skipped_at is not None
