"""Retention: pins, and the batched purge of finished tasks past their retention."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from shared.retention import RetentionClass
from shared.status import TERMINAL
from shared.store._rows import Conn, one, scalar, statuses
from shared.store.tasks import Task

_TERMINAL = statuses(TERMINAL)

# A batch deletes the oldest expired tasks of every class (definition, terminal status)
# together: those that ended within %(span)s seconds of the oldest expired one (its "horizon"),
# each no later than its class's cutoff, at most `limit`. Tasks that ended together were
# inserted together and share heap pages, so each page of tasks, attempts and logs is emptied
# by one or two batches. Taking one class after the other (as before) touched every page again
# in each class's pass, and a page's first change after a checkpoint writes its full image to
# the WAL: 0.53 page images and 4.2 KB of WAL per task, which the submits' synchronous commits
# had to flush before their own; now 0.06 and 650 bytes, at half the CPU (docs/benchmarks.md,
# Retention). The caller adapts the span so that about `limit` tasks fall under the horizon;
# `covered` says whether it passed every cutoff, i.e. whether a short batch means that nothing
# expired is left.
#
# Plans (EXPLAIN ANALYZE over a million tasks): the oldest expired task of each class is the
# first entry of its tasks_retention range (`end_time < cutoff` is a bound the scan stops at,
# so a class with nothing expired costs one index probe; the row comparison used before was
# not a stop key for the end_time column, so such a class read its whole index range every
# round: 22,000 buffers and 270 ms per round over a million tasks with nothing to purge); the
# batch is one range scan of tasks_ended (0012) between the oldest and the horizon, joined to
# the classes, and the DELETE finds its rows by ctid (no second index lookup).
#
# No FOR UPDATE: one purger runs at a time (try_lock_purge), and locking each row first would
# write every doomed heap tuple twice (the lock, then the delete). A task pinned while the
# statement runs is kept all the same: the DELETE waits for the pin's row lock, then
# re-evaluates its conditions on the new row version (READ COMMITTED), which has another ctid
# and is pinned, and skips it. Attempts and logs go by ON DELETE CASCADE; idempotency records,
# which have no foreign key, go with the tasks actually deleted (RETURNING), in the same
# statement.
_TERMINAL_LIST = ", ".join(f"'{s}'" for s in _TERMINAL)
_PURGE = f"""
WITH classes AS (
    SELECT c.definition_id, c.status, now() - make_interval(secs => c.seconds) AS cutoff
    FROM unnest(%(definitions)s::text[], %(statuses)s::text[], %(seconds)s::float8[])
        AS c(definition_id, status, seconds)
), bound AS (
    SELECT min(first.end_time) AS oldest,
           min(first.end_time) + make_interval(secs => %(span)s) AS horizon
    FROM classes CROSS JOIN LATERAL (
        SELECT t.end_time FROM tasks t
        WHERE t.task_definition_id = classes.definition_id AND t.status = classes.status
          AND t.end_time >= coalesce(%(after)s, '-infinity'::timestamptz)
          AND t.end_time < classes.cutoff AND NOT t.pinned AND t.status IN ({_TERMINAL_LIST})
        ORDER BY t.end_time
        LIMIT 1
    ) first
), doomed AS (
    SELECT t.ctid, count(*) OVER () AS found FROM bound, classes
    JOIN tasks t ON t.task_definition_id = classes.definition_id AND t.status = classes.status
    WHERE t.end_time >= bound.oldest AND t.end_time < bound.horizon
      AND t.end_time < classes.cutoff
      AND NOT t.pinned AND t.status IN ({_TERMINAL_LIST})
    ORDER BY t.end_time
    LIMIT %(limit)s
), gone AS (
    DELETE FROM tasks t USING doomed WHERE t.ctid = doomed.ctid AND NOT t.pinned RETURNING t.id
), keys AS (
    DELETE FROM idempotency_keys k USING gone WHERE k.task_id = gone.id
)
SELECT (SELECT count(*) FROM gone) AS deleted,
       coalesce((SELECT max(found) FROM doomed), 0) AS found,
       coalesce((SELECT horizon >= (SELECT max(cutoff) FROM classes) FROM bound), true)
           AS covered,
       (SELECT oldest FROM bound) AS oldest
"""


@dataclass(frozen=True)
class PurgeBatch:
    """What one purge statement did: tasks deleted, and whether its horizon passed every cutoff."""

    deleted: int
    #: Expired tasks under the horizon (`deleted` is at most `limit` of them).
    found: int
    covered: bool
    #: The end time the batch started from; the next batch of the run looks no earlier.
    oldest: datetime | None


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


def purge_expired_tasks(
    conn: Conn,
    classes: Iterable[RetentionClass],
    limit: int,
    span: float,
    after: datetime | None = None,
) -> PurgeBatch:
    """Delete at most `limit` finished, unpinned tasks past their retention, oldest first, that
    ended within `span` seconds of the oldest of them (and no earlier than `after`)."""
    chosen = list(classes)
    if not chosen:
        return PurgeBatch(0, 0, True, None)
    with conn.cursor() as cur:
        # A purge lost in a crash is redone by the next round: its commit need not wait for
        # the WAL flush, which spares the submits' own commits a queue behind its WAL.
        # JIT compiling would cost more than the statement (the planner's row estimates for
        # a batch can pass jit_above_cost).
        cur.execute("SET LOCAL synchronous_commit = off; SET LOCAL jit = off")
        cur.execute(
            _PURGE,
            {
                "definitions": [c.definition_id for c in chosen],
                "statuses": [c.status for c in chosen],
                "seconds": [c.seconds for c in chosen],
                "limit": limit,
                "span": span,
                "after": after,
            },
        )
        row = cur.fetchone()
        assert row is not None
        return PurgeBatch(int(row[0]), int(row[1]), bool(row[2]), row[3])


def set_pinned(conn: Conn, task_id: uuid.UUID, owner: str | None, pinned: bool) -> Task | None:
    """Pin or unpin a task (`owner` None: anyone's); None when there is no such task."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE tasks SET pinned = %s WHERE id = %s AND (%s::text IS NULL OR owner = %s)"
            " RETURNING *",
            (pinned, task_id, owner, owner),
        )
        return one(cur, Task)
