"""The queues as an operator or an autoscaler sees them: the ledger's counts and the workers up.

One read model for GET /api/v1/queues, the queue gauges in /metrics and the operator console:
per executor, the tasks waiting in the ledger (no message in Redis yet: delayed, in a retry's
backoff, held back), dispatched (a message in Redis), running, the age of the oldest due task
not yet running, and the workers (and their slots) whose heartbeat is fresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared import heartbeats, store
from shared.db import Database

#: The label an owner outside the top ones is counted under (bounded label cardinality).
OTHER_OWNERS = "(other)"


@dataclass(frozen=True)
class QueueSnapshot:
    """One executor's queue now. `workers` and `slots` are None when Redis could not be read."""

    executor: str
    waiting: int
    dispatched: int
    running: int
    workers: int | None
    slots: int | None
    oldest_waiting_age_ms: int | None  # the oldest due task not yet running; None if none


@dataclass(frozen=True)
class OwnerQueued:
    """Tasks of one owner not yet running, every executor; `owner` may be OTHER_OWNERS."""

    owner: str
    queued: int


def snapshot(db: Database, redis_client: Any) -> list[QueueSnapshot]:
    """Every executor that a definition names, a task uses or a worker consumes, by name.

    A worker that consumes several executors' queues counts, with all its slots, in each. A
    worker of an earlier release announces no slots: it counts in `workers`, not in `slots`.
    """
    with db.connection() as conn:
        counts = {c.executor: c for c in store.executor_counts(conn)}
        defined = set(store.worker_definitions(conn).values())
    workers = _workers(redis_client)
    served: dict[str, list[heartbeats.Worker]] = {}
    for worker in workers or []:
        for queue in worker.queues:
            served.setdefault(queue, []).append(worker)
    found = []
    for executor in sorted(defined | set(counts) | set(served)):
        c = counts.get(executor)
        mine = served.get(executor, [])
        found.append(
            QueueSnapshot(
                executor=executor,
                waiting=c.waiting if c else 0,
                dispatched=c.dispatched if c else 0,
                running=c.running if c else 0,
                workers=None if workers is None else len(mine),
                slots=None if workers is None else sum(w.slots or 0 for w in mine),
                oldest_waiting_age_ms=max(c.oldest_waiting_ms, 0)
                if c and c.oldest_waiting_ms is not None
                else None,
            )
        )
    return found


def top_owners(db: Database, limit: int = 10) -> list[OwnerQueued]:
    """The `limit` owners with the most tasks not yet running, then OTHER_OWNERS for the rest.

    OTHER_OWNERS is always last (0 when no other owner has any), so a dashboard's series does
    not come and go; an owner whose name is OTHER_OWNERS is counted in it.
    """
    with db.connection() as conn:
        top = store.top_queued_owners(conn, limit)
    total = top[0].total if top else 0
    shown = [OwnerQueued(o.owner, o.queued) for o in top if o.owner != OTHER_OWNERS]
    return [*shown, OwnerQueued(OTHER_OWNERS, total - sum(o.queued for o in shown))]


def _workers(redis_client: Any) -> list[heartbeats.Worker] | None:
    import redis

    try:
        return heartbeats.workers(redis_client)
    except redis.RedisError:
        return None


def redis_client(url: str) -> Any:
    """A client for reading heartbeats that gives up in 2 s rather than hang a poll."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
