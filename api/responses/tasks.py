"""How tasks look on the wire: a task, its attempts, submissions, lists, cancels and log lines."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from marshmallow import Schema, fields

from api.errors import ErrorBodySchema, error_body
from api.pagination import TaskPaginationSchema
from api.responses import STATUSES, enum_field, nullable, time_field
from shared.errors import TaskexecError
from shared.status import ErrorKind, PendingReason, Priority, Status, TaskType
from shared.store import LogLine, Task

# The task document's builders live in shared (webhook deliveries render the same document);
# views and other response modules import them from here, as before.
from shared.task_document import (  # noqa: F401
    attempt_json,
    pending_reason,
    retry_policy_json,
    rfc3339,
    task_json,
    task_summary,
)

# ------------------------------------------------------------------ a task


class RetryPolicyOutSchema(Schema):
    maxRetries = fields.Integer(required=True)
    retryInterval = fields.Integer(required=True, metadata={"description": "Milliseconds"})
    backoffMultiplier = fields.Float(required=True)
    retryOnTimeout = fields.Boolean()
    jitter = fields.Float()


class TaskErrorSchema(Schema):
    """Why a task failed (or was cancelled)."""

    code = fields.String(required=True)
    message = fields.String(required=True)
    kind = enum_field([k.value for k in ErrorKind], required=True)
    details = fields.Raw()


class ProgressSchema(Schema):
    fraction = fields.Float(required=True, metadata={"minimum": 0, "maximum": 1})
    message = fields.String(required=True)


class AttemptSchema(Schema):
    attempt = fields.Integer(required=True)
    status = fields.String(required=True, metadata={"description": "How the attempt ended"})
    startTime = time_field(required=True, allow_none=True)
    endTime = time_field(required=True, allow_none=True)
    executionEnvironment = fields.String(required=True, allow_none=True)
    error = nullable("TaskError", required=True)


class TaskSummarySchema(Schema):
    """A task in a list."""

    id = fields.String(required=True, metadata={"format": "uuid"})
    taskDefinitionId = fields.String(required=True)
    workflowInstanceId = fields.String(required=True, allow_none=True)
    status = enum_field(STATUSES, required=True)
    type = enum_field([t.value for t in TaskType], required=True)
    priority = enum_field([p.value for p in Priority], required=True)
    createdAt = time_field(required=True)
    updatedAt = time_field(required=True)
    scheduleId = fields.String(
        required=True, allow_none=True, metadata={"format": "uuid", "description": "Its schedule"}
    )
    scheduledFor = time_field("The schedule's slot it fired for", required=True, allow_none=True)
    pendingReason = enum_field(
        [r.value for r in PendingReason],
        required=True,
        allow_none=True,
        metadata={
            "description": "Why a PENDING or RETRYING task waits (null for any other status):"
            " SCHEDULED (runAt ahead), RETRY_BACKOFF, CONCURRENCY_LIMIT (pendingDetails names"
            " the limit), QUEUED (due, waiting for a worker slot; queuePosition), NO_WORKER (no"
            " live worker consumes its executor), MANUAL (waits to be completed by hand)"
        },
    )


class TaskExecutionConfigSchema(Schema):
    timeout = fields.Integer(required=True, metadata={"description": "Milliseconds per attempt"})
    retryPolicy = fields.Nested(RetryPolicyOutSchema, required=True)
    executor = fields.String(required=True)


class ExecutionMetadataSchema(Schema):
    startTime = time_field(required=True, allow_none=True)
    endTime = time_field(required=True, allow_none=True)
    duration = fields.Integer(required=True, allow_none=True, metadata={"description": "ms"})
    executionEnvironment = fields.String(
        required=True, allow_none=True, metadata={"description": "<worker host>:<process id>"}
    )
    attempts = fields.Integer(required=True, metadata={"description": "Attempts started"})


class CancellationSchema(Schema):
    requestedAt = time_field(required=True)
    reason = fields.String(required=True, allow_none=True)
    by = fields.String(required=True, allow_none=True)
    force = fields.Boolean(required=True)


class TaskSchema(TaskSummarySchema):
    """A task in full, with its execution metadata and attempt history."""

    definitionVersion = fields.String(required=True)
    input = fields.Dict(required=True)
    output = fields.Raw(required=True, allow_none=True)
    error = nullable("TaskError", required=True)
    progress = nullable("Progress", required=True)
    executionConfig = fields.Nested(TaskExecutionConfigSchema, required=True)
    executionMetadata = fields.Nested(ExecutionMetadataSchema, required=True)
    cancellation = fields.Nested(CancellationSchema, metadata={"description": "Once requested"})
    attempts = fields.List(fields.Nested(AttemptSchema))
    runAt = time_field(
        "When it was asked to start (runAt or delay); null: at once", required=True, allow_none=True
    )
    pendingDetails = fields.Dict(
        required=True,
        allow_none=True,
        metadata={
            "description": "CONCURRENCY_LIMIT: the full limit, {limit: definition|key|principal,"
            " max, taskDefinitionId (definition) or key (key)}; null otherwise"
        },
    )
    queuePosition = fields.Integer(
        required=True,
        allow_none=True,
        metadata={
            "description": "QUEUED: roughly how many of its executor's waiting tasks go before"
            " it, itself included (1: next); null otherwise"
        },
    )
    expiresAt = time_field(
        "When retention may delete it; null while active, pinned, or kept forever",
        required=True,
        allow_none=True,
    )
    pinned = fields.Boolean(
        required=True, metadata={"description": "Kept whatever its retention (pin/unpin)"}
    )
    retryOf = fields.String(
        required=True,
        allow_none=True,
        metadata={"format": "uuid", "description": "The task this one replays (a retry)"},
    )
    retriedBy = fields.List(
        fields.String(metadata={"format": "uuid"}),
        metadata={"description": "The retries of this task, oldest first (GET only)"},
    )


# ------------------------------------------------------------------ submitting and listing


class TaskCreatedSchema(Schema):
    id = fields.String(required=True, metadata={"format": "uuid"})
    status = enum_field(STATUSES, required=True)
    createdAt = time_field(required=True)
    runAt = time_field("A delayed task's start time (absent for one that runs at once)")


def task_created(task: Task) -> dict[str, Any]:
    """The answer to `POST /api/v1/tasks` (runAt only for a delayed task)."""
    doc = {"id": str(task.id), "status": task.status, "createdAt": rfc3339(task.created_at)}
    if task.run_at is not None:
        doc["runAt"] = rfc3339(task.run_at)
    return doc


class TaskListSchema(Schema):
    items = fields.List(fields.Nested(TaskSummarySchema), required=True)
    pagination = fields.Nested(TaskPaginationSchema, required=True)
    nextCursor = fields.String(metadata={"description": "Pass as `cursor` for the next page"})


def task_list(
    tasks: list[Task],
    pagination: dict[str, Any],
    cursor: str | None,
    live: Collection[str] | None = None,
) -> dict[str, Any]:
    """A page of tasks; `nextCursor` only while more follow (`live`: see task_json)."""
    items = [task_summary(t, live) for t in tasks]
    doc: dict[str, Any] = {"items": items, "pagination": pagination}
    if cursor is not None:
        doc["nextCursor"] = cursor
    return doc


class BulkAcceptedSchema(Schema):
    index = fields.Integer(required=True)
    id = fields.String(required=True, metadata={"format": "uuid"})
    status = enum_field(STATUSES, required=True)
    replayed = fields.Boolean(metadata={"description": "An idempotent replay"})
    runAt = time_field("A delayed task's start time (absent for one that runs at once)")


def bulk_accepted(index: int, task: Task, created: bool) -> dict[str, Any]:
    """A bulk item that was stored (or replayed: `created` False)."""
    doc: dict[str, Any] = {"index": index, "id": str(task.id), "status": task.status}
    if task.run_at is not None:
        doc["runAt"] = rfc3339(task.run_at)
    if not created:
        doc["replayed"] = True
    return doc


class BulkRefusedSchema(Schema):
    index = fields.Integer(required=True)
    error = fields.Nested(ErrorBodySchema, required=True)


def bulk_refused(index: int, error: TaskexecError) -> dict[str, Any]:
    """A bulk item that was refused, with the error it alone would have got."""
    return {"index": index, "error": error_body(error)}


class BulkResultSchema(Schema):
    items = fields.List(
        fields.Raw(metadata={"oneOf": ["BulkAccepted", "BulkRefused"]}), required=True
    )


# ------------------------------------------------------------------ cancelling


class CancelResultSchema(Schema):
    id = fields.String(required=True, metadata={"format": "uuid"})
    status = enum_field([Status.CANCELLED.value], required=True)
    updatedAt = time_field(required=True)


def cancel_result(task: Task) -> dict[str, Any]:
    """A cancelled task."""
    return {"id": str(task.id), "status": task.status, "updatedAt": rfc3339(task.updated_at)}


class CancelRefusedSchema(Schema):
    id = fields.String(required=True)
    error = fields.Nested(ErrorBodySchema, required=True)


def cancel_refused(task_id: str, error: TaskexecError) -> dict[str, Any]:
    """A task of a bulk cancel that was not cancelled, and why."""
    return {"id": task_id, "error": error_body(error)}


class BulkCancelResultSchema(Schema):
    items = fields.List(
        fields.Raw(metadata={"oneOf": ["CancelResult", "CancelRefused"]}), required=True
    )


# ------------------------------------------------------------------ replaying


class TaskRetriedSchema(Schema):
    id = fields.String(required=True, metadata={"format": "uuid", "description": "The new task"})
    status = enum_field(STATUSES, required=True)
    createdAt = time_field(required=True)
    retryOf = fields.String(required=True, metadata={"format": "uuid"})


def task_retried(task: Task) -> dict[str, Any]:
    """The answer to a retry: the new task and the one it replays."""
    return {
        "id": str(task.id),
        "status": task.status,
        "createdAt": rfc3339(task.created_at),
        "retryOf": str(task.retry_of),
    }


class RetryRefusedSchema(Schema):
    retryOf = fields.String(required=True, metadata={"description": "The task not replayed"})
    error = fields.Nested(ErrorBodySchema, required=True)


def retry_refused(task_id: str, error: TaskexecError) -> dict[str, Any]:
    """A task of a bulk retry that was not replayed, and why."""
    return {"retryOf": task_id, "error": error_body(error)}


class BulkRetryResultSchema(Schema):
    items = fields.List(
        fields.Raw(metadata={"oneOf": ["TaskRetried", "RetryRefused"]}), required=True
    )


# ------------------------------------------------------------------ log lines


class LogLineSchema(Schema):
    seq = fields.Integer(required=True, metadata={"description": "Increases within a task"})
    attempt = fields.Integer(required=True)
    level = fields.String(required=True, metadata={"example": "INFO"})
    message = fields.String(required=True)
    createdAt = fields.String(required=True, metadata={"format": "date-time"})


class LogPageSchema(Schema):
    items = fields.List(fields.Nested(LogLineSchema), required=True)
    nextAfter = fields.Integer(
        required=True,
        allow_none=True,
        metadata={
            "description": "Pass as `after` for the next lines; null once the task has "
            "finished and every line was returned"
        },
    )


def log_page(lines: list[LogLine], next_after: int | None) -> dict[str, Any]:
    """A page of a task's log lines."""
    items = [
        {
            "seq": line.seq,
            "attempt": line.attempt,
            "level": line.level,
            "message": line.message,
            "createdAt": rfc3339(line.created_at),
        }
        for line in lines
    ]
    return {"items": items, "nextAfter": next_after}
