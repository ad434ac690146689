"""What the metrics scrape and the readiness probe read: active counts, executors, a ping."""

from __future__ import annotations

from dataclasses import dataclass

from shared.status import ACTIVE
from shared.store._rows import Conn, all_, statuses

_ACTIVE = statuses(ACTIVE)


@dataclass(frozen=True)
class ActiveGroup:
    """Active tasks of one status, definition and executor, for the scrape-time gauges."""

    status: str
    definition: str
    executor: str
    manual: bool
    count: int
    oldest_pending_seconds: float | None


def active_groups(conn: Conn, timeout_ms: int = 2000) -> list[ActiveGroup]:
    """Count active tasks by status, definition and executor (an index range over the active
    rows only)."""
    with conn.cursor() as cur:
        # A scrape must never pile up behind a slow database: give up rather than queue.
        cur.execute("SET LOCAL statement_timeout = %s", (timeout_ms,))
        cur.execute(
            """
            SELECT status, task_definition_id AS definition, executor,
                type = 'MANUAL' AS manual, count(*) AS count,
                EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE status = 'PENDING'))
                    ::float8 AS oldest_pending_seconds
            FROM tasks WHERE status = ANY(%s)
            GROUP BY status, task_definition_id, executor, type = 'MANUAL'
            """,
            (_ACTIVE,),
        )
        return all_(cur, ActiveGroup)


def worker_definitions(conn: Conn) -> dict[str, str]:
    """Map each published definition that a worker runs to its executor (idle ones read 0)."""
    with conn.cursor() as cur:
        cur.execute("SELECT id, executor FROM task_definitions WHERE type <> 'MANUAL'")
        return {str(row[0]): str(row[1]) for row in cur.fetchall()}


def ping(conn: Conn) -> None:
    """Run a trivial query (readiness)."""
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchone()
