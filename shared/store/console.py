"""Reads for the operator's console: a task's log tail and tasks finished per minute."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from shared.store._rows import Conn, all_
from shared.store.logs import LogLine

#: The statuses the console counts as failed in its per-minute chart.
FAILED_STATUSES = ("FAILED", "TIMED_OUT")


def log_tail(conn: Conn, task_id: uuid.UUID, limit: int) -> list[LogLine]:
    """The last `limit` log lines of a task, oldest first (the primary key serves it)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT * FROM (SELECT seq, attempt, level, message, created_at FROM task_logs"
            " WHERE task_id = %s ORDER BY seq DESC LIMIT %s) tail ORDER BY seq",
            (task_id, limit),
        )
        return all_(cur, LogLine)


@dataclass(frozen=True)
class MinuteCount:
    """Tasks that ended in one minute: completed, and failed or timed out."""

    minute: datetime
    completed: int
    failed: int


def finished_per_minute(conn: Conn, owner: str | None, minutes: int = 60) -> list[MinuteCount]:
    """Tasks completed and failed in each of the last `minutes` whole minutes, oldest first.

    Every minute is present (zero when nothing ended), the current, partial one last. Reads
    the tasks_ended index (migration 0012) for the time range; `owner` narrows it to one
    principal's tasks (None: everyone's).
    """
    owner_clause = "" if owner is None else " AND t.owner = %(owner)s"
    # The start is a plain expression (now() is fixed within the transaction), so it is an
    # index condition on tasks_ended: an index-only scan of the hour's rows.
    start = "date_trunc('minute', now()) - make_interval(mins => %(back)s)"
    with conn.cursor() as cur:
        cur.execute(
            "WITH ended AS (SELECT date_trunc('minute', t.end_time) AS minute,"
            " count(*) FILTER (WHERE t.status = 'COMPLETED') AS completed,"
            " count(*) FILTER (WHERE t.status = ANY(%(failed)s)) AS failed"
            f" FROM tasks t WHERE t.end_time >= {start}{owner_clause} GROUP BY 1)"
            " SELECT m.minute, COALESCE(e.completed, 0) AS completed,"
            " COALESCE(e.failed, 0) AS failed"
            f" FROM generate_series({start}, date_trunc('minute', now()), interval '1 minute')"
            " AS m(minute) LEFT JOIN ended e USING (minute) ORDER BY m.minute",
            {"back": minutes - 1, "owner": owner, "failed": list(FAILED_STATUSES)},
        )
        return all_(cur, MinuteCount)
