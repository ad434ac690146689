"""Retention: pins, and the batched purge of finished tasks past their retention."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from shared.retention import RetentionClass
from shared.status import TERMINAL
from shared.store._rows import Conn, one, statuses
from shared.store.tasks import Task

_TERMINAL = statuses(TERMINAL)

# One index range scan of tasks_retention per class (definition, status), oldest first; the
# literal status list lets the planner prove the partial index's predicate. The candidates
# are locked with SKIP LOCKED, so several sweepers share the work and a task being pinned (or
# ended, or read FOR UPDATE) is left for a later round rather than waited for. Attempts and
# logs go by ON DELETE CASCADE; idempotency records have no foreign key, so a CTE takes them.
_PURGE = f"""
WITH classes AS (
    SELECT * FROM unnest(%(definitions)s::text[], %(statuses)s::text[], %(seconds)s::float8[])
        AS c(definition_id, status, seconds)
), doomed AS (
    SELECT victim.id FROM classes
    CROSS JOIN LATERAL (
        SELECT t.id FROM tasks t
        WHERE t.task_definition_id = classes.definition_id AND t.status = classes.status
          AND t.end_time < now() - make_interval(secs => classes.seconds)
          AND t.end_time IS NOT NULL AND NOT t.pinned
          AND t.status IN ({", ".join(f"'{s}'" for s in _TERMINAL)})
        ORDER BY t.end_time
        LIMIT %(limit)s
        FOR UPDATE OF t SKIP LOCKED
    ) victim
    LIMIT %(limit)s
), keys AS (
    DELETE FROM idempotency_keys WHERE task_id IN (SELECT id FROM doomed)
)
DELETE FROM tasks WHERE id IN (SELECT id FROM doomed)
"""


def definition_retentions(conn: Conn) -> dict[str, str | None]:
    """Map every published definition to its `retention` override (None: the settings')."""
    with conn.cursor() as cur:
        cur.execute("SELECT id, retention FROM task_definitions")
        return {row[0]: row[1] for row in cur.fetchall()}


def purge_expired_tasks(conn: Conn, classes: Iterable[RetentionClass], limit: int) -> int:
    """Delete at most `limit` finished, unpinned tasks past their retention; return how many."""
    chosen = list(classes)
    if not chosen:
        return 0
    with conn.cursor() as cur:
        cur.execute(
            _PURGE,
            {
                "definitions": [c.definition_id for c in chosen],
                "statuses": [c.status for c in chosen],
                "seconds": [c.seconds for c in chosen],
                "limit": limit,
            },
        )
        return int(cur.rowcount)


def set_pinned(conn: Conn, task_id: uuid.UUID, owner: str | None, pinned: bool) -> Task | None:
    """Pin or unpin a task (`owner` None: anyone's); None when there is no such task."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE tasks SET pinned = %s WHERE id = %s AND (%s::text IS NULL OR owner = %s)"
            " RETURNING *",
            (pinned, task_id, owner, owner),
        )
        return one(cur, Task)
