"""The error tree, each error with a stable code; HTTP statuses are mapped in api/errors.py.

TaskexecError                       INTERNAL_ERROR
├── ValidationError                 VALIDATION_ERROR  (a malformed request)
│   └── InputValidationError        VALIDATION_ERROR  (input fails the definition's schema)
├── AuthenticationError             UNAUTHORIZED
├── PermissionDenied                FORBIDDEN
├── NotFound                        NOT_FOUND
│   ├── TaskNotFound
│   └── DefinitionNotFound
├── Conflict                        CONFLICT
│   ├── TaskAlreadyFinished
│   └── IdempotencyConflict
├── PayloadTooLarge                 PAYLOAD_TOO_LARGE
├── RateLimited                     RATE_LIMITED
├── QueueFull                       QUEUE_FULL  (429: too many tasks not yet running)
├── ServiceUnavailable              SERVICE_UNAVAILABLE
└── TaskFailure                     (raised by handlers; becomes the task's error)
    ├── RetryableTaskError          TASK_ERROR, retried per policy
    ├── PermanentTaskError          TASK_ERROR, never retried
    ├── OutputValidationError       OUTPUT_VALIDATION_FAILED, never retried
    └── TaskCancelled               CANCELLED
"""

from __future__ import annotations

from typing import Any


class TaskexecError(Exception):
    """Root of every error this service raises on purpose."""

    code = "INTERNAL_ERROR"

    def __init__(self, message: str = "", details: Any = None) -> None:
        super().__init__(message or self.__doc__ or self.code)
        self.message = message or (self.__doc__ or self.code)
        self.details = details if details is not None else {}


class ValidationError(TaskexecError):
    """The request is malformed."""

    code = "VALIDATION_ERROR"


class InputValidationError(ValidationError):
    """The task input does not match the definition's input schema."""


class AuthenticationError(TaskexecError):
    """No valid credentials were given."""

    code = "UNAUTHORIZED"


class PermissionDenied(TaskexecError):
    """The credentials lack the permission this operation needs."""

    code = "FORBIDDEN"


class NotFound(TaskexecError):
    """The requested resource does not exist (or is not yours)."""

    code = "NOT_FOUND"


class TaskNotFound(NotFound):
    """No such task."""


class DefinitionNotFound(NotFound):
    """No such task definition."""


class Conflict(TaskexecError):
    """The resource's state does not allow this operation."""

    code = "CONFLICT"


class TaskAlreadyFinished(Conflict):
    """The task has already reached a terminal status."""


class IdempotencyConflict(Conflict):
    """The idempotency key was already used with a different request."""


class PayloadTooLarge(TaskexecError):
    """The request body is larger than allowed."""

    code = "PAYLOAD_TOO_LARGE"


class RateLimited(TaskexecError):
    """Too many requests in the current window."""

    code = "RATE_LIMITED"


class QueueFull(TaskexecError):
    """The principal has TASKEXEC_MAX_QUEUED_PER_PRINCIPAL tasks not yet running."""

    code = "QUEUE_FULL"
    #: Seconds a client should wait before trying again (the Retry-After header).
    retry_after = 5


class ServiceUnavailable(TaskexecError):
    """A backing service (Postgres or Redis) is unreachable; try again shortly."""

    code = "SERVICE_UNAVAILABLE"


class TaskFailure(TaskexecError):
    """A handler's failure, recorded as the task's error."""

    code = "TASK_ERROR"
    retryable = True


class RetryableTaskError(TaskFailure):
    """A handler failed in a way that may succeed when tried again."""


class PermanentTaskError(TaskFailure):
    """A handler failed in a way that retrying cannot fix (e.g. input rejected downstream)."""

    retryable = False


class OutputValidationError(TaskFailure):
    """The handler's output does not match the definition's output schema."""

    code = "OUTPUT_VALIDATION_FAILED"
    retryable = False


class TaskCancelled(TaskFailure):
    """The task was cancelled while it ran; raised by `context.check_cancelled()`."""

    code = "CANCELLED"
    retryable = False
