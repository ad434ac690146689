"""What the sweeper reads and repairs: due publishes, lapsed leases and deadlines, open attempts."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from psycopg2.extras import Json

# The module, not the name: the outbox imports the store too, so either may load first.
from shared import outbox
from shared.status import ACTIVE, ALLOWED_FROM, CLAIMABLE, Status
from shared.store._rows import Conn, all_, one, statuses
from shared.store.attempts import CANCEL_ERROR, Attempt, close_attempt
from shared.store.tasks import RELEASE_CHANNEL, Task

if TYPE_CHECKING:
    from shared.outbox import Dispatch

_ACTIVE = statuses(ACTIVE)
_CLAIMABLE = statuses(CLAIMABLE)
_FAIL_FROM = {s: statuses(ALLOWED_FROM[s]) for s in Status}


def take_due_for_publish(conn: Conn, republish_after: float, limit: int = 500) -> list[Dispatch]:
    """Claim waiting tasks whose message is missing or overdue, and stamp them published.

    A task counts as overdue once it has been due for `republish_after` seconds without a
    worker claiming it (its message may have been lost with Redis). SKIP LOCKED lets several
    sweepers run at once without publishing the same task twice in one round.
    """
    with conn.cursor() as cur:
        cur.execute(
            """
            WITH due AS (
                SELECT id FROM tasks
                WHERE status IN ('PENDING', 'RETRYING') AND type <> 'MANUAL'
                  AND cancel_requested_at IS NULL
                  AND (next_attempt_at IS NULL OR next_attempt_at <= now())
                  AND (published_at IS NULL
                       OR published_at < now() - make_interval(secs => %s))
                ORDER BY priority DESC, created_at
                LIMIT %s
                FOR UPDATE SKIP LOCKED
            )
            UPDATE tasks t SET published_at = now() FROM due WHERE t.id = due.id
            RETURNING t.id, t.task_definition_id, t.executor, t.priority, t.timeout_ms
            """,
            (republish_after, limit),
        )
        return all_(cur, outbox.Dispatch)


def next_release_in(conn: Conn) -> float | None:
    """Seconds until the earliest waiting task that no message carries yet falls due.

    None when none waits for a time still ahead (what is due already, the sweep just tried).
    The difference is taken on the database's clock, the one the claim and the release use.
    Served by the partial index tasks_release_due, whatever the number of waiting tasks.
    """
    with conn.cursor() as cur:
        # ORDER BY ... LIMIT 1, not min(): the planner then reads one index entry whatever
        # its estimate (with min() and a low estimate it aggregated every waiting row).
        cur.execute(
            "SELECT EXTRACT(EPOCH FROM next_attempt_at - now())::float FROM tasks"
            " WHERE published_at IS NULL AND status IN ('PENDING', 'RETRYING')"
            " AND next_attempt_at > now() ORDER BY next_attempt_at LIMIT 1"
        )
        row = cur.fetchone()
        return None if row is None else float(row[0])


def listen_for_releases(conn: Conn) -> None:
    """Subscribe an autocommit connection to the NOTIFY a delayed submission sends."""
    with conn.cursor() as cur:
        cur.execute(f"LISTEN {RELEASE_CHANNEL}")


def unpublish(conn: Conn, task_ids: Sequence[uuid.UUID]) -> None:
    """Forget a publish that failed, so the next sweep tries again at once."""
    if task_ids:
        with conn.cursor() as cur:
            cur.execute(
                "UPDATE tasks SET published_at = NULL WHERE id = ANY(%s) AND status = ANY(%s)",
                (list(task_ids), _CLAIMABLE),
            )


def expired_leases(conn: Conn, limit: int = 100) -> list[Task]:
    """Return RUNNING tasks whose worker stopped renewing the lease."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT * FROM tasks WHERE status = 'RUNNING' AND lease_expires_at < now()"
            " ORDER BY lease_expires_at LIMIT %s",
            (limit,),
        )
        return all_(cur, Task)


def extend_running_leases(conn: Conn, lease: float) -> int:
    """Give every RUNNING attempt a full lease from now; return how many were extended.

    For the sweeper after a database outage: while Postgres was away no worker could renew
    its lease, so an expired lease then says nothing about whether its worker is alive.
    """
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE tasks SET lease_expires_at = now() + make_interval(secs => %s)"
            " WHERE status = 'RUNNING' AND lease_expires_at < now() + make_interval(secs => %s)",
            (lease, lease),
        )
        return int(cur.rowcount)


def expired_deadlines(conn: Conn, limit: int = 100) -> list[Task]:
    """Return active tasks past their deadline (Task API timeouts)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT * FROM tasks WHERE deadline_at < now()"
            " AND status IN ('PENDING', 'RUNNING', 'RETRYING')"
            " ORDER BY deadline_at LIMIT %s",
            (limit,),
        )
        return all_(cur, Task)


def fail_task(
    conn: Conn, task_id: uuid.UUID, status: Status, error: dict[str, Any], attempt: int | None
) -> Task | None:
    """Move an active task to a terminal failure status (sweeper use); None if it moved on."""
    with conn.cursor() as cur:
        cur.execute(
            """
            UPDATE tasks SET status = %(status)s, error = %(error)s, end_time = now(),
                lease_expires_at = NULL, next_attempt_at = NULL, updated_at = now(),
                worker_lost_count = worker_lost_count
                    + CASE WHEN %(error)s::jsonb ->> 'kind' = 'WORKER_LOST' THEN 1 ELSE 0 END
            WHERE id = %(id)s AND status = ANY(%(from)s)
              AND (%(attempt)s::int IS NULL OR attempts = %(attempt)s)
            RETURNING *
            """,
            {
                "id": task_id,
                "status": status.value,
                "error": Json(error),
                "from": _FAIL_FROM[status],
                "attempt": attempt,
            },
        )
        task = one(cur, Task)
        if task is not None and task.attempts:
            close_attempt(cur, task_id, task.attempts, status.value, error)
        return task


def close_abandoned_attempts(conn: Conn, older_than: float, limit: int = 100) -> list[Attempt]:
    """Close attempt rows left open by tasks that moved on `older_than` seconds ago.

    Their worker died (or ignored every signal) after the task was cancelled, timed out or
    superseded. Returns the attempts closed (a cancelled task's attempt ends CANCELLED).
    """
    with conn.cursor() as cur:
        cur.execute(
            f"""
            WITH stale AS (
                SELECT a.task_id, a.attempt, t.status, {CANCEL_ERROR} AS cancel_error
                FROM task_attempts a
                JOIN tasks t ON t.id = a.task_id
                WHERE a.ended_at IS NULL
                  AND NOT (t.status = 'RUNNING' AND t.attempts = a.attempt)
                  AND t.updated_at < now() - make_interval(secs => %s)
                LIMIT %s
                FOR UPDATE OF a SKIP LOCKED
            )
            UPDATE task_attempts a SET ended_at = now(), status = CASE
                WHEN stale.status IN ('CANCELLED', 'TIMED_OUT', 'FAILED') THEN stale.status
                ELSE 'SUPERSEDED' END,
                error = CASE WHEN stale.status = 'CANCELLED' THEN stale.cancel_error
                    ELSE a.error END
            FROM stale WHERE a.task_id = stale.task_id AND a.attempt = stale.attempt
            RETURNING a.*
            """,
            (older_than, limit),
        )
        return all_(cur, Attempt)
