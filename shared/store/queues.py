"""The queues' read model from the ledger: per executor, per owner, and a task's place."""

from __future__ import annotations

from dataclasses import dataclass

from shared.store._rows import Conn, all_, scalar
from shared.store.tasks import READY, Task

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


def count_queued(conn: Conn, owner: str, most: int) -> int:
    """How many of `owner`'s tasks are not yet running (PENDING or RETRYING), at most `most`.

    Stops at `most`: an index range of the (owner, status, …) listing index, so the cost
    is bounded by the cap, and the caller does this now and then, not per submission.
    """
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM (SELECT 1 FROM tasks WHERE owner = %s"
            " AND status IN ('PENDING', 'RETRYING') LIMIT %s) queued",
            (owner, most),
        )
        return scalar(cur, int)


def queue_position(conn: Conn, task: Task, most: int = 100_000) -> int:
    """Roughly how many ready tasks of its executor the releaser sends before this one.

    The releaser serves owners in turn, each by priority then submission, so ahead of the
    task are its owner's `k` ready tasks before it, plus up to `k + 1` of every other owner
    with ready work there. Counted over tasks_ready, each owner's count stopped at `k + 1`
    (and `k` at `most`), so the cost follows the answer, not the backlog. Tasks already
    sent to Redis are not counted here (the caller adds the queue's depth).
    """
    with conn.cursor() as cur:
        cur.execute(
            f"""
            SELECT count(*) FROM (
                SELECT 1 FROM tasks t WHERE t.executor = %(e)s AND t.owner = %(o)s
                  AND {READY.format(t="t")}
                  AND (t.priority > %(p)s OR (t.priority = %(p)s AND t.created_at < %(c)s))
                LIMIT %(most)s) ahead
            """,
            {
                "e": task.executor,
                "o": task.owner,
                "p": task.priority,
                "c": task.created_at,
                "most": most,
            },
        )
        mine = scalar(cur, int)
        cur.execute(
            f"""
            WITH RECURSIVE o AS (
                (SELECT owner FROM tasks t WHERE t.executor = %(e)s AND {READY.format(t="t")}
                 ORDER BY owner LIMIT 1)
                UNION ALL
                SELECT (SELECT t.owner FROM tasks t WHERE t.executor = %(e)s
                          AND t.owner > o.owner AND {READY.format(t="t")}
                        ORDER BY t.owner LIMIT 1)
                FROM o WHERE o.owner IS NOT NULL
            )
            SELECT COALESCE(sum(n), 0)::bigint FROM (SELECT owner FROM o WHERE owner IS NOT NULL
                                             AND owner <> %(o)s LIMIT 1000) others,
            LATERAL (SELECT count(*) AS n FROM (
                SELECT 1 FROM tasks t WHERE t.executor = %(e)s AND t.owner = others.owner
                  AND {READY.format(t="t")} LIMIT %(turns)s) x) c
            """,
            {"e": task.executor, "o": task.owner, "turns": mine + 1},
        )
        others = scalar(cur, int)
    return mine + others + 1
