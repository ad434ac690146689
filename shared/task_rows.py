"""Building a task row from a submission body: the API's submits and a schedule's fires alike."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from shared import store
from shared.credentials import Principal
from shared.definitions import RetryPolicy
from shared.errors import InputValidationError
from shared.status import Priority, TaskType
from shared.validation import schema_errors


def input_errors(definition: store.DefinitionRow, data: Any) -> InputValidationError | None:
    """Return the 422 error for input that fails the definition's schema, or None."""
    return _schema_error(
        definition.input_schema, data, f"input does not match the input schema of {definition.id}"
    )


def output_errors(
    definition_id: str, output_schema: dict[str, Any], data: Any
) -> InputValidationError | None:
    """Return the 422 error for a manual completion whose output fails the schema, or None."""
    return _schema_error(
        output_schema, data, f"output does not match the output schema of {definition_id}"
    )


def _schema_error(schema: dict[str, Any], data: Any, message: str) -> InputValidationError | None:
    problems = schema_errors(schema, data)
    if not problems:
        return None
    return InputValidationError(
        message, {"field": problems[0]["field"], "issue": problems[0]["issue"], "errors": problems}
    )


def new_task(
    principal: Principal,
    body: dict[str, Any],
    definition: store.DefinitionRow,
    *,
    deadline_at: datetime | None = None,
    source: str = "tasks",
) -> store.NewTask:
    """Build the row for a submission whose envelope is valid; raise 422 for bad input."""
    error = input_errors(definition, body.get("input", {}))
    if error is not None:
        raise error
    config = body.get("executionConfig") or {}
    policy = RetryPolicy.from_json(
        config.get("retryPolicy") or {}, base=RetryPolicy.from_json(definition.retry_policy)
    )
    manual = definition.type == TaskType.MANUAL.value
    run_at = start_time(body)
    if run_at is not None and deadline_at is not None:
        # A deadline "since submission" counts from when the task may start, not its wait.
        deadline_at += max(run_at - datetime.now(UTC), timedelta(0))
    return store.NewTask(
        id=uuid.uuid4(),
        owner=principal.subject,
        task_definition_id=definition.id,
        definition_version=definition.version,
        workflow_instance_id=body.get("workflowInstanceId"),
        type=definition.type,
        priority=Priority(body.get("priority") or Priority.MEDIUM.value).rank,
        executor=definition.executor,
        input=body.get("input", {}),
        timeout_ms=int(config.get("timeout") or definition.timeout_ms),
        retry_policy=policy.to_json(),
        deadline_at=deadline_at,
        source=source,
        # A manual task never goes to a worker: no message now, none from the sweeper later.
        published=not manual,
        run_at=run_at,
        definition_limit=definition.concurrency_limit,
        concurrency_key=(config.get("concurrency") or {}).get("key"),
        key_limit=(config.get("concurrency") or {}).get("limit"),
        owner_limit=principal.max_running,
    )


def start_time(body: dict[str, Any]) -> datetime | None:
    """When a delayed submission may start (`runAt`, or `delay` ms from now); None: at once."""
    if "delay" in body:
        return datetime.now(UTC) + timedelta(milliseconds=body["delay"])
    run_at: datetime | None = body.get("runAt")
    return run_at
