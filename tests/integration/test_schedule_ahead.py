"""Slots rendered ahead of time (ScheduleFirer.prepare), with real Postgres, Redis and a worker.

The firer builds and renders a schedule's next slot (task id, SQL rows, message) before the
slot; the round at the slot uses it only if the claimed schedule is still what it was
rendered from. An edit or a new definition release in between must win.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2
import pytest

from cli.base import ledger
from shared import store
from shared.broker import Broker
from shared.db import Database
from tests.helpers import wait_for
from workers.definitions.diagnostics import ECHO
from workers.schedule_fire import ScheduleFirer

pytestmark = pytest.mark.integration


@pytest.fixture
def firer(settings: Any, clean_db: None) -> Iterator[ScheduleFirer]:
    fire = ScheduleFirer(
        Database(settings.database_url, max_connections=4), Broker(settings), settings
    )
    yield fire
    fire.publisher.close()
    fire._pool.shutdown()


def add_schedule(database_url: str, due_in: float, **values: Any) -> uuid.UUID:
    """An `echo` schedule every minute, its first slot `due_in` seconds from now."""
    now = datetime.now(UTC)
    slot = now + timedelta(seconds=due_in)
    row: dict[str, Any] = {
        "name": "rendered ahead",
        "interval_ms": 60_000,
        "timezone": "UTC",
        "task": {"taskDefinitionId": "echo", "input": {"v": 1}, "priority": "HIGH"},
        "overlap_policy": "ALLOW",
        "catchup_window_ms": 60_000,
        "start_at": slot,
        "next_run_at": slot,
        **values,
    }
    schedule_id = uuid.uuid4()
    with ledger(database_url) as conn:
        store.insert_schedule(conn, schedule_id, "alice", row, now)
        conn.commit()
    return schedule_id


def fire_when_due(firer: ScheduleFirer, schedule_id: uuid.UUID, database_url: str) -> Any:
    """Fire at the slot; return the slot's task row."""
    with ledger(database_url) as conn:
        row = store.get_schedule(conn, schedule_id, None)
    assert row is not None and row.next_run_at is not None
    time.sleep(max((row.next_run_at - datetime.now(UTC)).total_seconds(), 0) + 0.01)
    assert firer.fire_due() == 1
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id, input, priority, definition_version, scheduled_for, published_at"
            " FROM tasks WHERE schedule_id = %s",
            (schedule_id,),
        )
        rows = cur.fetchall()
    assert len(rows) == 1
    return rows[0]


def test_a_slot_rendered_ahead_fires_as_rendered_and_a_worker_runs_it(firer, processes, settings):
    schedule_id = add_schedule(settings.database_url, due_in=2)
    assert firer.prepare(within=10) == 1
    ahead = firer.templates[schedule_id].ahead
    assert ahead is not None and ahead.message is not None
    processes.worker(concurrency=1)
    task_id, data, priority, _, slot, published = fire_when_due(
        firer, schedule_id, settings.database_url
    )
    # The round sent the row and the message rendered before the slot.
    assert task_id == ahead.task.id and slot == ahead.slot and published is not None
    assert data == {"v": 1} and priority == ahead.task.priority
    firer.publisher.close()

    def status() -> str | None:
        with ledger(settings.database_url) as conn:
            task = store.get_task(conn, task_id)
        return task.status.value if task and task.status.value == "COMPLETED" else None

    wait_for(status, timeout=30)
    with ledger(settings.database_url) as conn:
        row = store.get_schedule(conn, schedule_id, None)
    assert row is not None and row.last_run_at == slot
    assert row.next_run_at == slot + timedelta(minutes=1)


def test_an_edit_after_the_slot_was_rendered_wins(firer, settings):
    schedule_id = add_schedule(settings.database_url, due_in=2)
    firer.prepare(within=10)
    ahead = firer.templates[schedule_id].ahead
    assert ahead is not None
    with ledger(settings.database_url) as conn:
        store.update_schedule(
            conn,
            schedule_id,
            {"task": {"taskDefinitionId": "echo", "input": {"v": 2}, "priority": "LOW"}},
        )
        conn.commit()
    task_id, data, _, _, _, _ = fire_when_due(firer, schedule_id, settings.database_url)
    assert task_id != ahead.task.id and data == {"v": 2}  # built anew from the edited row


def test_a_definition_released_after_the_slot_was_rendered_wins(firer, settings):
    schedule_id = add_schedule(settings.database_url, due_in=2)
    firer.prepare(within=10)
    assert firer.templates[schedule_id].ahead is not None
    release = dataclasses.replace(ECHO, version="1.0.1")
    try:
        with ledger(settings.database_url) as conn:
            store.publish_definitions(conn, [release])
            conn.commit()
        _, _, _, version, _, _ = fire_when_due(firer, schedule_id, settings.database_url)
        assert version == "1.0.1"  # validated and built against the definition served now
    finally:
        with ledger(settings.database_url) as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM task_definition_versions WHERE id = 'echo'")
            cur.execute("DELETE FROM task_definitions WHERE id = 'echo'")
            store.publish_definitions(conn, [ECHO])
            conn.commit()


def test_fired_tasks_go_out_only_as_the_dispatch_window_has_room(settings, clean_db):
    # No worker, a window of 2: a round of 5 due slots sends 2 at once (rendered ahead or
    # not), and the other 3 wait in Postgres for the releaser, as submissions would.
    narrow = dataclasses.replace(settings, dispatch_window_min=2)
    fire = ScheduleFirer(Database(narrow.database_url, max_connections=4), Broker(narrow), narrow)
    try:
        ids = [add_schedule(settings.database_url, due_in=1.5) for _ in range(5)]
        fire.prepare(within=10)
        assert all(fire.templates[i].ahead is not None for i in ids[:2])
        time.sleep(1.6)
        assert fire.fire_due() == 5
        fire.publisher.close()
        with ledger(settings.database_url) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FILTER (WHERE published_at IS NOT NULL),"
                " count(*) FILTER (WHERE published_at IS NULL AND next_attempt_at IS NULL)"
                " FROM tasks"
            )
            assert cur.fetchone() == (2, 3)
        assert fire.broker.queue_depths(["standard-executor"]) == {"standard-executor": 2}
        assert fire.window is not None and fire.window._out == {"standard-executor": 0}
    finally:
        fire.publisher.close()
        fire._pool.shutdown()


def test_a_schedule_held_by_another_transaction_does_not_hold_up_the_others(firer, settings):
    held, free = (add_schedule(settings.database_url, due_in=1.5) for _ in range(2))
    firer.prepare(within=10)
    holder = psycopg2.connect(settings.database_url)
    try:
        with holder.cursor() as cur:  # a slow PATCH, say, across the slot
            cur.execute("SELECT 1 FROM schedules WHERE id = %s FOR UPDATE", (held,))
        time.sleep(1.6)
        started = time.monotonic()
        assert firer.fire_due() == 1  # the free one; the held one is skipped, not waited for
        assert time.monotonic() - started < 2
        with ledger(settings.database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT schedule_id FROM tasks")
            assert [r[0] for r in cur.fetchall()] == [free]
    finally:
        holder.rollback()
        holder.close()
    assert firer.fire_due() == 1  # released: its slot fires now, once
    assert firer.fire_due() == 0


def _owner_limit(database_url: str, schedule_id: uuid.UUID) -> list[int | None]:
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT owner_limit FROM tasks WHERE schedule_id = %s", (schedule_id,))
        return [r[0] for r in cur.fetchall()]


def test_fired_tasks_run_under_the_owners_tightest_key_limit(firer, settings):
    # Alice's keys: one without a limit, one with maxRunning 3, one revoked with 1.
    with ledger(settings.database_url) as conn:
        for key_id, limit in (("k-free", None), ("k-three", 3), ("k-gone", 1)):
            store.insert_api_key(
                conn,
                key_id=key_id,
                name=key_id,
                owner="alice",
                permissions=["*"],
                key_hash="x",
                rate_limit=None,
                max_running=limit,
            )
        store.revoke_api_key(conn, "k-gone")
        conn.commit()
    schedule_id = add_schedule(settings.database_url, due_in=1)
    firer.prepare(within=10)
    fire_when_due(firer, schedule_id, settings.database_url)
    # As a submission with her limited key would be: counted against maxRunning 3.
    assert _owner_limit(settings.database_url, schedule_id) == [3]


def test_fired_tasks_of_an_owner_without_keys_take_the_jwt_default(settings, clean_db):
    limited = dataclasses.replace(settings, max_running_per_principal=2)
    fire = ScheduleFirer(
        Database(settings.database_url, max_connections=4), Broker(limited), limited
    )
    try:
        schedule_id = add_schedule(settings.database_url, due_in=1)
        fire_when_due(fire, schedule_id, settings.database_url)
        assert _owner_limit(settings.database_url, schedule_id) == [2]
    finally:
        fire.publisher.close()
        fire._pool.shutdown()
