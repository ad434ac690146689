"""How tasks and definitions look on the wire (camelCase, RFC 3339 UTC times)."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Any

from shared.errors import ValidationError
from shared.status import Priority
from shared.store import Attempt, DefinitionRow, Task


def rfc3339(value: datetime | None) -> str | None:
    """Format a time as RFC 3339 UTC with a `Z`, to the millisecond."""
    if value is None:
        return None
    text = value.astimezone(UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def priority_name(rank: int) -> str:
    return list(Priority)[max(0, min(rank, 3))].value


def _duration_ms(task: Task) -> int | None:
    if task.start_time is None or task.end_time is None:
        return None
    return int((task.end_time - task.start_time).total_seconds() * 1000)


def _environment(host: str | None, pid: int | None) -> str | None:
    return f"{host}:{pid}" if host else None


def attempt_json(attempt: Attempt) -> dict[str, Any]:
    return {
        "attempt": attempt.attempt,
        "status": attempt.status,
        "startTime": rfc3339(attempt.started_at),
        "endTime": rfc3339(attempt.ended_at),
        "executionEnvironment": _environment(attempt.worker_host, attempt.worker_pid),
        "error": attempt.error,
    }


def task_summary(task: Task) -> dict[str, Any]:
    """The fields of a task in a list."""
    return {
        "id": str(task.id),
        "taskDefinitionId": task.task_definition_id,
        "workflowInstanceId": task.workflow_instance_id,
        "status": task.status,
        "type": task.type,
        "priority": priority_name(task.priority),
        "createdAt": rfc3339(task.created_at),
        "updatedAt": rfc3339(task.updated_at),
    }


def task_json(task: Task, attempts: list[Attempt] | None = None) -> dict[str, Any]:
    """The full task, as `GET /api/v1/tasks/{id}` returns it."""
    doc = task_summary(task)
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
                "duration": _duration_ms(task),
                "executionEnvironment": _environment(task.worker_host, task.worker_pid),
                "attempts": task.attempts,
            },
        }
    )
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


def retry_policy_json(policy: dict[str, Any]) -> dict[str, Any]:
    """A stored retry policy as the seed writes it (`"backoffMultiplier": 2`, not 2.0)."""
    multiplier = policy.get("backoffMultiplier")
    if isinstance(multiplier, float) and multiplier.is_integer():
        return {**policy, "backoffMultiplier": int(multiplier)}
    return policy


def definition_summary(row: DefinitionRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "description": row.description,
        "type": row.type,
        "version": row.version,
    }


def definition_json(row: DefinitionRow) -> dict[str, Any]:
    """The full definition, shaped as in the seed."""
    doc = definition_summary(row)
    doc.update(
        {
            "inputSchema": row.input_schema,
            "outputSchema": row.output_schema,
            "timeout": row.timeout_ms,
            "retryPolicy": retry_policy_json(row.retry_policy),
            "executionConfig": {
                "executor": row.executor,
                "securityContext": row.security_context,
                "resourceRequirements": row.resource_requirements,
            },
            "createdAt": rfc3339(row.created_at),
            "updatedAt": rfc3339(row.updated_at),
            # Not in the seed: the config a Task API job starts from (seed 003).
            "defaultConfig": row.default_config,
        }
    )
    return doc


def encode_cursor(created_at: datetime, task_id: uuid.UUID) -> str:
    """The `nextCursor` after a task: its position in the (createdAt, id) order."""
    raw = f"{created_at.isoformat()}|{task_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Read a `cursor` parameter back into a position; 400 naming `cursor` if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, tid = raw.partition("|")
        position = datetime.fromisoformat(created), uuid.UUID(tid)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise _bad_cursor() from exc
    if position[0].tzinfo is None:
        raise _bad_cursor()
    return position


def _bad_cursor() -> ValidationError:
    return ValidationError(
        "invalid cursor",
        {"field": "cursor", "issue": "not a nextCursor from this API", "location": "query"},
    )
