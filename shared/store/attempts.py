"""Attempts: their rows, the lease, the outcome and the retry, each a fenced single statement."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg2.extras import Json

from shared.status import ALLOWED_FROM, HELD, Status
from shared.store._prepared import Prepared as _Prepared
from shared.store._rows import Conn, Cursor, all_, one, statuses
from shared.store.limits import HELD_BEHIND, LIMITED, wake_releaser
from shared.store.tasks import Task

_RETRY_FROM = statuses(ALLOWED_FROM[Status.RETRYING])
# An attempt records its own outcome only while it holds the task (and `attempts` is its own).
_OUTCOME_FROM = {s: statuses(ALLOWED_FROM[s] & HELD) for s in Status}


@dataclass(frozen=True)
class Attempt:
    """One execution attempt of a task."""

    task_id: uuid.UUID
    attempt: int
    status: str  # a task status, or SUPERSEDED for an attempt the task moved on without
    started_at: datetime
    ended_at: datetime | None
    worker_host: str | None
    worker_pid: int | None
    error: dict[str, Any] | None


def get_attempts(conn: Conn, task_id: uuid.UUID) -> list[Attempt]:
    """Return a task's attempts, first to last."""
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM task_attempts WHERE task_id = %s ORDER BY attempt", (task_id,))
        return all_(cur, Attempt)


def get_attempt(conn: Conn, task_id: uuid.UUID, attempt: int) -> Attempt | None:
    """Return one attempt of a task (how it ended, once it has)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT * FROM task_attempts WHERE task_id = %s AND attempt = %s", (task_id, attempt)
        )
        return one(cur, Attempt)


#: The error of an attempt that a cancel of its task ended: who cancelled, why, and whether it
#: was forced, read from the task row `t`. Its one home: every statement that closes an attempt
#: of a cancelled task writes it, whichever process noticed (child, worker parent, sweeper).
CANCEL_ERROR = """jsonb_build_object(
    'code', 'CANCELLED', 'kind', 'TASK_ERROR',
    'message', concat('cancelled by ', COALESCE(t.cancelled_by, 'an unknown caller'),
        CASE WHEN t.cancel_force THEN ' (forced)' END, ': ' || t.cancel_reason),
    'details', jsonb_build_object(
        'reason', t.cancel_reason, 'by', t.cancelled_by, 'force', t.cancel_force))"""


def close_attempt(
    cur: Cursor,
    task_id: uuid.UUID,
    attempt: int,
    outcome: str | None,
    error: dict[str, Any] | None,
) -> None:
    """End an open attempt row; with no `outcome`, say why the task moved on without it.

    A task that moved on by a cancel gives its attempt the cancel's own error, whatever the
    attempt was about to record (a forced cancel interrupts the handler with the soft time
    limit's exception, which would otherwise read as a timeout).
    """
    cur.execute(
        f"""
        UPDATE task_attempts a SET ended_at = now(),
            status = COALESCE(%(outcome)s, CASE WHEN t.status = 'CANCELLED' THEN 'CANCELLED'
                ELSE 'SUPERSEDED' END),
            error = CASE WHEN %(outcome)s IS NULL AND t.status = 'CANCELLED'
                THEN {CANCEL_ERROR} ELSE %(error)s END
        FROM tasks t
        WHERE t.id = a.task_id AND a.task_id = %(id)s AND a.attempt = %(attempt)s
          AND a.ended_at IS NULL
        """,
        {
            "id": task_id,
            "attempt": attempt,
            "outcome": outcome,
            "error": Json(error) if error is not None else None,
        },
    )


_FINISH_ATTEMPT = f"""
    WITH finished AS (
        UPDATE tasks SET status = %(status)s, output = %(output)s, error = %(error)s,
            end_time = now(), lease_expires_at = NULL, updated_at = now(),
            worker_lost_count = worker_lost_count + %(lost)s
        WHERE id = %(id)s AND status = ANY(%(from)s) AND attempts = %(attempt)s
        RETURNING id, {LIMITED} AND {HELD_BEHIND.format(t="tasks")} AS wake
    ), closed AS (
        UPDATE task_attempts a SET ended_at = now(), error = %(error)s, status = %(status)s
        WHERE a.task_id = %(id)s AND a.attempt = %(attempt)s AND a.ended_at IS NULL
          AND EXISTS (SELECT 1 FROM finished)
    )
    SELECT count(*), COALESCE(bool_or(wake), false) FROM finished
"""
_FINISH_PREPARED = _Prepared(
    "taskexec_finish",
    _FINISH_ATTEMPT,
    {
        "id": "uuid",
        "attempt": "int",
        "status": "text",
        "from": "text[]",
        "output": "jsonb",
        "error": "jsonb",
        "lost": "int",
    },
)


def finish_attempt(
    conn: Conn,
    task_id: uuid.UUID,
    attempt: int,
    status: Status,
    *,
    output: Any = None,
    error: dict[str, Any] | None = None,
) -> bool:
    """Record a terminal outcome of the current attempt; False if the task moved on meanwhile.

    One statement, the task and its attempt row together (a CTE), so it is atomic on an
    autocommit connection too. When the task moved on, the attempt is closed by a statement
    of its own: a CTE reads the snapshot from before the statement, which can predate the
    cancel that this update waited for, and would call a cancelled attempt SUPERSEDED.
    """
    with conn.cursor() as cur:
        _FINISH_PREPARED.run(
            cur,
            {
                "id": task_id,
                "attempt": attempt,
                "status": status.value,
                "from": _OUTCOME_FROM[status],
                "output": Json(output) if output is not None else None,
                "error": Json(error) if error is not None else None,
                # Count every lost worker, the final one too, as schedule_retry and fail_task do.
                "lost": 1 if error is not None and error.get("kind") == "WORKER_LOST" else 0,
            },
        )
        row = cur.fetchone()
        if row and row[0]:
            if row[1]:
                wake_releaser(cur)  # its limits have room again, and tasks wait for it
            return True
        close_attempt(cur, task_id, attempt, None, error)
        return False


def schedule_retry(
    conn: Conn,
    task_id: uuid.UUID,
    attempt: int,
    *,
    error: dict[str, Any],
    delay_ms: int,
    published: bool,
    worker_lost: bool = False,
    outcome: str = "FAILED",
) -> Task | None:
    """Move the current attempt's task to RETRYING, due after `delay_ms`.

    `published` says the caller will publish the message itself with a countdown; then
    `published_at` is the due time, so the sweeper republishes only if it never arrives.
    """
    with conn.cursor() as cur:
        cur.execute(
            """
            UPDATE tasks SET status = 'RETRYING', error = %(error)s,
                next_attempt_at = now() + make_interval(secs => %(delay)s),
                published_at = CASE WHEN %(published)s
                    THEN now() + make_interval(secs => %(delay)s) END,
                worker_lost_count = worker_lost_count + %(lost)s,
                lease_expires_at = NULL, updated_at = now()
            WHERE id = %(id)s AND status = ANY(%(from)s) AND attempts = %(attempt)s
            RETURNING *
            """,
            {
                "id": task_id,
                "attempt": attempt,
                "from": _RETRY_FROM,
                "error": Json(error),
                "delay": delay_ms / 1000.0,
                "published": published,
                "lost": 1 if worker_lost else 0,
            },
        )
        task = one(cur, Task)
        close_attempt(cur, task_id, attempt, outcome if task else None, error)
        if task is not None and task.limited:
            wake_releaser(cur, task_id)  # its limits have room until it runs again
        return task


@dataclass(frozen=True)
class Heartbeat:
    """What a running attempt learns when it renews its lease."""

    current: bool  # the attempt still owns the task
    cancel_requested: bool


def heartbeat(conn: Conn, task_id: uuid.UUID, attempt: int, lease: float) -> Heartbeat:
    """Extend the lease of a running attempt and report whether a cancel was requested."""
    with conn.cursor() as cur:
        cur.execute(
            """
            UPDATE tasks SET lease_expires_at = now() + make_interval(secs => %s)
            WHERE id = %s AND status = 'RUNNING' AND attempts = %s
            RETURNING cancel_requested_at IS NOT NULL
            """,
            (lease, task_id, attempt),
        )
        row = cur.fetchone()
        if row is not None:
            return Heartbeat(current=True, cancel_requested=bool(row[0]))
        cur.execute("SELECT cancel_requested_at IS NOT NULL FROM tasks WHERE id = %s", (task_id,))
        row = cur.fetchone()
        return Heartbeat(current=False, cancel_requested=bool(row and row[0]))


def cancel_state(conn: Conn, task_id: uuid.UUID, attempt: int) -> tuple[bool, bool]:
    """Say (stop, force) for a running attempt: stop once it was cancelled or superseded."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT status <> 'RUNNING' OR attempts <> %s OR cancel_requested_at IS NOT NULL,"
            " cancel_force FROM tasks WHERE id = %s",
            (attempt, task_id),
        )
        row = cur.fetchone()
        if row is None:
            return True, False
        return bool(row[0]), bool(row[0]) and bool(row[1])


def retry_due_in(conn: Conn, task_id: uuid.UUID) -> float | None:
    """Seconds until a RETRYING task whose retry rides on a countdown is due; else None."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT EXTRACT(EPOCH FROM next_attempt_at - now())::float FROM tasks"
            " WHERE id = %s AND status = 'RETRYING' AND cancel_requested_at IS NULL"
            " AND published_at IS NOT NULL AND next_attempt_at > now()",
            (task_id,),
        )
        row = cur.fetchone()
        return float(row[0]) if row else None


def end_abandoned_attempt(conn: Conn, task_id: uuid.UUID, host: str, pid: int) -> Attempt | None:
    """Close the attempt that (host, pid) ran if the task moved on without it; return it closed."""
    with conn.cursor() as cur:
        cur.execute(
            f"""
            UPDATE task_attempts a SET ended_at = now(), status = CASE
                WHEN t.status IN ('CANCELLED', 'TIMED_OUT', 'FAILED') THEN t.status
                ELSE 'SUPERSEDED' END,
                error = CASE WHEN t.status = 'CANCELLED' THEN {CANCEL_ERROR} ELSE a.error END
            FROM tasks t
            WHERE a.task_id = t.id AND a.task_id = %s AND a.ended_at IS NULL
              AND a.worker_host = %s AND a.worker_pid = %s
              AND NOT (t.status = 'RUNNING' AND t.attempts = a.attempt)
            RETURNING a.*
            """,
            (task_id, host, pid),
        )
        return one(cur, Attempt)


def set_progress(conn: Conn, task_id: uuid.UUID, attempt: int, progress: dict[str, Any]) -> None:
    """Record the latest progress of a running attempt."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE tasks SET progress = %s WHERE id = %s AND attempts = %s AND status = 'RUNNING'",
            (Json(progress), task_id, attempt),
        )


#: What rendering a batch of events reads besides their snapshots, in one round trip: the
#: tasks' attempts and the tasks that replay them (a UNION ALL: the retries' rows carry no
#: attempt). Prepared; by the keys' indexes (a plan made on tables that looked empty is
#: made again after slow runs: _prepared.SLOW_RUN_SECONDS).
_RENDER_LOOKUPS = _Prepared(
    "taskexec_render_lookups",
    """
    SELECT a.task_id, a.attempt, a.status, a.started_at, a.ended_at, a.worker_host,
        a.worker_pid, a.error, NULL::uuid AS retry_id, NULL::timestamptz AS retry_created_at
    FROM task_attempts a WHERE a.task_id = ANY (%(ids)s::uuid[])
    UNION ALL
    SELECT r.retry_of, NULL, NULL, NULL, NULL, NULL, NULL, NULL, r.id, r.created_at
    FROM tasks r WHERE r.retry_of = ANY (%(ids)s::uuid[])
    """,
    {"ids": "uuid[]"},
)


def attempts_and_retries_of_tasks(
    conn: Conn, task_ids: Iterable[uuid.UUID]
) -> tuple[dict[uuid.UUID, list[Any]], dict[uuid.UUID, list[uuid.UUID]]]:
    """Map each task to its attempts, first to last, and to the tasks that replay it, oldest first.

    One statement for a batch of deliveries (the deliverer's render).
    """
    ids = sorted({str(t) for t in task_ids})
    attempts: dict[uuid.UUID, list[Any]] = {}
    retries: dict[uuid.UUID, list[uuid.UUID]] = {}
    if not ids:
        return attempts, retries
    replays: list[tuple[datetime, uuid.UUID, uuid.UUID]] = []
    with conn.cursor() as cur:
        _RENDER_LOOKUPS.run(cur, {"ids": ids})
        for row in cur.fetchall():
            if row[8] is None:
                attempts.setdefault(row[0], []).append(Attempt(*row[:8]))
            else:
                replays.append((row[9], row[8], row[0]))
    for found in attempts.values():
        found.sort(key=lambda a: a.attempt)
    for _, tid, retry_of in sorted(replays):
        retries.setdefault(retry_of, []).append(tid)
    return attempts, retries
