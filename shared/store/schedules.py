"""Recurring schedules: their rows, the sweeper's claim of due ones, and the tasks they fire."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2.extras
from psycopg2.extras import Json

from shared.status import ACTIVE, Status
from shared.store._rows import Conn, all_, one, statuses
from shared.store.tasks import RELEASE_CHANNEL, Task

_ACTIVE = statuses(ACTIVE)


@dataclass(frozen=True)
class Schedule:
    """One row of the schedules table."""

    id: uuid.UUID
    owner: str
    name: str
    cron: str | None
    interval_ms: int | None
    timezone: str
    task: dict[str, Any]
    overlap_policy: str
    catchup_window_ms: int
    start_at: datetime | None
    end_at: datetime | None
    paused: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    skipped_count: int
    last_skipped_at: datetime | None
    created_at: datetime
    updated_at: datetime


#: The columns a client may write (POST and PATCH); the rest the service keeps.
WRITABLE = (
    "name",
    "cron",
    "interval_ms",
    "timezone",
    "task",
    "overlap_policy",
    "catchup_window_ms",
    "start_at",
    "end_at",
    "paused",
    "next_run_at",
)


def _param(column: str, value: Any) -> Any:
    return Json(value) if column == "task" else value


def insert_schedule(
    conn: Conn, schedule_id: uuid.UUID, owner: str, values: dict[str, Any], created_at: datetime
) -> Schedule:
    """Store a new schedule (`values` keyed by WRITABLE columns)."""
    columns = [c for c in WRITABLE if c in values]
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO schedules (id, owner, created_at, updated_at, {', '.join(columns)})"
            f" VALUES (%s, %s, %s, %s, {', '.join(['%s'] * len(columns))}) RETURNING *",
            [schedule_id, owner, created_at, created_at] + [_param(c, values[c]) for c in columns],
        )
        row = one(cur, Schedule)
        assert row is not None
        # Wakes a sleeping sweeper (at commit) to fire a slot sooner than it planned.
        cur.execute(f"NOTIFY {RELEASE_CHANNEL}")
        return row


def get_schedule(
    conn: Conn, schedule_id: uuid.UUID, owner: str | None, *, lock: bool = False
) -> Schedule | None:
    """Return a schedule; with `owner`, only if that principal owns it (FOR UPDATE with lock)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT * FROM schedules WHERE id = %s AND (%s::text IS NULL OR owner = %s)"
            + (" FOR UPDATE" if lock else ""),
            (schedule_id, owner, owner),
        )
        return one(cur, Schedule)


def update_schedule(conn: Conn, schedule_id: uuid.UUID, values: dict[str, Any]) -> Schedule:
    """Write the given WRITABLE columns of a schedule (locked by the caller)."""
    columns = [c for c in WRITABLE if c in values]
    sets = "".join(f", {c} = %s" for c in columns)
    with conn.cursor() as cur:
        cur.execute(
            f"UPDATE schedules SET updated_at = now(){sets} WHERE id = %s RETURNING *",
            [_param(c, values[c]) for c in columns] + [schedule_id],
        )
        row = one(cur, Schedule)
        assert row is not None
        # Wakes a sleeping sweeper (at commit) to fire a slot sooner than it planned.
        cur.execute(f"NOTIFY {RELEASE_CHANNEL}")
        return row


def delete_schedule(conn: Conn, schedule_id: uuid.UUID, owner: str | None) -> bool:
    """Delete a schedule (its tasks stay); False if no such (visible) schedule."""
    with conn.cursor() as cur:
        cur.execute(
            "DELETE FROM schedules WHERE id = %s AND (%s::text IS NULL OR owner = %s)",
            (schedule_id, owner, owner),
        )
        return bool(cur.rowcount)


@dataclass(frozen=True)
class ScheduleFilter:
    """The listing filters; None means no filter."""

    owner: str | None = None
    paused: bool | None = None
    task_definition_id: str | None = None


def list_schedules(
    conn: Conn,
    flt: ScheduleFilter,
    *,
    limit: int,
    offset: int = 0,
    after: tuple[datetime, uuid.UUID] | None = None,
) -> tuple[list[Schedule], int]:
    """Page through schedules newest first (by offset or a cursor); return (page, total)."""
    where: list[str] = ["TRUE"]
    params: list[Any] = []
    if flt.owner is not None:
        where.append("owner = %s")
        params.append(flt.owner)
    if flt.paused is not None:
        where.append("paused = %s")
        params.append(flt.paused)
    if flt.task_definition_id is not None:
        where.append("task ->> 'taskDefinitionId' = %s")
        params.append(flt.task_definition_id)
    clause = " AND ".join(where)
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM schedules WHERE {clause}", params)
        row = cur.fetchone()
        total = int(row[0]) if row else 0
        page_clause, page_params = clause, list(params)
        if after is not None:
            page_clause += " AND (created_at, id) < (%s, %s)"
            page_params += [after[0], after[1]]
            offset = 0
        cur.execute(
            f"SELECT * FROM schedules WHERE {page_clause}"
            " ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s",
            [*page_params, limit, offset],
        )
        return all_(cur, Schedule), total


def claim_due_schedules(conn: Conn, limit: int) -> tuple[list[Schedule], datetime]:
    """Lock due, unpaused schedules for this transaction; return them and the database's now.

    SKIP LOCKED: a schedule another sweeper is firing is left to it. Exactly-once does not
    rest on this lock (the unique slot index holds it); the lock only spares duplicate work.
    """
    with conn.cursor() as cur:
        cur.execute(
            "SELECT * FROM schedules WHERE NOT paused AND next_run_at IS NOT NULL"
            " AND next_run_at <= now() ORDER BY next_run_at LIMIT %s FOR UPDATE SKIP LOCKED",
            (limit,),
        )
        due = all_(cur, Schedule)
        cur.execute("SELECT now()")
        row = cur.fetchone()
        assert row is not None
        return due, row[0]


def record_rounds(conn: Conn, rounds: Sequence[tuple[Any, ...]]) -> None:
    """record_round for many schedules in one statement: (id, next_run_at, last_run_at,
    skipped, last_skipped_at) each."""
    if not rounds:
        return
    with conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur,
            """
            UPDATE schedules s SET next_run_at = v.next_run_at,
                last_run_at = COALESCE(v.last_run_at, s.last_run_at),
                skipped_count = s.skipped_count + v.skipped,
                last_skipped_at = COALESCE(v.last_skipped_at, s.last_skipped_at)
            FROM (VALUES %s) v(id, next_run_at, last_run_at, skipped, last_skipped_at)
            WHERE s.id = v.id
            """,
            rounds,
            template="(%s::uuid, %s::timestamptz, %s::timestamptz, %s::bigint, %s::timestamptz)",
            page_size=len(rounds),
        )


def active_tasks_of(conn: Conn, schedule_id: uuid.UUID) -> list[Task]:
    """The schedule's tasks that are not terminal yet (for its overlap policy)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT * FROM tasks WHERE schedule_id = %s AND status = ANY(%s)",
            (schedule_id, _ACTIVE),
        )
        return all_(cur, Task)


_SLOT_COLUMNS = (
    "id, owner, task_definition_id, definition_version, workflow_instance_id, type, status,"
    " priority, executor, input, timeout_ms, retry_policy, source, schedule_id, scheduled_for,"
    " published_at"
)
_SLOT_TEMPLATE = "(" + ", ".join(["%s"] * 15) + ", CASE WHEN %s THEN now() END)"


def insert_schedule_tasks(conn: Conn, rows: Sequence[dict[str, Any]]) -> list[Task]:
    """Insert a schedule's tasks (shared.schedules.template_row dicts); a slot already fired
    (same schedule and scheduled_for, by any sweeper) inserts nothing and is not returned.

    Like a submission, a row is stamped published when inserted: the caller publishes it
    after commit through the outbox, and the sweeper republishes it if that fails.
    """
    if not rows:
        return []
    values = [
        (
            r["id"],
            r["owner"],
            r["task_definition_id"],
            r["definition_version"],
            r["workflow_instance_id"],
            r["type"],
            Status.PENDING.value,
            r["priority"],
            r["executor"],
            Json(r["input"]),
            r["timeout_ms"],
            Json(r["retry_policy"]),
            r["source"],
            r["schedule_id"],
            r["scheduled_for"],
            r["published"],
        )
        for r in rows
    ]
    with conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur,
            f"INSERT INTO tasks ({_SLOT_COLUMNS}) VALUES %s"
            " ON CONFLICT (schedule_id, scheduled_for) WHERE schedule_id IS NOT NULL"
            " DO NOTHING RETURNING *",
            values,
            template=_SLOT_TEMPLATE,
            page_size=len(values),
        )
        return all_(cur, Task)


def next_schedule_in(conn: Conn) -> float | None:
    """Seconds until the earliest unpaused schedule falls due (None: none waits ahead).

    One entry of the partial index schedules_due, whatever the number of schedules.
    """
    with conn.cursor() as cur:
        cur.execute(
            "SELECT EXTRACT(EPOCH FROM next_run_at - now())::float FROM schedules"
            " WHERE NOT paused AND next_run_at IS NOT NULL AND next_run_at > now()"
            " ORDER BY next_run_at LIMIT 1"
        )
        row = cur.fetchone()
        return None if row is None else float(row[0])
