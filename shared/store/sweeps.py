"""What the sweeper reads and repairs: due publishes, lapsed leases and deadlines, open attempts."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg2.extras import Json

# The module, not the name: the outbox imports the store too, so either may load first.
from shared import outbox
from shared.concurrency import Limit, limits_of
from shared.status import ACTIVE, ALLOWED_FROM, CLAIMABLE, Status
from shared.store._rows import Conn, Cursor, all_, one, statuses
from shared.store.attempts import CANCEL_ERROR, Attempt, close_attempt
from shared.store.limits import admitted_counts, held_limits, hold, let_go, wake_releaser
from shared.store.tasks import READY, RELEASE_CHANNEL, Task

if TYPE_CHECKING:
    from shared.outbox import Dispatch

_ACTIVE = statuses(ACTIVE)
_CLAIMABLE = statuses(CLAIMABLE)
_FAIL_FROM = {s: statuses(ALLOWED_FROM[s]) for s in Status}


def take_due_for_publish(conn: Conn, republish_after: float, limit: int = 500) -> list[Dispatch]:
    """Claim sent tasks whose message is overdue, and stamp them published again.

    A task counts as overdue once it has been due for `republish_after` seconds without a
    worker claiming it (its message may have been lost with Redis). Tasks without a message
    are the releaser's (`take_ready`). SKIP LOCKED lets several sweepers run at once without
    publishing the same task twice in one round.
    """
    with conn.cursor() as cur:
        cur.execute(
            """
            WITH due AS (
                SELECT id FROM tasks
                WHERE status IN ('PENDING', 'RETRYING') AND type <> 'MANUAL'
                  AND cancel_requested_at IS NULL
                  AND (next_attempt_at IS NULL OR next_attempt_at <= now())
                  AND published_at < now() - make_interval(secs => %s)
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


def ready_due(conn: Conn, limit: int = 5000) -> int:
    """Make waiting tasks whose time has come ready (delayed, in a backoff, refused by Redis).

    Clearing `next_attempt_at` moves them into tasks_ready, where the releaser takes them in
    its fair order; the claim reads a NULL as "due". `due_at` keeps the time they became due,
    which the queues' oldest waiting age counts from.
    """
    with conn.cursor() as cur:
        cur.execute(
            """
            UPDATE tasks SET due_at = next_attempt_at, next_attempt_at = NULL WHERE id IN (
                SELECT id FROM tasks
                WHERE published_at IS NULL AND status IN ('PENDING', 'RETRYING')
                  AND next_attempt_at <= now()
                ORDER BY next_attempt_at LIMIT %s FOR UPDATE SKIP LOCKED)
            """,
            (limit,),
        )
        return int(cur.rowcount)


_READY = READY.format(t="t")


def ready_executors(conn: Conn) -> list[str]:
    """The executors with ready tasks (a skip scan of tasks_ready: one probe per executor)."""
    with conn.cursor() as cur:
        cur.execute(
            f"""
            WITH RECURSIVE e AS (
                (SELECT executor FROM tasks t WHERE {_READY} ORDER BY executor LIMIT 1)
                UNION ALL
                SELECT (SELECT t.executor FROM tasks t WHERE t.executor > e.executor AND {_READY}
                        ORDER BY t.executor LIMIT 1)
                FROM e WHERE e.executor IS NOT NULL
            )
            SELECT executor FROM e WHERE executor IS NOT NULL
            """
        )
        return [row[0] for row in cur.fetchall()]


@dataclass(frozen=True)
class Candidate:
    """A ready task the releaser may send, with the limits it is under."""

    id: uuid.UUID
    owner: str
    task_definition_id: str
    executor: str
    priority: int
    timeout_ms: int
    definition_limit: int | None
    concurrency_key: str | None
    key_limit: int | None
    owner_limit: int | None

    def limits(self) -> list[Limit]:
        return limits_of(
            owner=self.owner,
            task_definition_id=self.task_definition_id,
            definition_limit=self.definition_limit,
            concurrency_key=self.concurrency_key,
            key_limit=self.key_limit,
            owner_limit=self.owner_limit,
        )


@dataclass(frozen=True)
class Release:
    """What one release round of an executor sent, held back, and the last owner it served."""

    dispatches: list[Dispatch]
    held: int
    last_owner: str | None
    locked: bool = True  # False: another releaser was at this executor


def _owners(cur: Cursor, executor: str, after: str, most: int) -> list[str]:
    """Up to `most` owners with ready tasks in `executor`, after `after` then from the start."""
    query = f"""
        WITH RECURSIVE o AS (
            (SELECT owner FROM tasks t WHERE t.executor = %(e)s AND t.owner > %(after)s
               AND {_READY} ORDER BY owner LIMIT 1)
            UNION ALL
            SELECT (SELECT t.owner FROM tasks t WHERE t.executor = %(e)s AND t.owner > o.owner
                      AND {_READY} ORDER BY t.owner LIMIT 1)
            FROM o WHERE o.owner IS NOT NULL
        )
        SELECT owner FROM o WHERE owner IS NOT NULL LIMIT %(most)s
    """
    cur.execute(query, {"e": executor, "after": after, "most": most})
    found = [row[0] for row in cur.fetchall()]
    if len(found) < most and after:
        cur.execute(query, {"e": executor, "after": "", "most": most - len(found)})
        found += [row[0] for row in cur.fetchall() if row[0] <= after]
    return found


def take_ready(conn: Conn, executor: str, room: int, after_owner: str = "") -> Release:
    """Send up to `room` ready tasks of `executor`: round robin across owners, fair to each.

    Owners take turns, starting after `after_owner` (the last one served): each owner's
    first task (by priority, then submission), then each one's second, and so on, so an
    owner with ten thousand ready tasks gets one place per turn like an owner with one.
    A task whose concurrency limit has no room (counting those RUNNING and those already
    sent) is held back instead, leaving the ready set until its limit has room. One
    releaser at a time per executor (a transaction-scoped advisory lock, tried, never waited
    for); the stamp re-checks that each task is still ready, so a cancel meanwhile wins.
    Run in a transaction; the caller publishes the dispatches after it commits.
    """
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pg_try_advisory_xact_lock(hashtextextended('taskexec-release:' || %s, 0))",
            (executor,),
        )
        row = cur.fetchone()
        if room <= 0 or not (row and row[0]):
            return Release([], 0, None, locked=bool(row and row[0]))
        owners = _owners(cur, executor, after_owner, room)
        if not owners:
            return Release([], 0, None)
        cur.execute(
            f"""
            SELECT c.*, o.pos,
                   row_number() OVER (PARTITION BY o.pos ORDER BY c.priority DESC, c.created_at)
                       AS rank
            FROM unnest(%(owners)s::text[]) WITH ORDINALITY AS o(owner, pos)
            CROSS JOIN LATERAL (
                SELECT id, owner, task_definition_id, executor, priority, timeout_ms, created_at,
                       definition_limit, concurrency_key, key_limit, owner_limit
                FROM tasks t WHERE t.executor = %(e)s AND t.owner = o.owner AND {_READY}
                ORDER BY t.priority DESC, t.created_at LIMIT %(per)s) c
            ORDER BY rank, pos LIMIT %(room)s
            """,
            {"owners": owners, "e": executor, "per": -(-room // len(owners)), "room": room},
        )
        candidates = all_(cur, Candidate)
        counts = admitted_counts(cur, [lim for c in candidates for lim in c.limits()])
        admit: list[uuid.UUID] = []
        holds: list[tuple[uuid.UUID, str]] = []
        last = None
        for c in candidates:
            limits = c.limits()
            full = next((lim for lim in limits if counts.get(lim.name, 0) >= lim.limit), None)
            if full is not None:
                holds.append((c.id, full.name))
                continue
            for lim in limits:
                counts[lim.name] = counts.get(lim.name, 0) + 1
            admit.append(c.id)
            last = c.owner
        hold(conn, holds)
        cur.execute(
            f"""
            UPDATE tasks t SET published_at = now() WHERE t.id = ANY(%s::uuid[]) AND {_READY}
            RETURNING t.id, t.task_definition_id, t.executor, t.priority, t.timeout_ms
            """,
            ([str(i) for i in admit],),
        )
        sent = all_(cur, outbox.Dispatch)
    return Release(sent, len(holds), last)


def let_held_go(conn: Conn) -> int:
    """Return held-back tasks to the ready set where their limit has room again; say how many.

    One probe per limit that holds anything back, then as many tasks per limit as it has
    room for (counting RUNNING and sent tasks), one per owner in turn.
    """
    held = held_limits(conn)
    limits = [lim for lim in (h.limit() for h in held) if lim is not None]
    if not limits:
        return 0
    with conn.cursor() as cur:
        counts = admitted_counts(cur, limits)
    return sum(let_go(conn, lim.name, lim.limit - counts.get(lim.name, 0)) for lim in limits)


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
        if task is not None and task.limited:
            wake_releaser(cur, task_id)  # a RUNNING one leaves room
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
