"""Retention: pins, and the batched purge of finished tasks past their retention."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from shared.retention import RetentionClass
from shared.status import TERMINAL
from shared.store._rows import Conn, one, scalar, statuses
from shared.store.tasks import Task

_TERMINAL = statuses(TERMINAL)

# One index range scan of tasks_retention per class (definition, status), oldest first; the
# literal status list lets the planner prove the partial index's predicate. The expiry is a
# row comparison on the index's three columns, which only tasks_retention can take as a bound:
# written `end_time < cutoff`, the planner may walk tasks_ended (0012, end_time alone) instead
# and filter out every other class's rows (1.4 s instead of 17 ms a batch over a million).
# No FOR UPDATE: one purger runs at a time (try_lock_purge), and locking each row first would
# write every doomed heap tuple twice (the lock, then the delete). A task pinned while the
# statement runs is kept all the same: the DELETE waits for the pin's row lock, then rechecks
# `NOT pinned` on the new row version (READ COMMITTED's re-evaluation) and skips it. Attempts
# and logs go by ON DELETE CASCADE; idempotency records, which have no foreign key, go with
# the tasks actually deleted (RETURNING), in the same statement.
_PURGE = f"""
WITH classes AS (
    SELECT * FROM unnest(%(definitions)s::text[], %(statuses)s::text[], %(seconds)s::float8[])
        AS c(definition_id, status, seconds)
), doomed AS (
    SELECT victim.id FROM classes
    CROSS JOIN LATERAL (
        SELECT t.id FROM tasks t
        WHERE t.task_definition_id = classes.definition_id AND t.status = classes.status
          AND (t.task_definition_id, t.status, t.end_time) < (
              classes.definition_id, classes.status,
              now() - make_interval(secs => classes.seconds))
          AND t.end_time IS NOT NULL AND NOT t.pinned
          AND t.status IN ({", ".join(f"'{s}'" for s in _TERMINAL)})
        ORDER BY t.end_time
        LIMIT %(limit)s
    ) victim
    LIMIT %(limit)s
), gone AS (
    DELETE FROM tasks t USING doomed WHERE t.id = doomed.id AND NOT t.pinned RETURNING t.id
), keys AS (
    DELETE FROM idempotency_keys k USING gone WHERE k.task_id = gone.id
)
SELECT count(*) FROM gone
"""

#: pg_try_advisory_lock's key for the purge ("taskexec purge"): one purger in the fleet at a
#: time, so its pacing bounds the load on the database however many sweepers run.
_PURGE_LOCK = 0x7461736B_70757267


def try_lock_purge(conn: Conn) -> bool:
    """Take the fleet's purge lock for this session; False when another sweeper holds it."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (_PURGE_LOCK,))
        return bool(scalar(cur, bool))


def unlock_purge(conn: Conn) -> None:
    """Release the purge lock this session holds."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_unlock(%s)", (_PURGE_LOCK,))


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
        # A purge lost in a crash is redone by the next round: its commit need not wait for
        # the WAL flush, which spares the submits' own commits a queue behind its WAL.
        cur.execute("SET LOCAL synchronous_commit = off")
        cur.execute(
            _PURGE,
            {
                "definitions": [c.definition_id for c in chosen],
                "statuses": [c.status for c in chosen],
                "seconds": [c.seconds for c in chosen],
                "limit": limit,
            },
        )
        return scalar(cur, int)


def set_pinned(conn: Conn, task_id: uuid.UUID, owner: str | None, pinned: bool) -> Task | None:
    """Pin or unpin a task (`owner` None: anyone's); None when there is no such task."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE tasks SET pinned = %s WHERE id = %s AND (%s::text IS NULL OR owner = %s)"
            " RETURNING *",
            (pinned, task_id, owner, owner),
        )
        return one(cur, Task)
