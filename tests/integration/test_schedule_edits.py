"""Schedules edited while real sweepers fire them, and slots whose template cannot make a task.

A PATCH and a sweeper's round take the same row lock: whichever holds it, each slot still
fires exactly once and the PATCH's nextRunAt is what the schedule keeps. A slot whose
definition is gone, whose input no longer validates or whose row the database refuses is
skipped with a reason on the schedule, and the sweeper goes on firing the others.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2
import pytest

from cli.base import ledger
from shared import store
from shared.definitions import TaskDefinition
from shared.schedules import fired_task
from tests.helpers import wait_for
from workers.definitions.diagnostics import ECHO, SLEEP

pytestmark = pytest.mark.integration
URL = "/api/v1/schedules"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def rfc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def whole_second(ahead: float) -> datetime:
    """A whole second at least `ahead` seconds from now."""
    moment = datetime.now(UTC) + timedelta(seconds=ahead + 1)
    return moment.replace(microsecond=0)


def create(client: Any, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    body = {
        "name": "edited live",
        "interval": 1000,
        "task": {"taskDefinitionId": "echo", "input": {"hello": "slot"}},
        **fields,
    }
    response = client.post(URL, json=body, headers=headers)
    assert response.status_code == 201, response.get_json()
    return dict(response.get_json())


def slots_of(database_url: str, schedule_id: str) -> list[datetime]:
    """The slots the schedule's tasks were fired for, in order (a slot twice would show)."""
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT scheduled_for FROM tasks WHERE schedule_id = %s AND scheduled_for IS NOT NULL"
            " ORDER BY 1",
            (uuid.UUID(schedule_id),),
        )
        return [r[0] for r in cur.fetchall()]


def lock_waiters(database_url: str) -> int:
    """Backends of this database waiting for a lock (a row, or another transaction's insert)."""
    with ledger(database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        row = cur.fetchone()
        return int(row[0]) if row else 0


def patch_in_thread(client: Any, headers: dict[str, str], schedule_id: str, body: dict) -> Any:
    """PATCH from another thread (it will wait for a lock); returns (thread, result dict)."""
    result: dict[str, Any] = {}

    def run() -> None:
        response = client.patch(f"{URL}/{schedule_id}", json=body, headers=headers)
        result["status"], result["doc"] = response.status_code, response.get_json()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def get(client: Any, headers: dict[str, str], schedule_id: str) -> dict[str, Any]:
    return dict(client.get(f"{URL}/{schedule_id}", headers=headers).get_json())


def test_a_patch_waits_for_the_round_holding_its_schedule_then_its_next_run_stands(
    client, auth, processes, settings
):
    headers = auth.key("*")
    start = whole_second(3)
    doc = create(client, headers, interval=60_000, startAt=rfc(start))
    assert at(doc["nextRunAt"]) == start
    schedule_id = uuid.UUID(doc["id"])
    # Our open transaction holds the slot's entry in the unique (schedule, slot) index, so the
    # sweeper's round waits inside its INSERT, holding the schedule's row lock: a round caught
    # mid-flight, for as long as we like.
    blocker = psycopg2.connect(settings.database_url)
    try:
        with ledger(settings.database_url) as conn:
            definition = store.get_definition(conn, "echo")
        assert definition is not None
        stand_in = fired_task(doc["task"], definition, "alice")
        store.insert_schedule_tasks(blocker, [store.SlotTask(stand_in, schedule_id, start)])
        processes.sweeper()
        wait_for(lambda: lock_waiters(settings.database_url) >= 1, timeout=30)
        thread, result = patch_in_thread(client, headers, doc["id"], {"interval": 2000})
        wait_for(lambda: lock_waiters(settings.database_url) >= 2, timeout=10)
        assert thread.is_alive()  # the PATCH waits for the round's row lock
    finally:
        blocker.rollback()  # the round goes on: its own INSERT of the slot now succeeds
        blocker.close()
    thread.join(20)
    assert result["status"] == 200, result
    patched = result["doc"]
    # The round committed first and the PATCH read the row it left: the slot it fired...
    assert at(patched["lastRunAt"]) == start
    # ...and the PATCH's own recomputation (the new timing: start + 2k s), not the round's
    # start + 60 s, is what the schedule waits for.
    patched_next = at(patched["nextRunAt"])
    assert patched_next < start + timedelta(seconds=60)
    assert (patched_next - start) % timedelta(seconds=2) == timedelta(0)
    wait_for(lambda: len(slots_of(settings.database_url, doc["id"])) >= 3, timeout=20)
    slots = slots_of(settings.database_url, doc["id"])
    assert slots[0] == start and slots[1] == patched_next  # once each, none lost
    assert all(b - a == timedelta(seconds=2) for a, b in zip(slots[1:], slots[2:], strict=False))
    assert len(set(slots)) == len(slots)


def test_a_slot_due_while_a_patch_holds_the_schedule_still_fires_once(
    client, auth, processes, settings
):
    headers = auth.key("*")
    processes.sweeper()
    start = whole_second(4)
    doc = create(client, headers, interval=60_000, startAt=rfc(start))
    holder = psycopg2.connect(settings.database_url)
    try:
        # A write that holds the row across the slot (as a slow PATCH would): the sweeper
        # skips the locked schedule (SKIP LOCKED) and fires nothing meanwhile.
        with holder.cursor() as cur:
            cur.execute("SELECT 1 FROM schedules WHERE id = %s FOR UPDATE", (doc["id"],))
        time.sleep(max((start - datetime.now(UTC)).total_seconds(), 0) + 1.0)
        assert slots_of(settings.database_url, doc["id"]) == []
        thread, result = patch_in_thread(
            client, headers, doc["id"], {"interval": 2000, "name": "now every 2 s"}
        )
        wait_for(lambda: lock_waiters(settings.database_url) >= 1, timeout=10)
    finally:
        holder.rollback()
        holder.close()
    thread.join(20)
    assert result["status"] == 200, result
    # The slot was due and not fired when the PATCH read the row: the PATCH keeps it (the new
    # timing has a slot there), so it fires, late but once, and the new timing follows.
    wait_for(lambda: len(slots_of(settings.database_url, doc["id"])) >= 3, timeout=20)
    slots = slots_of(settings.database_url, doc["id"])
    assert slots[0] == start
    assert all(b - a == timedelta(seconds=2) for a, b in zip(slots, slots[1:], strict=False))


def test_patching_start_and_end_of_a_live_schedule(client, auth, processes, settings):
    headers = auth.key("*")
    processes.sweeper()
    doc = create(client, headers)  # every second from its creation
    wait_for(lambda: len(slots_of(settings.database_url, doc["id"])) >= 2, timeout=30)

    end = datetime.now(UTC) + timedelta(seconds=2.5)
    response = client.patch(f"{URL}/{doc['id']}", json={"endAt": rfc(end)}, headers=headers)
    assert response.status_code == 200 and at(response.get_json()["nextRunAt"]) <= end
    time.sleep((end - datetime.now(UTC)).total_seconds() + 2)
    slots = slots_of(settings.database_url, doc["id"])
    assert max(slots) <= end and end - max(slots) < timedelta(seconds=1)  # through endAt
    assert get(client, headers, doc["id"])["nextRunAt"] is None  # finished
    time.sleep(1.5)
    assert slots_of(settings.database_url, doc["id"]) == slots  # nothing past endAt

    # Moving startAt ahead (and endAt away) restarts it there, its slots anchored on startAt.
    start = whole_second(3) + timedelta(milliseconds=250)
    response = client.patch(
        f"{URL}/{doc['id']}", json={"startAt": rfc(start), "endAt": None}, headers=headers
    )
    assert response.status_code == 200 and at(response.get_json()["nextRunAt"]) == start
    time.sleep(max((start - datetime.now(UTC)).total_seconds(), 0) - 0.3)
    assert slots_of(settings.database_url, doc["id"]) == slots  # nothing before startAt
    wait_for(lambda: len(slots_of(settings.database_url, doc["id"])) >= len(slots) + 3, 20)
    later = slots_of(settings.database_url, doc["id"])[len(slots) :]
    assert later[:3] == [start + timedelta(seconds=k) for k in range(3)]


def add_schedule(database_url: str, owner: str = "alice", **values: Any) -> uuid.UUID:
    """Store a schedule straight in the ledger (as an older API might have), due now."""
    now = datetime.now(UTC)
    row: dict[str, Any] = {
        "name": "stored",
        "interval_ms": 1000,
        "timezone": "UTC",
        "task": {"taskDefinitionId": "echo", "input": {}, "priority": "MEDIUM"},
        "overlap_policy": "ALLOW",
        "catchup_window_ms": 60_000,
        "start_at": now.replace(microsecond=0),
        "next_run_at": now.replace(microsecond=0) + timedelta(seconds=1),
        **values,
    }
    schedule_id = uuid.uuid4()
    with ledger(database_url) as conn:
        store.insert_schedule(conn, schedule_id, owner, row, now)
        conn.commit()
    return schedule_id


@contextmanager
def definitions_restored(database_url: str, *definitions: TaskDefinition) -> Iterator[None]:
    """Put these definitions back as shipped afterwards (the ledger outlives one test)."""
    try:
        yield
    finally:
        with ledger(database_url) as conn, conn.cursor() as cur:
            ids = [d.id for d in definitions]
            cur.execute("DELETE FROM task_definition_versions WHERE id = ANY(%s)", (ids,))
            cur.execute("DELETE FROM task_definitions WHERE id = ANY(%s)", (ids,))
            store.publish_definitions(conn, definitions)
            conn.commit()


def test_a_removed_definition_skips_with_a_reason_and_the_others_fire_on(
    client, auth, processes, settings
):
    with definitions_restored(settings.database_url, SLEEP):
        removed_definition_skips(client, auth, processes, settings)


def removed_definition_skips(client: Any, auth: Any, processes: Any, settings: Any) -> None:
    headers = auth.key("*")
    doomed = create(client, headers, task={"taskDefinitionId": "sleep", "input": {"seconds": 0}})
    steady = create(client, headers)
    processes.sweeper()
    wait_for(lambda: len(slots_of(settings.database_url, doomed["id"])) >= 1, timeout=30)
    with ledger(settings.database_url) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM task_definitions WHERE id = 'sleep'")  # an operator removes it
        conn.commit()
    fired_before = len(slots_of(settings.database_url, doomed["id"]))
    steady_before = len(slots_of(settings.database_url, steady["id"]))

    def skipping() -> dict[str, Any] | None:
        doc = get(client, headers, doomed["id"])
        return doc if doc["skippedSlots"] >= 3 else None

    doc = wait_for(skipping, timeout=20)
    assert doc["lastSkipReason"] == "DEFINITION_NOT_FOUND"
    assert "'sleep'" in doc["lastSkipMessage"] and "not published" in doc["lastSkipMessage"]
    assert at(doc["nextRunAt"]) > at(doc["lastSkippedAt"])  # it moves on: the loop is not stuck
    assert len(slots_of(settings.database_url, doomed["id"])) <= fired_before + 1
    steady_slots = slots_of(settings.database_url, steady["id"])
    assert len(steady_slots) >= steady_before + 2  # the other schedule kept firing every slot
    assert all(
        b - a == timedelta(seconds=1) for a, b in zip(steady_slots, steady_slots[1:], strict=False)
    )

    with ledger(settings.database_url) as conn:
        store.publish_definitions(conn, [SLEEP])  # back: the schedule fires again by itself
        conn.commit()
    again = len(slots_of(settings.database_url, doomed["id"]))
    wait_for(lambda: len(slots_of(settings.database_url, doomed["id"])) >= again + 2, timeout=20)


def test_input_that_no_longer_matches_the_schema_skips_with_the_fields(
    client, auth, processes, settings
):
    with definitions_restored(settings.database_url, ECHO):
        input_no_longer_valid_skips(client, auth, processes, settings)


def input_no_longer_valid_skips(client: Any, auth: Any, processes: Any, settings: Any) -> None:
    headers = auth.key("*")
    stale = create(client, headers, task={"taskDefinitionId": "echo", "input": {"hello": "x"}})
    steady = create(client, headers, task={"taskDefinitionId": "sleep", "input": {"seconds": 0}})
    processes.sweeper()
    wait_for(lambda: len(slots_of(settings.database_url, stale["id"])) >= 1, timeout=30)
    stricter = dataclasses.replace(
        ECHO,
        version="9.0.0",
        input_schema={"type": "object", "required": ["orderId"]},
    )
    with ledger(settings.database_url) as conn:
        store.publish_definitions(conn, [stricter])  # a new release of the definition
        conn.commit()

    def skipping() -> dict[str, Any] | None:
        doc = get(client, headers, stale["id"])
        return doc if doc["skippedSlots"] >= 2 else None

    doc = wait_for(skipping, timeout=20)
    assert doc["lastSkipReason"] == "INPUT_INVALID"
    assert "9.0.0" in doc["lastSkipMessage"] and "orderId" in doc["lastSkipMessage"]
    steady_before = len(slots_of(settings.database_url, steady["id"]))
    wait_for(lambda: len(slots_of(settings.database_url, steady["id"])) >= steady_before + 2, 20)

    # Fixing the template (checked against the new schema) makes it fire again.
    fixed = {"task": {"taskDefinitionId": "echo", "input": {"orderId": "ORD-1"}}}
    assert client.patch(f"{URL}/{stale['id']}", json=fixed, headers=headers).status_code == 200
    count = len(slots_of(settings.database_url, stale["id"]))
    wait_for(lambda: len(slots_of(settings.database_url, stale["id"])) >= count + 2, timeout=20)
    with ledger(settings.database_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT definition_version, input FROM tasks WHERE schedule_id = %s"
            " ORDER BY scheduled_for DESC LIMIT 1",
            (uuid.UUID(stale["id"]),),
        )
        assert cur.fetchone() == ("9.0.0", {"orderId": "ORD-1"})


def test_a_row_the_database_refuses_costs_only_its_own_schedule(processes, settings):
    # Both due in the same rounds; the first one's timeout overflows the tasks column, which
    # the database refuses: that round is split and only the poisoned schedule skips.
    poisoned = add_schedule(
        settings.database_url,
        task={
            "taskDefinitionId": "echo",
            "input": {},
            "priority": "MEDIUM",
            "executionConfig": {"timeout": 10**12},
        },
    )
    healthy = add_schedule(settings.database_url)
    processes.sweeper()
    wait_for(lambda: len(slots_of(settings.database_url, str(healthy))) >= 3, timeout=30)
    with ledger(settings.database_url) as conn:
        row = store.get_schedule(conn, poisoned, None)
    assert row is not None and row.skipped_count >= 2
    assert row.last_skip_reason == "TEMPLATE_INVALID"
    assert row.last_skip_message is not None and "refused" in row.last_skip_message
    assert slots_of(settings.database_url, str(poisoned)) == []
    healthy_slots = slots_of(settings.database_url, str(healthy))
    assert all(
        b - a == timedelta(seconds=1)
        for a, b in zip(healthy_slots, healthy_slots[1:], strict=False)
    )
