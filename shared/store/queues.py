"""The queues' read model from the ledger: tasks waiting, dispatched and running per executor."""

from __future__ import annotations

from dataclasses import dataclass

from shared.store._rows import Conn, all_

# Both statements read only the partial index tasks_queues (migrations 0010, 0015): the
# active, non-manual rows, never the finished millions. Its predicate is repeated literally so
# the planner can prove it. "Waiting" has no message in Redis (published_at IS NULL: delayed,
# in a retry's backoff, held back, or a publish that failed); "dispatched" has one. A task is
# due from its runAt or backoff end (next_attempt_at; due_at once the sweeper has made it
# ready), else from its submission.
_DUE = "coalesce(next_attempt_at, due_at, created_at)"
_EXECUTORS = f"""
SELECT executor,
    count(*) FILTER (WHERE status <> 'RUNNING' AND published_at IS NULL) AS waiting,
    count(*) FILTER (WHERE status <> 'RUNNING' AND published_at IS NOT NULL) AS dispatched,
    count(*) FILTER (WHERE status = 'RUNNING') AS running,
    (EXTRACT(EPOCH FROM now() - min({_DUE}) FILTER (
        WHERE status <> 'RUNNING' AND {_DUE} <= now())) * 1000)::bigint AS oldest_waiting_ms
FROM tasks
WHERE status IN ('PENDING', 'RETRYING', 'RUNNING') AND type <> 'MANUAL'
GROUP BY executor
ORDER BY executor
"""

_OWNERS = """
SELECT owner, count(*) AS queued, sum(count(*)) OVER ()::bigint AS total
FROM tasks
WHERE status IN ('PENDING', 'RETRYING', 'RUNNING') AND type <> 'MANUAL'
  AND status <> 'RUNNING'
GROUP BY owner
ORDER BY queued DESC, owner
LIMIT %s
"""


@dataclass(frozen=True)
class ExecutorCounts:
    """Active, non-manual tasks of one executor, as the ledger holds them."""

    executor: str
    waiting: int
    dispatched: int
    running: int
    oldest_waiting_ms: int | None  # the oldest due task not yet running; None if none


@dataclass(frozen=True)
class QueuedByOwner:
    """Tasks of one owner not yet running (waiting or dispatched), every executor."""

    owner: str
    queued: int
    total: int  # every owner's, so the rest can be told without a second read


def executor_counts(conn: Conn, timeout_ms: int = 2000) -> list[ExecutorCounts]:
    """Waiting, dispatched and running tasks per executor that has any (manual ones excluded)."""
    with conn.cursor() as cur:
        # A scrape or an autoscaler's poll must never pile up behind a slow database.
        cur.execute("SET LOCAL statement_timeout = %s", (timeout_ms,))
        cur.execute(_EXECUTORS)
        return all_(cur, ExecutorCounts)


def top_queued_owners(conn: Conn, limit: int, timeout_ms: int = 2000) -> list[QueuedByOwner]:
    """The `limit` owners with the most tasks not yet running, most first (ties by name)."""
    with conn.cursor() as cur:
        cur.execute("SET LOCAL statement_timeout = %s", (timeout_ms,))
        cur.execute(_OWNERS, (limit,))
        return all_(cur, QueuedByOwner)
