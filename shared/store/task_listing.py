"""Task listings: the filters of GET /api/v1/tasks (and its exports), their pages and counts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.pending import reason_clause
from shared.store._rows import Conn, all_, capped_count
from shared.store.tasks import Task


@dataclass(frozen=True)
class TaskFilter:
    """The listing filters; None means no filter."""

    owner: str | None = None
    statuses: tuple[str, ...] = ()
    type: str | None = None
    workflow_instance_id: str | None = None
    task_definition_id: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    schedule_id: uuid.UUID | None = None
    unretried: bool = False  # only tasks no retry names yet (a retry by filter)
    pending_reasons: tuple[str, ...] = ()  # waiting for any of these (shared/pending.py)
    live_executors: tuple[str, ...] | None = None  # for QUEUED/NO_WORKER; None: unknown


def _task_where(flt: TaskFilter) -> tuple[str, list[Any]]:
    where: list[str] = ["TRUE"]
    params: list[Any] = []
    if flt.owner is not None:
        where.append("owner = %s")
        params.append(flt.owner)
    if len(flt.statuses) == 1:
        # Plain equality lets the planner read (…, status, created_at) indexes in order.
        where.append("status = %s")
        params.append(flt.statuses[0])
    elif flt.statuses:
        where.append("status = ANY(%s)")
        params.append(list(flt.statuses))
    for column, value in (
        ("type", flt.type),
        ("workflow_instance_id", flt.workflow_instance_id),
        ("task_definition_id", flt.task_definition_id),
        ("schedule_id", flt.schedule_id),
    ):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if flt.created_after is not None:
        where.append("created_at >= %s")
        params.append(flt.created_after)
    if flt.created_before is not None:
        where.append("created_at < %s")
        params.append(flt.created_before)
    if flt.unretried:
        where.append("NOT EXISTS (SELECT 1 FROM tasks r WHERE r.retry_of = tasks.id)")
    if flt.pending_reasons:
        clause, values = reason_clause(flt.pending_reasons, flt.live_executors)
        where.append(clause)
        params += values
    return " AND ".join(where), params


def list_tasks(
    conn: Conn,
    flt: TaskFilter,
    *,
    limit: int,
    offset: int = 0,
    after: tuple[datetime, uuid.UUID] | None = None,
) -> list[Task]:
    """Page through tasks newest first, by offset or after a (created_at, id) cursor.

    The page's ids are found first in the listing indexes alone (index-only scans), and
    only those rows are read in full, so a deep offset skips index entries, not table rows.
    """
    clause, params = _task_where(flt)
    if after is not None:
        clause += " AND (created_at, id) < (%s, %s)"
        params += [after[0], after[1]]
        offset = 0
    with conn.cursor() as cur:
        cur.execute(
            f"""
            SELECT t.* FROM tasks t
            JOIN (SELECT id, created_at FROM tasks WHERE {clause}
                  ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s) page USING (id)
            ORDER BY page.created_at DESC, page.id DESC
            """,
            [*params, limit, offset],
        )
        return all_(cur, Task)


def count_tasks(conn: Conn, flt: TaskFilter, exact_max: int = 0) -> tuple[int, bool]:
    """Count the tasks a filter matches; return (count, exact).

    With `exact_max` > 0 at most `exact_max + 1` rows are counted; a larger result is the
    planner's estimate (never below `exact_max + 1`), because an exact count of a large
    match walks every matching index entry. 0 always counts exactly.
    """
    clause, params = _task_where(flt)
    with conn.cursor() as cur:
        return capped_count(cur, "tasks", clause, params, exact_max)
