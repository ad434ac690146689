"""The Task Execution Service endpoints under /api/v1/tasks (seed 004)."""

from __future__ import annotations

import base64
import binascii
import math
import uuid
from datetime import datetime
from typing import Any

from flask import Response, jsonify, request, url_for
from marshmallow import Schema, fields, validate

from api import submission
from api.auth import current_principal, requires
from api.blueprint import Blueprint
from api.limits import bulk_limit
from api.resources import rfc3339, task_json, task_summary
from api.schemas import (
    STATUSES,
    TYPES,
    BulkCancelSchema,
    BulkSubmitSchema,
    CancelTaskSchema,
    CompleteTaskSchema,
    SubmitTaskSchema,
)
from api.services import services
from shared import store
from shared.broker import BROKER_ERRORS
from shared.credentials import Principal
from shared.errors import (
    Conflict,
    TaskAlreadyFinished,
    TaskexecError,
    TaskNotFound,
    ValidationError,
)
from shared.status import Status, TaskType

blp = Blueprint(
    "tasks", __name__, url_prefix="/api/v1/tasks", description="Submit and manage tasks"
)


def parse_task_id(raw: str) -> uuid.UUID:
    """Parse a task id; anything that is not one is simply not found."""
    try:
        return uuid.UUID(raw)
    except ValueError as exc:
        raise TaskNotFound(f"task {raw!r} not found") from exc


def owner_scope(principal: Principal) -> str | None:
    """Whose tasks the caller sees: everyone's for tasks:admin, else their own."""
    return None if principal.is_admin else principal.subject


# ------------------------------------------------------------------ submit


@blp.route("", methods=["POST"], strict_slashes=False)
@requires("tasks:execute")
@blp.arguments(SubmitTaskSchema)
def submit_task(body: dict[str, Any]) -> tuple[Response, int, dict[str, str]]:
    """Submit a task.

    Request: {"taskDefinitionId": "calculate-order-total", "input": {...}, "priority": "HIGH"}
    Response 201: {"id": "...", "status": "PENDING", "createdAt": "2023-07-15T14:30:00.000Z"}
    An `Idempotency-Key` header replays the original task (200) instead of creating another.
    Errors: 400 malformed, 404 unknown definition, 409 key reused, 422 input fails the schema.
    """
    svc = services()
    principal = current_principal()
    definition = svc.definitions.get(body["taskDefinitionId"])
    row = submission.new_task(principal, body, definition)
    key = request.headers.get("Idempotency-Key") or body.get("idempotencyKey")
    if key is not None and not 1 <= len(key) <= 200:
        raise ValidationError("Idempotency-Key must be 1 to 200 characters")
    keys = [(key, submission.request_hash(body))] if key else []
    accepted = submission.submit(svc, principal, [row], keys)[0]
    task = accepted.task
    doc = {"id": str(task.id), "status": task.status, "createdAt": rfc3339(task.created_at)}
    location = url_for("tasks.get_task", task_id=str(task.id))
    return jsonify(doc), 201 if accepted.created else 200, {"Location": location}


@blp.route("/bulk", methods=["POST"])
@bulk_limit
@requires("tasks:execute")
@blp.arguments(BulkSubmitSchema)
def submit_bulk(body: dict[str, Any]) -> tuple[Response, int]:
    """Submit up to `TASKEXEC_BULK_MAX_TASKS` tasks; each item is accepted or refused alone.

    Request: {"tasks": [{"taskDefinitionId": "echo", "input": {}}, {...}]}
    Response 201: {"items": [{"index": 0, "id": "...", "status": "PENDING"},
                             {"index": 1, "error": {"code": "NOT_FOUND", ...}}]}
    """
    svc = services()
    principal = current_principal()
    items = body["tasks"]
    if len(items) > svc.settings.bulk_max_tasks:
        raise ValidationError(
            f"at most {svc.settings.bulk_max_tasks} tasks per request",
            {"field": "tasks", "issue": f"{len(items)} given"},
        )
    results: list[dict[str, Any] | None] = [None] * len(items)
    rows: list[store.NewTask] = []
    keys: list[tuple[str, str] | None] = []
    positions: list[int] = []
    schema = SubmitTaskSchema()
    for index, raw in enumerate(items):
        try:
            errors = (
                schema.validate(raw) if isinstance(raw, dict) else {"_schema": ["not an object"]}
            )
            if errors:
                raise ValidationError("Request validation failed", errors)
            item = schema.load(raw)
            definition = svc.definitions.get(item["taskDefinitionId"])
            rows.append(submission.new_task(principal, item, definition))
            key = item.get("idempotencyKey")
            keys.append((key, submission.request_hash(item)) if key else None)
            positions.append(index)
        except TaskexecError as exc:
            results[index] = {"index": index, "error": _error_doc(exc)}
    if rows:
        try:
            accepted = submission.submit(svc, principal, rows, keys)
        except Conflict as exc:
            # One reused key must not sink the batch: retry the others without it.
            accepted = _submit_each(svc, principal, rows, keys, positions, results, exc)
        else:
            for index, acc in zip(positions, accepted, strict=True):
                results[index] = _accepted_doc(index, acc)
    return jsonify({"items": results}), 201


def _submit_each(svc, principal, rows, keys, positions, results, _exc) -> list[Any]:  # type: ignore[no-untyped-def]
    accepted = []
    for index, row, key in zip(positions, rows, keys, strict=True):
        try:
            acc = submission.submit(svc, principal, [row], [key] if key else [])[0]
            results[index] = _accepted_doc(index, acc)
            accepted.append(acc)
        except Conflict as exc:
            results[index] = {"index": index, "error": _error_doc(exc)}
    return accepted


def _accepted_doc(index: int, accepted: submission.Accepted) -> dict[str, Any]:
    return {"index": index, "id": str(accepted.task.id), "status": accepted.task.status}


def _error_doc(exc: TaskexecError) -> dict[str, Any]:
    return {"code": exc.code, "message": exc.message, "details": exc.details}


# ------------------------------------------------------------------ read and list


@blp.route("/<task_id>", methods=["GET"])
@requires("tasks:read")
def get_task(task_id: str) -> Response:
    """Get a task with its execution metadata and attempt history.

    Response 200: {"id": "...", "status": "COMPLETED", "output": {...},
                   "executionMetadata": {"startTime", "endTime", "duration", ...}, ...}
    Errors: 404 unknown (or another principal's) task.
    """
    tid = parse_task_id(task_id)
    with services().db.connection() as conn:
        task = store.get_task(conn, tid, owner_scope(current_principal()))
        if task is None:
            raise TaskNotFound(f"task {task_id} not found")
        attempts = store.get_attempts(conn, tid)
    return jsonify(task_json(task, attempts))


class ListTasksQuery(Schema):
    status = fields.String(metadata={"description": "One status or several, comma-separated"})
    type = fields.String(validate=validate.OneOf(TYPES))
    workflowInstanceId = fields.String(validate=validate.Length(min=1, max=200))
    taskDefinitionId = fields.String(validate=validate.Length(min=1, max=200))
    createdAfter = fields.AwareDateTime(format="iso")
    createdBefore = fields.AwareDateTime(format="iso")
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000))
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(validate=validate.Length(max=200))


@blp.route("", methods=["GET"], strict_slashes=False)
@requires("tasks:list")
@blp.arguments(ListTasksQuery, location="query")
def list_tasks(query: dict[str, Any]) -> Response:
    """List tasks, newest first, with filters and pagination.

    Query: status=RUNNING,PENDING&type=AUTOMATED&workflowInstanceId=..&page=1&limit=20
    Response 200: {"items": [...], "pagination": {"page", "limit", "totalItems", "totalPages"}}
    `nextCursor` is given too: pass it as `cursor` for fast deep paging.
    """
    statuses = tuple(s.strip() for s in query.get("status", "").split(",") if s.strip())
    unknown = [s for s in statuses if s not in STATUSES]
    if unknown:
        raise ValidationError(
            "unknown status", {"field": "status", "issue": f"unknown: {', '.join(unknown)}"}
        )
    flt = store.TaskFilter(
        owner=owner_scope(current_principal()),
        statuses=statuses,
        type=query.get("type"),
        workflow_instance_id=query.get("workflowInstanceId"),
        task_definition_id=query.get("taskDefinitionId"),
        created_after=query.get("createdAfter"),
        created_before=query.get("createdBefore"),
    )
    page, limit = query["page"], query["limit"]
    after = _decode_cursor(query["cursor"]) if "cursor" in query else None
    with services().db.connection() as conn:
        tasks, total = store.list_tasks(
            conn, flt, limit=limit, offset=(page - 1) * limit, after=after
        )
    body: dict[str, Any] = {
        "items": [task_summary(t) for t in tasks],
        "pagination": {
            "page": page,
            "limit": limit,
            "totalItems": total,
            "totalPages": math.ceil((total or 0) / limit),
        },
    }
    if len(tasks) == limit:
        last = tasks[-1]
        body["nextCursor"] = _encode_cursor(last.created_at, last.id)
    return jsonify(body)


def _encode_cursor(created_at: datetime, task_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{task_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, tid = raw.partition("|")
        return datetime.fromisoformat(created), uuid.UUID(tid)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ValidationError("invalid cursor", {"field": "cursor"}) from exc


# ------------------------------------------------------------------ cancel and complete


def cancel_one(tid: uuid.UUID, principal: Principal, reason: str | None, force: bool) -> store.Task:
    """Cancel a task and stop its running attempt; raise 404/409 as the seed says."""
    svc = services()
    with svc.db.connection() as conn:
        outcome = store.cancel_task(
            conn,
            tid,
            owner=owner_scope(principal),
            reason=reason,
            by=principal.subject,
            force=force,
        )
    if outcome is None:
        raise TaskNotFound(f"task {tid} not found")
    if not outcome.cancelled:
        raise TaskAlreadyFinished(
            f"task {tid} is already {outcome.task.status}", {"status": outcome.task.status}
        )
    if outcome.previous_status == Status.RUNNING.value and force:
        try:
            svc.broker.revoke(str(tid), terminate=True)
        except BROKER_ERRORS:
            pass  # the attempt's own watcher sees the forced cancel and ends itself
    return outcome.task


@blp.route("/<task_id>/cancel", methods=["POST"])
@requires("tasks:cancel")
@blp.arguments(CancelTaskSchema, required=False)
def cancel_task(body: dict[str, Any], task_id: str) -> Response:
    """Cancel a pending, retrying or running task.

    Request: {"reason": "User requested cancellation", "force": false}
    Response 200: {"id": "...", "status": "CANCELLED", "updatedAt": "..."}
    Errors: 404 unknown task, 409 already finished.
    """
    body = body or {}
    task = cancel_one(
        parse_task_id(task_id), current_principal(), body.get("reason"), body.get("force", False)
    )
    return jsonify(
        {"id": str(task.id), "status": task.status, "updatedAt": rfc3339(task.updated_at)}
    )


@blp.route("/cancel", methods=["POST"])
@bulk_limit
@requires("tasks:cancel")
@blp.arguments(BulkCancelSchema)
def cancel_many(body: dict[str, Any]) -> Response:
    """Cancel tasks by `ids` or by `workflowInstanceId`; one outcome per task.

    Response 200: {"items": [{"id": "...", "status": "CANCELLED"},
                             {"id": "...", "error": {"code": "CONFLICT", ...}}]}
    """
    principal = current_principal()
    if ("ids" in body) == ("workflowInstanceId" in body):
        raise ValidationError("give either ids or workflowInstanceId", {"field": "ids"})
    if "ids" in body:
        targets: list[Any] = list(dict.fromkeys(body["ids"]))
    else:
        with services().db.connection() as conn:
            targets = store.task_ids_of_workflow(
                conn, body["workflowInstanceId"], owner_scope(principal)
            )
    items = []
    for raw in targets:
        try:
            task = cancel_one(
                parse_task_id(str(raw)), principal, body.get("reason"), body.get("force", False)
            )
            items.append(
                {"id": str(task.id), "status": task.status, "updatedAt": rfc3339(task.updated_at)}
            )
        except TaskexecError as exc:
            items.append({"id": str(raw), "error": _error_doc(exc)})
    return jsonify({"items": items})


@blp.route("/<task_id>/complete", methods=["POST"])
@requires("tasks:complete")
@blp.arguments(CompleteTaskSchema)
def complete_task(body: dict[str, Any], task_id: str) -> Response:
    """Complete a PENDING manual task with its output (checked against the output schema).

    Request: {"output": {"approved": true}}
    Response 200: the full task. Errors: 404, 409 not manual or not pending, 422 bad output.
    """
    svc = services()
    principal = current_principal()
    tid = parse_task_id(task_id)
    with svc.db.connection() as conn:
        task = store.get_task(conn, tid, owner_scope(principal))
    if task is None:
        raise TaskNotFound(f"task {task_id} not found")
    if task.type != TaskType.MANUAL.value:
        raise Conflict("only MANUAL tasks are completed through the API", {"type": task.type})
    definition = svc.definitions.get(task.task_definition_id)
    error = submission.output_errors(definition, body["output"])
    if error is not None:
        raise error
    with svc.db.connection() as conn:
        done = store.complete_manual_task(conn, tid, body["output"], owner_scope(principal))
        if done is None:
            current = store.get_task(conn, tid)
            raise TaskAlreadyFinished(
                f"task {task_id} is {current.status if current else 'gone'}",
                {"status": current.status if current else None},
            )
        attempts = store.get_attempts(conn, tid)
    return jsonify(task_json(done, attempts))
