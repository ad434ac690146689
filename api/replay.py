"""Replay of failed work: POST /api/v1/tasks/{id}/retry, and /retry for many at once."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, url_for

from api import openapi, operations, submission
from api.auth import current_principal, requires
from api.limits import bulk_limit
from api.parsing import Blueprint
from api.responses.tasks import (
    BulkRetryResultSchema,
    TaskRetriedSchema,
    retry_refused,
    task_retried,
)
from api.schemas import RETRYABLE, BulkRetrySchema, RetryTaskSchema
from api.services import services
from shared import store
from shared.errors import TaskexecError

blp = Blueprint(
    "replay",
    __name__,
    url_prefix="/api/v1/tasks",
    description="Replay failed, timed-out or cancelled tasks as new tasks",
)

#: How many tasks a retry by filter replays when the request gives no limit.
DEFAULT_RETRY_LIMIT = 100


@blp.route("/<task_id>/retry", methods=["POST"])
@requires("tasks:execute")
@blp.arguments(RetryTaskSchema, required=False)
@blp.doc(
    operationId="retryTask",
    responses=openapi.responses(
        {201: openapi.ok(TaskRetriedSchema, "Replayed", ("Location",), openapi.TASK_LINKS)},
        404,
        409,
        413,
        422,
    ),
)
def retry_task(body: dict[str, Any] | None, task_id: str) -> tuple[Response, int, dict[str, str]]:
    """Replay a FAILED, TIMED_OUT or CANCELLED task as a new task.

    Request (optional; each field replaces the original's):
        {"input": {"orderId": "ORD-123"}, "priority": "HIGH",
         "executionConfig": {"timeout": 60000, "retryPolicy": {"maxRetries": 3}}}
    Response 201 (+ `Location: /api/v1/tasks/<new id>`):
        {"id": "9a1e…", "status": "PENDING", "createdAt": "…", "retryOf": "4f0c…"}
    The new task has the original's definition (its current version), workflow instance and
    owner; its GET shows `retryOf`, and the original's GET lists it in `retriedBy`.
    Errors: 404 unknown (or another principal's) task or a definition since deleted,
    409 the task is not FAILED, TIMED_OUT or CANCELLED, 422 input failing the definition's
    current inputSchema.
    """
    svc = services()
    principal = current_principal()
    with svc.db.connection() as conn:
        original = operations.load_task(conn, task_id, principal)
    row = operations.retry_row(svc, principal, original, body or {})
    task = submission.submit(svc, principal, [row])[0].task
    headers = {"Location": url_for("tasks.get_task", task_id=str(task.id))}
    return jsonify(task_retried(task)), 201, headers


@blp.route("/retry", methods=["POST"])
@bulk_limit
@requires("tasks:execute")
@blp.arguments(BulkRetrySchema)
@blp.doc(
    operationId="retryTasks",
    responses=openapi.responses(
        {201: openapi.ok(BulkRetryResultSchema, "One outcome per task")}, 413
    ),
)
def retry_many(body: dict[str, Any]) -> tuple[Response, int]:
    """Replay tasks by `ids`, or those a `filter` matches; one outcome per task.

    Request: {"ids": ["4f0c…", "…"]} (at most 1000; duplicates are replayed once)
             or {"filter": {"status": "FAILED", "taskDefinitionId": "send-email",
                            "workflowInstanceId": "…", "createdAfter": "…",
                            "createdBefore": "…"}, "limit": 100}
    Response 201: {"items": [{"id": "9a1e…", "status": "PENDING", "createdAt": "…",
                              "retryOf": "4f0c…"},
                             {"retryOf": "…", "error": {"code": "CONFLICT", …}}]}
    A filter matches the caller's own tasks (everyone's with tasks:admin), FAILED, TIMED_OUT
    or CANCELLED (`status` narrows it), that no retry replays yet, newest first, at most
    `limit` (default 100, at most 1000): run it again for the next ones. Each item is
    refused alone as the single retry would be. Rate-limited by TASKEXEC_RATELIMIT_BULK.
    Errors: 400 neither or both of ids and filter, limit without filter, a malformed body.
    """
    svc = services()
    principal = current_principal()
    results: list[dict[str, Any] | None] = []
    targets: list[tuple[int, str, store.Task]] = []
    with svc.db.connection() as conn:
        if "ids" in body:
            for raw in dict.fromkeys(body["ids"]):
                try:
                    targets.append((len(results), raw, operations.load_task(conn, raw, principal)))
                    results.append(None)
                except TaskexecError as exc:
                    results.append(retry_refused(raw, exc))
        else:
            wanted = body["filter"]
            flt = store.TaskFilter(
                owner=operations.owner_scope(principal),
                statuses=tuple(wanted.get("status") or RETRYABLE),
                workflow_instance_id=wanted.get("workflowInstanceId"),
                task_definition_id=wanted.get("taskDefinitionId"),
                created_after=wanted.get("createdAfter"),
                created_before=wanted.get("createdBefore"),
                unretried=True,
            )
            limit = body.get("limit", DEFAULT_RETRY_LIMIT)
            for task in store.list_tasks(conn, flt, limit=limit):
                targets.append((len(results), str(task.id), task))
                results.append(None)
    rows: list[store.NewTask] = []
    positions: list[tuple[int, str]] = []
    for index, raw, original in targets:
        try:
            rows.append(operations.retry_row(svc, principal, original, {}))
            positions.append((index, raw))
        except TaskexecError as exc:
            results[index] = retry_refused(raw, exc)
    if rows:
        outcomes = submission.submit_each(svc, principal, rows)
        for (index, raw), outcome in zip(positions, outcomes, strict=True):
            if isinstance(outcome, TaskexecError):
                results[index] = retry_refused(raw, outcome)
            else:
                results[index] = task_retried(outcome.task)
    return jsonify({"items": results}), 201
