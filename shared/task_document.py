"""A task as `GET /api/v1/tasks/{id}` shows it: the one builder the API and webhooks share."""

from __future__ import annotations

import typing
import uuid
from collections.abc import Callable, Collection
from dataclasses import fields
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from shared.pending import pending_details, pending_reason
from shared.status import PendingReason, Priority
from shared.store import Attempt, Task
from shared.store._rows import make


def rfc3339(value: datetime | None) -> str | None:
    """Format a time as RFC 3339 UTC with a `Z`, to the millisecond."""
    if value is None:
        return None
    if value.tzinfo is not UTC:  # psycopg2's and fromisoformat's UTC times are UTC itself
        value = value.astimezone(UTC)
    # isoformat(timespec="milliseconds") less its "+00:00", in half the time.
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond // 1000,
    )


def environment(host: str | None, pid: int | None) -> str | None:
    """Where an attempt runs: `<worker host>:<process id>`."""
    return f"{host}:{pid}" if host else None


def retry_policy_json(policy: dict[str, Any]) -> dict[str, Any]:
    """A stored retry policy as the seed writes it (`"backoffMultiplier": 2`, not 2.0)."""
    multiplier = policy.get("backoffMultiplier")
    if isinstance(multiplier, float) and multiplier.is_integer():
        return {**policy, "backoffMultiplier": int(multiplier)}
    return policy


def attempt_json(attempt: Attempt) -> dict[str, Any]:
    """One attempt of a task's history."""
    return {
        "attempt": attempt.attempt,
        "status": attempt.status,
        "startTime": rfc3339(attempt.started_at),
        "endTime": rfc3339(attempt.ended_at),
        "executionEnvironment": environment(attempt.worker_host, attempt.worker_pid),
        "error": attempt.error,
    }


def task_summary(task: Task, live: Collection[str] | None = None) -> dict[str, Any]:
    """The fields of a task in a list (`live`: see task_json)."""
    return {
        "id": str(task.id),
        "taskDefinitionId": task.task_definition_id,
        "workflowInstanceId": task.workflow_instance_id,
        "status": task.status,
        "type": task.type,
        "priority": Priority.from_rank(task.priority).value,
        "createdAt": rfc3339(task.created_at),
        "updatedAt": rfc3339(task.updated_at),
        "scheduleId": None if task.schedule_id is None else str(task.schedule_id),
        "scheduledFor": rfc3339(task.scheduled_for),
        "pendingReason": pending_reason(task, live=live),
    }


def task_json(
    task: Task,
    attempts: list[Attempt] | None = None,
    retried_by: list[Any] | None = None,
    expires_at: datetime | None = None,
    live: Collection[str] | None = None,
    queue_position: int | None = None,
) -> dict[str, Any]:
    """The full task, as `GET /api/v1/tasks/{id}` returns it (with its retries' ids).

    `live` (the executors a live worker consumes, if known) and `queue_position` (for a
    QUEUED task) come from outside the row: shared/pending.py says how they are used.
    """
    doc = task_summary(task, live)
    reason = doc["pendingReason"]
    duration = None
    if task.start_time is not None and task.end_time is not None:
        duration = int((task.end_time - task.start_time).total_seconds() * 1000)
    doc.update(
        {
            "definitionVersion": task.definition_version,
            "input": task.input,
            "output": task.output,
            "error": task.error,
            "progress": task.progress,
            "executionConfig": {
                "timeout": task.timeout_ms,
                "retryPolicy": retry_policy_json(task.retry_policy),
                "executor": task.executor,
            },
            "executionMetadata": {
                "startTime": rfc3339(task.start_time),
                "endTime": rfc3339(task.end_time),
                "duration": duration,
                "executionEnvironment": environment(task.worker_host, task.worker_pid),
                "attempts": task.attempts,
            },
            "runAt": rfc3339(task.run_at),
            "pendingDetails": pending_details(task),
            "queuePosition": queue_position if reason == PendingReason.QUEUED else None,
            "expiresAt": rfc3339(expires_at),
            "pinned": task.pinned,
            "retryOf": str(task.retry_of) if task.retry_of is not None else None,
        }
    )
    if retried_by is not None:
        doc["retriedBy"] = [str(tid) for tid in retried_by]
    if task.cancel_requested_at is not None:
        doc["cancellation"] = {
            "requestedAt": rfc3339(task.cancel_requested_at),
            "reason": task.cancel_reason,
            "by": task.cancelled_by,
            "force": task.cancel_force,
        }
    if attempts is not None:
        doc["attempts"] = [attempt_json(a) for a in attempts]
    return doc


def task_from_snapshot(row: dict[str, Any]) -> Task:
    """Rebuild a Task from `to_jsonb` of its row (a webhook event's snapshot of the change).

    JSON carries times and ids as text and the status as its name: each is converted back by
    the field's declared type, so `task_json` renders the snapshot exactly as the live row.
    """
    if not _CONVERTED:
        _plan_snapshot()
    values = {name: row[name] for name in _PLAIN if name in row}
    for name, convert in _CONVERTED:
        if name in row:  # not: a column a later migration added, absent from an older snapshot
            value = row[name]
            values[name] = None if value is None else convert(value)
    return make(Task, values)


# The fields of Task taken as they are, and those converted from their JSON text (by type).
_PLAIN: list[str] = []
_CONVERTED: list[tuple[str, Callable[[Any], Any]]] = []


def _plan_snapshot() -> None:
    hints = typing.get_type_hints(Task)
    plain, converted = [], []
    for spec in fields(Task):
        convert = _converter(hints[spec.name])
        if convert is None:
            plain.append(spec.name)
        else:
            converted.append((spec.name, convert))
    _PLAIN[:] = plain
    _CONVERTED[:] = converted


def _converter(hint: Any) -> Callable[[Any], Any] | None:
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    kind = kinds[0]
    if kind is datetime:
        return datetime.fromisoformat
    if kind is uuid.UUID:
        return uuid.UUID
    if isinstance(kind, type) and issubclass(kind, Enum):
        return kind
    return None
