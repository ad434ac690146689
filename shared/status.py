"""Task status vocabulary, which statuses are terminal, and which moves are allowed."""

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

#: For each status, the statuses it may be entered from; every guarded write uses this table.
ALLOWED_FROM: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset(),
    Status.RUNNING: CLAIMABLE,
    Status.RETRYING: frozenset({Status.RUNNING}),
    Status.COMPLETED: frozenset({Status.RUNNING, Status.PENDING}),  # PENDING: manual tasks
    Status.FAILED: frozenset({Status.RUNNING, Status.RETRYING, Status.PENDING}),
    Status.TIMED_OUT: frozenset({Status.RUNNING, Status.RETRYING, Status.PENDING}),
    Status.CANCELLED: ACTIVE,
}


def can_move(current: Status, new: Status) -> bool:
    """Say whether a task in `current` may move to `new`."""
    return current in ALLOWED_FROM[new]


class Priority(StrEnum):
    """Submission priority; higher runs first when workers are busy."""

    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @property
    def broker_priority(self) -> int:
        """Celery's Redis transport serves 0 first, so CRITICAL maps to 0."""
        return 9 - 3 * _RANK[self]


_RANK = {Priority.LOW: 0, Priority.MEDIUM: 1, Priority.HIGH: 2, Priority.CRITICAL: 3}


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
