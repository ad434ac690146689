"""Task status vocabulary, which moves are allowed, why a task waits, and priority ranks."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """The lifecycle status of a task, as the API shows it."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: frozenset[Status] = frozenset(
    {Status.COMPLETED, Status.FAILED, Status.TIMED_OUT, Status.CANCELLED}
)
#: Statuses a worker may claim a new attempt from.
CLAIMABLE: frozenset[Status] = frozenset({Status.PENDING, Status.RETRYING})
#: Statuses that are still moving.
ACTIVE: frozenset[Status] = frozenset(Status) - TERMINAL
#: The status in which an attempt holds its task: a write fenced to an attempt requires it.
HELD: frozenset[Status] = frozenset({Status.RUNNING})

#: For each status, the statuses it may be entered from. Every guarded status write in
#: shared/store takes its `WHERE status = ANY(...)` set from this table (an attempt's own
#: outcome narrowed to HELD), so a change to a transition is made here once.
ALLOWED_FROM: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset(),
    Status.RUNNING: CLAIMABLE,
    Status.RETRYING: HELD,
    Status.COMPLETED: HELD | {Status.PENDING},  # PENDING: manual tasks, completed by hand
    Status.FAILED: frozenset({Status.RUNNING, Status.RETRYING, Status.PENDING}),
    Status.TIMED_OUT: frozenset({Status.RUNNING, Status.RETRYING, Status.PENDING}),
    Status.CANCELLED: ACTIVE,
}


def can_move(current: Status, new: Status) -> bool:
    """Say whether a task in `current` may move to `new`."""
    return current in ALLOWED_FROM[new]


class PendingReason(StrEnum):
    """Why a PENDING or RETRYING task is not running yet (shared/pending.py decides)."""

    SCHEDULED = "SCHEDULED"  # delayed: its runAt is still ahead
    RETRY_BACKOFF = "RETRY_BACKOFF"  # a retry waiting out its backoff
    CONCURRENCY_LIMIT = "CONCURRENCY_LIMIT"  # held back: a concurrency limit it is under is full
    QUEUED = "QUEUED"  # due, waiting for a worker slot of its executor
    NO_WORKER = "NO_WORKER"  # due, but no live worker consumes its executor's queue
    MANUAL = "MANUAL"  # a manual task: it waits to be completed through the API


class Priority(StrEnum):
    """Submission priority; higher runs first when workers are busy."""

    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"

    @classmethod
    def from_rank(cls, rank: int) -> Priority:
        """The priority a stored rank (0 LOW .. 3 CRITICAL) stands for; out-of-range clamps."""
        return _BY_RANK[max(0, min(rank, len(_BY_RANK) - 1))]

    @property
    def rank(self) -> int:
        """The stored form: 0 LOW .. 3 CRITICAL, so ORDER BY priority DESC serves urgent first."""
        return _RANK[self]

    @property
    def broker_priority(self) -> int:
        """Celery's Redis transport serves 0 first, so CRITICAL maps to 0."""
        return 9 - 3 * _RANK[self]


_BY_RANK = (Priority.LOW, Priority.MEDIUM, Priority.HIGH, Priority.CRITICAL)
_RANK = {priority: rank for rank, priority in enumerate(_BY_RANK)}


class TaskType(StrEnum):
    """The kind of work a definition does."""

    AUTOMATED = "AUTOMATED"
    MANUAL = "MANUAL"
    INTEGRATION = "INTEGRATION"


class ErrorKind(StrEnum):
    """Why a task failed, for clients that react differently (and for Cortex statuses)."""

    TASK_ERROR = "TASK_ERROR"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    WORKER_LOST = "WORKER_LOST"
    INTERNAL = "INTERNAL"
