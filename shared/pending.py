"""Why a waiting task waits: its pendingReason, the details, and the list filter for each reason.

Read from the row alone, plus which executors have a live worker (from the heartbeats):
a held-back task waits for its limit, one due later for its time (a retry's backoff, or its
runAt), a manual one for a person; a due one for a worker slot (QUEUED), or for any worker
at all when none consumes its executor (NO_WORKER).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from shared.concurrency import hold_details
from shared.status import CLAIMABLE, PendingReason, Status, TaskType

if TYPE_CHECKING:  # the store's filters import the clauses below
    from shared.store import Task


def pending_reason(
    task: Task, now: datetime | None = None, live: Collection[str] | None = None
) -> PendingReason | None:
    """Why a PENDING or RETRYING task is not running; None for any other status.

    `live`: the executors some live worker consumes; None when unknown (then a due task is
    QUEUED, never NO_WORKER).
    """
    if task.status not in CLAIMABLE:
        return None
    if task.type == TaskType.MANUAL.value:
        return PendingReason.MANUAL
    if task.held_on is not None:
        return PendingReason.CONCURRENCY_LIMIT
    if task.next_attempt_at is not None and task.next_attempt_at > (now or datetime.now(UTC)):
        return (
            PendingReason.RETRY_BACKOFF
            if task.status == Status.RETRYING
            else PendingReason.SCHEDULED
        )
    if live is not None and task.executor not in live:
        return PendingReason.NO_WORKER
    return PendingReason.QUEUED


def pending_details(task: Task) -> dict[str, Any] | None:
    """The limit a CONCURRENCY_LIMIT task waits for (kind, name, maximum); None otherwise."""
    if task.held_on is None or task.status not in CLAIMABLE:
        return None
    return hold_details(
        task.held_on,
        task_definition_id=task.task_definition_id,
        concurrency_key=task.concurrency_key,
        definition_limit=task.definition_limit,
        key_limit=task.key_limit,
        owner_limit=task.owner_limit,
    )


# Each reason as a WHERE clause over `tasks` (the list's filter); QUEUED and NO_WORKER also
# take the live executors. They mirror pending_reason above.
_DUE = "(next_attempt_at IS NULL OR next_attempt_at <= now())"
_WAITING = "status IN ('PENDING', 'RETRYING')"
_CLAUSES = {
    PendingReason.MANUAL: f"type = 'MANUAL' AND {_WAITING}",
    PendingReason.CONCURRENCY_LIMIT: f"held_on IS NOT NULL AND type <> 'MANUAL' AND {_WAITING}",
    PendingReason.RETRY_BACKOFF: (
        "status = 'RETRYING' AND held_on IS NULL AND type <> 'MANUAL' AND next_attempt_at > now()"
    ),
    PendingReason.SCHEDULED: (
        "status = 'PENDING' AND held_on IS NULL AND type <> 'MANUAL' AND next_attempt_at > now()"
    ),
    PendingReason.QUEUED: (
        f"{_WAITING} AND held_on IS NULL AND type <> 'MANUAL' AND {_DUE}"
        " AND executor = ANY(%(live)s)"
    ),
    PendingReason.NO_WORKER: (
        f"{_WAITING} AND held_on IS NULL AND type <> 'MANUAL' AND {_DUE}"
        " AND NOT executor = ANY(%(live)s)"
    ),
}


def reason_clause(reasons: Sequence[str], live: Collection[str] | None) -> tuple[str, list[Any]]:
    """A WHERE clause (and its parameters) for tasks waiting for any of `reasons`.

    Unknown liveness (`live` None) makes every due task QUEUED, as `pending_reason` does.
    """
    arms: list[str] = []
    params: list[Any] = []
    known = list(live) if live is not None else None
    for reason in reasons:
        clause = _CLAUSES[PendingReason(reason)]
        if "%(live)s" in clause:
            if known is None:
                if reason == PendingReason.NO_WORKER:
                    continue  # unknown liveness: nothing is NO_WORKER
                clause = clause.replace(" AND executor = ANY(%(live)s)", "")
            else:
                clause = clause.replace("%(live)s", "%s")
                params.append(known)
        arms.append(f"({clause})")
    return ("(" + " OR ".join(arms) + ")" if arms else "FALSE"), params
