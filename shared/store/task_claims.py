"""The claim of a task for a new attempt: one statement, or under its limits' locks, or held."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import psycopg2

from shared.concurrency import is_limited, limits_of
from shared.status import ALLOWED_FROM, Status
from shared.store._prepared import Prepared as _Prepared
from shared.store._rows import Conn, one, statuses
from shared.store.limits import LIMITED, wake_releaser

_CLAIM_FROM = statuses(ALLOWED_FROM[Status.RUNNING])


@dataclass(frozen=True)
class ClaimedTask:
    """What an attempt reads of the task it claimed: the claim returns these columns only.

    Building every column of the row (the input and the retry policy decoded, a dozen
    timestamps) was a third of the worker's CPU per claim. The worker reads its input, its
    timeout and retry policy, its attempt and lost counts, its limits (whether it is limited,
    and which locks a limited claim takes) and, for the queue wait, its times.
    """

    id: uuid.UUID
    status: Status
    attempts: int
    input: Any
    timeout_ms: int
    retry_policy: dict[str, Any]
    worker_lost_count: int
    owner: str
    task_definition_id: str
    definition_limit: int | None
    concurrency_key: str | None
    key_limit: int | None
    owner_limit: int | None
    created_at: datetime
    run_at: datetime | None
    start_time: datetime | None

    @property
    def limited(self) -> bool:
        """Say whether any concurrency limit applies to it."""
        return is_limited(self.definition_limit, self.concurrency_key, self.owner_limit)


# The columns the claim returns, in the order of ClaimedTask's fields.
_CLAIMED = ", ".join(f.name for f in fields(ClaimedTask))


_CLAIM = """
    WITH claimed AS (
        UPDATE tasks SET status = 'RUNNING', attempts = attempts + 1,
            start_time = COALESCE(start_time, now()), worker_host = %(host)s,
            worker_pid = %(pid)s,
            lease_expires_at = now() + make_interval(secs => %(lease)s),
            next_attempt_at = NULL, held_on = NULL, updated_at = now()
        WHERE id = %(id)s AND status = ANY(%(from)s)
          AND cancel_requested_at IS NULL AND type <> 'MANUAL'
          AND (next_attempt_at IS NULL OR next_attempt_at <= now())
          AND {room}
        RETURNING {claimed}
    ), attempt AS (
        INSERT INTO task_attempts (task_id, attempt, status, worker_host, worker_pid)
        SELECT id, attempts, 'RUNNING', %(host)s, %(pid)s FROM claimed
        ON CONFLICT (task_id, attempt) DO NOTHING
    )
    SELECT * FROM claimed
"""
# The fast claim takes only a task under no limit: nothing to count, one round trip. A
# limited one comes back unclaimed (its status still PENDING or RETRYING) for claim_limited.
_CLAIM_UNLIMITED = _CLAIM.format(room=f"NOT {LIMITED}", claimed=_CLAIMED) + (
    f" UNION ALL SELECT {_CLAIMED} FROM tasks"
    f" WHERE id = %(id)s AND status = ANY(%(from)s) AND {LIMITED}"
)
_CLAIM_PREPARED = _Prepared(
    "taskexec_claim",
    _CLAIM_UNLIMITED,
    {"id": "uuid", "host": "text", "pid": "int", "lease": "float8", "from": "text[]"},
)
# Each limit's RUNNING tasks, counted under the limits' advisory locks (taken by an earlier
# statement of the transaction, so this statement's snapshot sees every claim committed
# under them). Over the partial indexes of limited tasks: the cost is the limit, not the queue.
_DEFINITION_FULL = (
    "(SELECT count(*) FROM tasks r WHERE r.task_definition_id = tasks.task_definition_id"
    " AND r.definition_limit IS NOT NULL AND r.status = 'RUNNING') >= tasks.definition_limit"
)
_KEY_FULL = (
    "(SELECT count(*) FROM tasks r WHERE r.owner = tasks.owner"
    " AND r.concurrency_key = tasks.concurrency_key AND r.status = 'RUNNING') >= tasks.key_limit"
)
_PRINCIPAL_FULL = (
    "(SELECT count(*) FROM tasks r WHERE r.owner = tasks.owner"
    " AND r.owner_limit IS NOT NULL AND r.status = 'RUNNING') >= tasks.owner_limit"
)
_CLAIM_LIMITED = _CLAIM.format(
    claimed=_CLAIMED,
    room=f"""(definition_limit IS NULL OR NOT {_DEFINITION_FULL})
          AND (concurrency_key IS NULL OR key_limit IS NULL OR NOT {_KEY_FULL})
          AND (owner_limit IS NULL OR NOT {_PRINCIPAL_FULL})""",
)
# A limited task that found no room: back to waiting (no message), held by the first full
# limit, so the releaser sends it again only once that limit has room.
_HOLD = f"""
    UPDATE tasks SET published_at = NULL, held_on = CASE
        WHEN definition_limit IS NOT NULL AND {_DEFINITION_FULL}
            THEN 'definition:' || task_definition_id
        WHEN concurrency_key IS NOT NULL AND key_limit IS NOT NULL AND {_KEY_FULL}
            THEN 'key:' || owner || ':' || concurrency_key
        ELSE 'principal:' || owner END
    WHERE id = %(id)s AND status = ANY(%(from)s) AND cancel_requested_at IS NULL
      AND type <> 'MANUAL' AND (next_attempt_at IS NULL OR next_attempt_at <= now())
    RETURNING held_on
"""


def claim_task(
    conn: Conn, task_id: uuid.UUID, host: str, pid: int, lease: float
) -> ClaimedTask | None:
    """Start a new attempt if the task is claimable now (compare-and-set); else None.

    A task under no concurrency limit is claimed by one statement (the attempt row is
    inserted by a data-modifying CTE), atomic even on an autocommit connection: one round
    trip. A limited one is claimed by `claim_limited`, under its limits' locks; if a limit
    is full it is held back instead (None).
    """
    params = {"id": task_id, "host": host, "pid": pid, "lease": lease, "from": _CLAIM_FROM}
    with conn.cursor() as cur:  # a plain cursor: RealDictRow cost a no-op task a tenth
        _CLAIM_PREPARED.run(cur, params)
        task = one(cur, ClaimedTask)
    if task is None or task.status == Status.RUNNING:
        return task  # claimed, or not claimable (a duplicate, cancelled, finished, unknown)
    names = [
        limit.name
        for limit in limits_of(
            owner=task.owner,
            task_definition_id=task.task_definition_id,
            definition_limit=task.definition_limit,
            concurrency_key=task.concurrency_key,
            key_limit=task.key_limit,
            owner_limit=task.owner_limit,
        )
    ]
    return claim_limited(conn, names, params)


def claim_limited(conn: Conn, names: list[str], params: dict[str, Any]) -> ClaimedTask | None:
    """Claim a limited task in a transaction holding its limits' advisory locks.

    The locks are taken in name order (no two claims deadlock) by a statement of their
    own, so the claim's count sees every claim committed under them: two workers can never
    both see the last free place. No room: the task is held back (no message, `held_on`
    names the full limit) and, once that is committed, the releaser is woken to look again,
    in case the room opened in between (its own wake-up could have missed the hold).
    """
    own = conn.autocommit
    held = False
    with conn.cursor() as cur:
        try:
            # One round trip for BEGIN and the locks.
            cur.execute(
                ("BEGIN; " if own else "")
                + "SELECT count(pg_advisory_xact_lock(hashtextextended(n, 0)))"
                " FROM (SELECT n FROM unnest(%s::text[]) n ORDER BY n) locks",
                (sorted(names),),
            )
            cur.execute(_CLAIM_LIMITED, params)
            task = one(cur, ClaimedTask)
            if task is None:
                cur.execute(_HOLD, params)
                held = cur.fetchone() is not None
            if own:
                cur.execute("COMMIT")
        except BaseException:
            if own and not conn.closed:
                try:
                    cur.execute("ROLLBACK")
                except psycopg2.Error:
                    pass  # the connection is gone: so is the transaction
            raise
        if held:
            wake_releaser(cur)
    return task
