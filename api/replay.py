"""Replay of failed work: POST /api/v1/tasks/{id}/retry, and /retry for many at once."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, request, url_for

from api import openapi, operations, submission
from api.auth import current_principal, requires
from api.limits import bulk_limit
from api.metrics import SUBMITTED
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
from shared.errors import TaskexecError, ValidationError

blp = Blueprint(
    "replay",
    __name__,
    url_prefix="/api/v1/tasks",
    description="Replay failed, timed-out or cancelled tasks as new tasks",
)

#: How many tasks a retry by filter replays when the request gives no limit.
DEFAULT_RETRY_LIMIT = 100
IDEMPOTENCY_HEADER = "Idempotency-Key"
_MAX_KEY_LENGTH = 200


def _idempotency(task_id: str, body: dict[str, Any]) -> list[submission.Key]:
    """The single retry's (key, request hash) from an Idempotency-Key header, if any."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return []
    if not 1 <= len(key) <= _MAX_KEY_LENGTH:
        raise ValidationError(
            f"{IDEMPOTENCY_HEADER} must be 1 to {_MAX_KEY_LENGTH} characters",
            {"field": IDEMPOTENCY_HEADER, "issue": f"length {len(key)}", "location": "headers"},
        )
    return [(key, submission.request_hash({"retryOf": task_id, **body}))]


@blp.route("/<task_id>/retry", methods=["POST"])
@requires("tasks:execute")
@blp.arguments(RetryTaskSchema, required=False)
@blp.doc(
    operationId="retryTask",
    parameters=[openapi.IDEMPOTENCY_KEY],
    responses=openapi.responses(
        {
            201: openapi.ok(TaskRetriedSchema, "Replayed", ("Location",), openapi.TASK_LINKS),
            200: openapi.ok(
                TaskRetriedSchema,
                "An idempotent replay: the retry this key already created",
                ("Location", "Idempotent-Replayed"),
                openapi.TASK_LINKS,
            ),
        },
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
    Each request is one replay: two requests make two (as two submissions would). A client
    that may resend the request sends an `Idempotency-Key` header: the same key with the same
    task and body, within TASKEXEC_IDEMPOTENCY_TTL, creates nothing and answers 200 with the
    retry the key created, and `Idempotent-Replayed: true`.
    Errors: 400 a malformed key, 404 unknown (or another principal's) task or a definition
    since deleted, 409 the task is not FAILED, TIMED_OUT or CANCELLED, or the key was used
    with another request, 422 input failing the definition's current inputSchema.
    """
    svc = services()
    principal = current_principal()
    keys = _idempotency(task_id, body or {})
    with svc.db.connection() as conn:
        original = operations.load_task(conn, task_id, principal)
    row = operations.retry_row(svc, principal, original, body or {})
    accepted = submission.submit(svc, principal, [row], keys)[0]
    task = accepted.task
    headers = {"Location": url_for("tasks.get_task", task_id=str(task.id))}
    if not accepted.created:
        headers["Idempotent-Replayed"] = "true"
    return jsonify(task_retried(task)), 201 if accepted.created else 200, headers


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
    refused alone as the single retry would be. Retries by filter run one at a time (a
    transaction-scoped advisory lock from picking the tasks to committing their replays), so
    two racing never replay a task twice: the second sees the first's replays and skips those
    tasks. By `ids`, each listed task is replayed, retried before or not, like a single retry.
    Rate-limited by TASKEXEC_RATELIMIT_BULK.
    Errors: 400 neither or both of ids and filter, limit without filter, a malformed body.
    """
    if "filter" in body:
        return jsonify({"items": _retry_by_filter(body)}), 201
    svc = services()
    principal = current_principal()
    results: list[dict[str, Any] | None] = []
    targets: list[tuple[int, str, store.Task]] = []
    with svc.db.connection() as conn:
        for raw in dict.fromkeys(body["ids"]):
            try:
                targets.append((len(results), raw, operations.load_task(conn, raw, principal)))
                results.append(None)
            except TaskexecError as exc:
                results.append(retry_refused(raw, exc))
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


def _retry_by_filter(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Pick the matching tasks not yet retried and insert their replays under one lock.

    The insert is in the lock's transaction (not the shared group commit): the lock must be
    held until the replays are visible to the next retry by filter. Publishing follows the
    commit, as for any submission (the sweeper republishes if it fails).
    """
    svc = services()
    principal = current_principal()
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
    results: list[dict[str, Any]] = []
    with svc.db.connection() as conn:
        store.lock_retries_by_filter(conn)
        rows: list[store.NewTask] = []
        for original in store.list_tasks(conn, flt, limit=body.get("limit", DEFAULT_RETRY_LIMIT)):
            try:
                rows.append(operations.retry_row(svc, principal, original, {}))
                results.append({"retryOf": str(original.id)})  # filled in below
            except TaskexecError as exc:
                results.append(retry_refused(str(original.id), exc))
        inserted = iter(store.insert_tasks(conn, rows))
    tasks: list[store.Task] = []
    for index, item in enumerate(results):
        if "error" not in item:
            task = next(inserted)
            tasks.append(task)
            results[index] = task_retried(task)
            SUBMITTED.labels(task.task_definition_id).inc()
    submission.publish(tasks, svc)
    return results
