"""The overlap check reads only a schedule's active tasks, however long its history."""

from __future__ import annotations

import uuid
from contextlib import closing
from typing import Any, ClassVar

import psycopg2.extensions
import pytest

from cli.base import ledger
from shared import db, store
from tests.helpers import Backends

pytestmark = pytest.mark.integration

FINISHED = ["COMPLETED", "FAILED", "TIMED_OUT", "CANCELLED"]
ACTIVE = ["PENDING", "RUNNING", "RETRYING"]


class RecordingCursor(psycopg2.extensions.cursor):
    """A cursor that keeps the text it sent, so the test explains exactly that statement."""

    sent: ClassVar[list[bytes]] = []

    def execute(self, query: Any, vars: Any = None) -> None:
        super().execute(query, vars)
        assert self.query is not None
        RecordingCursor.sent.append(self.query)


def _schedule_tasks(cur: Any, schedule_id: uuid.UUID, finished: int, active: str | None) -> Any:
    """`finished` terminal tasks of the schedule, one a minute, and one `active` task after them."""
    cur.execute(
        "INSERT INTO tasks (id, owner, task_definition_id, definition_version, type, status,"
        " executor, input, timeout_ms, retry_policy, schedule_id, scheduled_for)"
        " SELECT gen_random_uuid(), 'alice', 'echo', '1.0.0', 'AUTOMATED',"
        " (%s::text[])[1 + g %% 4], 'standard-executor', '{}', 60000, '{}', %s,"
        " '2026-01-01'::timestamptz + make_interval(mins => g)"
        " FROM generate_series(1, %s) g",
        (FINISHED, schedule_id, finished),
    )
    if active is None:
        return None
    cur.execute(
        "INSERT INTO tasks (id, owner, task_definition_id, definition_version, type, status,"
        " executor, input, timeout_ms, retry_policy, schedule_id, scheduled_for)"
        " VALUES (gen_random_uuid(), 'alice', 'echo', '1.0.0', 'AUTOMATED', %s,"
        " 'standard-executor', '{}', 60000, '{}', %s,"
        " '2026-01-01'::timestamptz + make_interval(mins => %s)) RETURNING id",
        (active, schedule_id, finished + 1),
    )
    return cur.fetchone()[0]


def test_the_overlap_check_reads_the_active_tasks_by_index(
    backends: Backends, clean_db: None
) -> None:
    """Each fire round asks which tasks of its SKIP and CANCEL_PREVIOUS schedules are active.

    Before migration 0019 no index had both schedule_id and status: the statement read each
    schedule's whole history (through tasks_schedule_created or tasks_schedule_slot, or a Seq
    Scan) or, as here, every active task of the ledger through tasks_status_created. 10
    schedules of 800 tasks took 1.58 ms, discarding 7,990 rows to return 10; 0.06 ms through
    tasks_schedule_active.
    """
    schedules = [uuid.uuid4() for _ in range(4)]
    other = uuid.uuid4()  # active too, but not asked about
    expected: dict[uuid.UUID, list[uuid.UUID]] = {}
    with ledger(backends.database_url) as conn, conn.cursor() as cur:
        for n, schedule_id in enumerate(schedules):
            active = ACTIVE[n % len(ACTIVE)] if n < 3 else None  # the fourth has none active
            task_id = _schedule_tasks(cur, schedule_id, 2000, active)
            if task_id is not None:
                expected[schedule_id] = [task_id]
        _schedule_tasks(cur, other, 2000, "RUNNING")
        cur.execute(  # tasks no schedule made, some active: the index never holds them
            "INSERT INTO tasks (id, owner, task_definition_id, definition_version, type, status,"
            " executor, input, timeout_ms, retry_policy)"
            " SELECT gen_random_uuid(), 'alice', 'echo', '1.0.0', 'AUTOMATED',"
            " (ARRAY['PENDING', 'COMPLETED'])[1 + g % 2], 'standard-executor', '{}', 60000, '{}'"
            " FROM generate_series(1, 2000) g"
        )
    with closing(db.connect(backends.database_url)) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("ANALYZE tasks")
        conn.cursor_factory = RecordingCursor
        RecordingCursor.sent.clear()
        found = store.active_schedule_tasks(conn, schedules)
        [statement] = RecordingCursor.sent
        conn.cursor_factory = psycopg2.extensions.cursor
        with conn.cursor() as cur:
            cur.execute(b"EXPLAIN " + statement)
            plan = "\n".join(row[0] for row in cur.fetchall())

    # With few active tasks in the ledger the planner may AND tasks_status_created in (it has
    # no statistics for the partial index's rows); with a backlog it reads this index alone.
    assert "tasks_schedule_active" in plan, plan
    assert "tasks_schedule_created" not in plan, plan
    assert "tasks_schedule_slot" not in plan, plan
    assert "Seq Scan" not in plan, plan
    assert found == expected
