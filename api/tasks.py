"""The Task Execution Service endpoints under /api/v1/tasks (seed 004)."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify, request, url_for
from marshmallow import RAISE

from api import openapi, operations, submission
from api.auth import current_principal, requires
from api.limits import bulk_limit
from api.pagination import encode_cursor, page_doc, position
from api.parsing import Blueprint
from api.responses.tasks import (
    BulkCancelResultSchema,
    BulkResultSchema,
    CancelResultSchema,
    TaskCreatedSchema,
    TaskListSchema,
    TaskSchema,
    bulk_accepted,
    bulk_refused,
    cancel_refused,
    cancel_result,
    task_created,
    task_json,
    task_list,
)
from api.schemas import (
    BulkCancelSchema,
    BulkSubmitSchema,
    CancelTaskSchema,
    CompleteTaskSchema,
    ListTasksQuery,
    SubmitTaskSchema,
    load_bulk_item,
)
from api.services import services
from shared import store, task_rows
from shared.errors import TaskexecError, ValidationError

blp = Blueprint(
    "tasks", __name__, url_prefix="/api/v1/tasks", description="Submit and manage tasks"
)

IDEMPOTENCY_HEADER = "Idempotency-Key"
_MAX_KEY_LENGTH = 200


# ------------------------------------------------------------------ submit


@blp.route("", methods=["POST"], strict_slashes=False)
@requires("tasks:execute")
# An instance, not the class: webargs would build a schema per request (3 % of a submit).
@blp.arguments(SubmitTaskSchema(), example=openapi.SUBMIT_TASK_EXAMPLE)
@blp.doc(
    operationId="submitTask",
    parameters=[openapi.IDEMPOTENCY_KEY],
    responses=openapi.responses(
        {
            201: openapi.ok(TaskCreatedSchema, "Accepted", ("Location",), openapi.TASK_LINKS),
            200: openapi.ok(
                TaskCreatedSchema,
                "An idempotent replay: the task this key already created",
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
def submit_task(body: dict[str, Any]) -> tuple[Response, int, dict[str, str]]:
    """Submit a task.

    Request (optionally with an `Idempotency-Key: <1-200 chars>` header):
        {"taskDefinitionId": "calculate-order-total", "workflowInstanceId": "order-workflow-789",
         "input": {"orderId": "ORD-123", "items": [...]}, "priority": "HIGH",
         "executionConfig": {"timeout": 60000, "retryPolicy": {"maxRetries": 3}}}
    Response 201 (+ `Location: /api/v1/tasks/<id>`):
        {"id": "4f0c…", "status": "PENDING", "createdAt": "2023-07-15T14:30:00.000Z"}
    Start later with `"runAt": "2026-12-01T09:00:00+01:00"` (RFC 3339 with an offset) or
    `"delay": 60000` (ms), not both, at most 366 days ahead: the 201 then adds `runAt`, and
    the task waits in Postgres (GET: PENDING, `pendingReason: SCHEDULED`) until the sweeper
    releases it; a time already past runs at once (docs/scheduling.md).
    Idempotency: the same key with the same body from the same principal, within
    TASKEXEC_IDEMPOTENCY_TTL seconds, creates nothing and answers 200 with the original
    task's id, its current status and createdAt, and `Idempotent-Replayed: true`.
    Errors: 400 malformed body or key, 404 unknown definition, 409 key already used with a
    different body, 422 input fails the definition's inputSchema.
    """
    svc = services()
    principal = current_principal()
    key = _idempotency_key(body)
    definition = svc.definitions.get(body["taskDefinitionId"])
    row = task_rows.new_task(principal, body, definition)
    keys = [(key, submission.request_hash(body))] if key else []
    accepted = submission.submit(svc, principal, [row], keys)[0]
    task = accepted.task
    doc = task_created(task)
    headers = {"Location": url_for("tasks.get_task", task_id=str(task.id))}
    if not accepted.created:
        headers["Idempotent-Replayed"] = "true"
    return jsonify(doc), 201 if accepted.created else 200, headers


def _idempotency_key(body: dict[str, Any]) -> str | None:
    """The request's idempotency key: the header, or the body's `idempotencyKey` field."""
    header = request.headers.get(IDEMPOTENCY_HEADER)
    field = body.get("idempotencyKey")
    if header is None:
        return field
    if not 1 <= len(header) <= _MAX_KEY_LENGTH:
        raise ValidationError(
            f"{IDEMPOTENCY_HEADER} must be 1 to {_MAX_KEY_LENGTH} characters",
            {"field": IDEMPOTENCY_HEADER, "issue": f"length {len(header)}", "location": "headers"},
        )
    if field is not None and field != header:
        raise ValidationError(
            f"{IDEMPOTENCY_HEADER} and idempotencyKey disagree",
            {"field": "idempotencyKey", "issue": "differs from the header", "location": "body"},
        )
    return header


@blp.route("/bulk", methods=["POST"])
@bulk_limit
@requires("tasks:execute")
@blp.arguments(BulkSubmitSchema(), example=openapi.SUBMIT_TASKS_EXAMPLE)
@blp.doc(
    operationId="submitTasks",
    responses=openapi.responses(
        {201: openapi.ok(BulkResultSchema, "One outcome per item, in order")}, 413
    ),
)
def submit_bulk(body: dict[str, Any]) -> tuple[Response, int]:
    """Submit up to TASKEXEC_BULK_MAX_TASKS (100) tasks; each item is accepted or refused alone.

    Request: {"tasks": [{"taskDefinitionId": "echo", "input": {}, "idempotencyKey": "k-1"},
                        {"taskDefinitionId": "nope"}]}
    Response 201 (always, when the envelope is valid; look at each item):
        {"items": [{"index": 0, "id": "4f0c…", "status": "PENDING"},
                   {"index": 1, "error": {"code": "NOT_FOUND", "message": "…", "details": {…}}}]}
    Each item is what `POST /api/v1/tasks` takes, with its idempotency key as the field
    `idempotencyKey` (a replay gives the original id and `"replayed": true`; a key reused
    with another body is that item's CONFLICT). All accepted items are written in one
    transaction and then published. Rate-limited by TASKEXEC_RATELIMIT_BULK.
    Errors: 400 no `tasks` list, an empty one, more than the maximum, or an
    Idempotency-Key header (keys go on the items).
    """
    svc = services()
    principal = current_principal()
    items = body["tasks"]
    if len(items) > svc.settings.bulk_max_tasks:
        raise ValidationError(
            f"at most {svc.settings.bulk_max_tasks} tasks per request",
            {"field": "tasks", "issue": f"{len(items)} given", "location": "body"},
        )
    if request.headers.get(IDEMPOTENCY_HEADER) is not None:
        raise ValidationError(
            "a bulk request takes an idempotencyKey on each task, not the header",
            {"field": IDEMPOTENCY_HEADER, "issue": "not allowed here", "location": "headers"},
        )
    results: list[dict[str, Any] | None] = [None] * len(items)
    rows: list[store.NewTask] = []
    keys: list[submission.Key] = []
    positions: list[int] = []
    schema = SubmitTaskSchema()
    for index, raw in enumerate(items):
        try:
            item = load_bulk_item(schema, index, raw)
            definition = svc.definitions.get(item["taskDefinitionId"])
            rows.append(task_rows.new_task(principal, item, definition))
            key = item.get("idempotencyKey")
            keys.append((key, submission.request_hash(item)) if key else None)
            positions.append(index)
        except TaskexecError as exc:
            results[index] = bulk_refused(index, exc)
    if rows:
        outcomes = submission.submit_each(svc, principal, rows, keys)
        for index, outcome in zip(positions, outcomes, strict=True):
            if isinstance(outcome, TaskexecError):
                results[index] = bulk_refused(index, outcome)
            else:
                results[index] = bulk_accepted(index, outcome.task, outcome.created)
    return jsonify({"items": results}), 201


# ------------------------------------------------------------------ read and list


@blp.route("/<task_id>", methods=["GET"])
@requires("tasks:read")
@blp.doc(
    operationId="getTask",
    responses=openapi.responses({200: openapi.ok(TaskSchema, "The task")}, 404),
)
def get_task(task_id: str) -> Response:
    """Get a task with its execution metadata and attempt history.

    Response 200: {"id": "...", "status": "COMPLETED", "output": {...},
                   "executionMetadata": {"startTime", "endTime", "duration", ...}, ...}
    Errors: 404 unknown (or another principal's) task.
    """
    svc = services()
    live = operations.live_executors(svc)
    with svc.db.connection() as conn:
        task = operations.load_task(conn, task_id, current_principal())
        doc = operations.task_document(svc, conn, task, live)
    return jsonify(doc)


@blp.route("", methods=["GET"], strict_slashes=False)
@requires("tasks:list")
@blp.arguments(ListTasksQuery, location="query", unknown=RAISE)
@blp.doc(
    operationId="listTasks",
    responses=openapi.responses({200: openapi.ok(TaskListSchema, "A page of tasks")}),
)
def list_tasks(query: dict[str, Any]) -> Response:
    """List tasks, newest first (createdAt, then id), with filters and pagination.

    Query: status=PENDING,RUNNING (one or several) & type=AUTOMATED & workflowInstanceId=…
           & taskDefinitionId=… & createdAfter=2023-07-15T00:00:00Z (inclusive)
           & createdBefore=2023-07-16T00:00:00Z (exclusive) & page=1 & limit=20 (1..100)
    Response 200:
        {"items": [{"id", "taskDefinitionId", "workflowInstanceId", "status", "type",
                    "priority", "createdAt", "updatedAt"}, …],
         "pagination": {"page": 1, "limit": 20, "totalItems": 42, "totalPages": 3,
                        "totalItemsExact": true},
         "nextCursor": "MjAyMy0…"}
    A page past the end has no items and the same totals. `nextCursor` is there while more
    items follow; pass it as `cursor` (instead of `page`) to page deep at constant cost
    (then `pagination.page` is null). Up to TASKEXEC_LIST_EXACT_COUNT_MAX (10000) matches
    totalItems is exact; beyond it, it is Postgres' estimate and totalItemsExact is false.
    A caller without tasks:admin sees only their own tasks.
    Errors: 400 naming the parameter (unknown status or type, bad date, page < 1, limit
    outside 1..100, unknown parameter, bad cursor, page together with cursor).
    """
    page, after = position(query)
    found = operations.list_task_page(services(), current_principal(), query, page, after)
    tasks = found.tasks
    cursor = encode_cursor(tasks[-1].created_at, tasks[-1].id) if found.more else None
    doc = page_doc(page, query["limit"], found.total, found.exact)
    return jsonify(task_list(tasks, doc, cursor, found.live))


# ------------------------------------------------------------------ cancel and complete


@blp.route("/<task_id>/cancel", methods=["POST"])
@requires("tasks:cancel")
@blp.arguments(CancelTaskSchema, required=False)
@blp.doc(
    operationId="cancelTask",
    responses=openapi.responses({200: openapi.ok(CancelResultSchema, "Cancelled")}, 404, 409, 413),
)
def cancel_task(body: dict[str, Any], task_id: str) -> Response:
    """Cancel a pending, retrying or running task (docs/lifecycle.md has the semantics).

    Request (optional): {"reason": "User requested cancellation", "force": false}
    Response 200: {"id": "...", "status": "CANCELLED", "updatedAt": "..."}
    A running handler is asked to stop, then SIGTERM/SIGKILLed after TASKEXEC_CANCEL_GRACE;
    `force: true` kills it at once.
    Errors: 400 malformed body, 404 unknown task, 409 already finished.
    """
    body = body or {}
    tid = operations.parse_task_id(task_id)
    task = operations.cancel(tid, current_principal(), body.get("reason"), body.get("force", False))
    return jsonify(cancel_result(task))


@blp.route("/cancel", methods=["POST"])
@bulk_limit
@requires("tasks:cancel")
@blp.arguments(BulkCancelSchema)
@blp.doc(
    operationId="cancelTasks",
    responses=openapi.responses(
        {200: openapi.ok(BulkCancelResultSchema, "One outcome per task")}, 413
    ),
)
def cancel_many(body: dict[str, Any]) -> Response:
    """Cancel tasks by `ids` or by `workflowInstanceId`; one outcome per task.

    Request: {"workflowInstanceId": "wf-1", "reason": "workflow stopped", "force": false}
             or {"ids": ["...", "..."]} (duplicates are cancelled once)
    Response 200: {"items": [{"id": "...", "status": "CANCELLED", "updatedAt": "..."},
                             {"id": "...", "error": {"code": "CONFLICT", ...}}]}
    Errors: 400 neither or both of ids and workflowInstanceId, or a malformed body.
    """
    principal = current_principal()
    if ("ids" in body) == ("workflowInstanceId" in body):
        raise ValidationError("give either ids or workflowInstanceId", {"field": "ids"})
    if "ids" in body:
        targets: list[Any] = list(dict.fromkeys(body["ids"]))
    else:
        with services().db.connection() as conn:
            targets = store.task_ids_of_workflow(
                conn, body["workflowInstanceId"], operations.owner_scope(principal)
            )
    items: list[dict[str, Any]] = []
    for raw in targets:
        try:
            tid = operations.parse_task_id(str(raw))
            task = operations.cancel(tid, principal, body.get("reason"), body.get("force", False))
            items.append(cancel_result(task))
        except TaskexecError as exc:
            items.append(cancel_refused(str(raw), exc))
    return jsonify({"items": items})


@blp.route("/<task_id>/complete", methods=["POST"])
@requires("tasks:complete")
@blp.arguments(CompleteTaskSchema)
@blp.doc(
    operationId="completeTask",
    responses=openapi.responses(
        {200: openapi.ok(TaskSchema, "The task, now COMPLETED")}, 404, 409, 413, 422
    ),
)
def complete_task(body: dict[str, Any], task_id: str) -> Response:
    """Complete a PENDING manual (type MANUAL) task with its output.

    Request: {"output": {"approved": true, "approver": "dana"}}
    Response 200: the full task, as GET /api/v1/tasks/{id}, now COMPLETED with that output.
    The output is checked against the outputSchema of the definition version the task was
    submitted with. Errors: 400 no `output`, 404 unknown (or another principal's) task,
    409 not a manual task or no longer PENDING, 422 output fails the outputSchema.
    """
    task, attempts = operations.complete_manual(task_id, current_principal(), body["output"])
    return jsonify(task_json(task, attempts))


# ------------------------------------------------------------------ pins (retention)


@blp.route("/<task_id>/pin", methods=["POST"])
@requires("tasks:execute", when=lambda: not current_principal().is_admin)
@blp.doc(
    operationId="pinTask",
    responses=openapi.responses({200: openapi.ok(TaskSchema, "The task, now pinned")}, 404),
)
def pin_task(task_id: str) -> Response:
    """Pin a task: retention never deletes it (docs/operations.md, Retention and replay).

    Response 200: the full task, as GET /api/v1/tasks/{id}, with "pinned": true and
    "expiresAt": null. Needs tasks:execute on one's own task, or tasks:admin.
    Errors: 404 unknown (or another principal's) task.
    """
    return _pinned(task_id, True)


@blp.route("/<task_id>/pin", methods=["DELETE"])
@requires("tasks:execute", when=lambda: not current_principal().is_admin)
@blp.doc(
    operationId="unpinTask",
    responses=openapi.responses({200: openapi.ok(TaskSchema, "The task, unpinned")}, 404),
)
def unpin_task(task_id: str) -> Response:
    """Unpin a task: its retention applies again (expiresAt counts from its endTime).

    Response 200: the full task, with "pinned": false. Errors: 404 unknown task.
    """
    return _pinned(task_id, False)


def _pinned(task_id: str, pinned: bool) -> Response:
    task = operations.pin(task_id, current_principal(), pinned)
    with services().db.connection() as conn:
        attempts = store.get_attempts(conn, task.id)
    return jsonify(task_json(task, attempts, expires_at=operations.expires_at(task)))
