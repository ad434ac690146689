"""The recurring schedule endpoints under /api/v1/schedules (issue 14)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Response, jsonify, url_for
from marshmallow import RAISE

from api import openapi, operations, submission
from api.auth import current_principal, requires
from api.metrics import SUBMITTED
from api.pagination import encode_cursor, page_doc, position
from api.parsing import Blueprint
from api.responses.schedules import (
    ScheduleListSchema,
    ScheduleSchema,
    schedule_json,
    schedule_list,
)
from api.responses.tasks import TaskCreatedSchema, task_created
from api.schedule_schemas import CreateScheduleSchema, ListSchedulesQuery, PatchScheduleSchema
from api.services import services
from shared import store, task_rows
from shared.errors import NotFound, ValidationError
from shared.schedules import Timing, fired_task, next_run_after_edit

blp = Blueprint(
    "schedules",
    __name__,
    url_prefix="/api/v1/schedules",
    description="Recurring schedules: one task per slot",
)

#: Request field -> column, for what POST and PATCH write.
_COLUMNS = {
    "name": "name",
    "cron": "cron",
    "interval": "interval_ms",
    "timezone": "timezone",
    "task": "task",
    "overlapPolicy": "overlap_policy",
    "catchupWindow": "catchup_window_ms",
    "startAt": "start_at",
    "endAt": "end_at",
    "paused": "paused",
}


def _check_template(template: dict[str, Any]) -> None:
    """Validate a task template exactly as a submission: 404 unknown definition, 422 input."""
    definition = services().definitions.get(template["taskDefinitionId"])
    error = task_rows.input_errors(definition, template.get("input", {}))
    if error is not None:
        raise error


def _next_run(
    values: dict[str, Any], created_at: datetime, pending: datetime | None = None
) -> datetime | None:
    """The first slot after now; with `pending` (a due slot not yet fired), the first at or
    after it (shared.schedules.next_run_after_edit)."""
    timing = Timing(
        cron=values.get("cron"),
        interval_ms=values.get("interval_ms"),
        timezone=values["timezone"],
        anchor=values.get("start_at") or created_at,
        start_at=values.get("start_at"),
        end_at=values.get("end_at"),
    )
    return next_run_after_edit(timing, pending, datetime.now(UTC))


def _load(conn: store.Conn, raw_id: str, lock: bool = False) -> store.Schedule:
    """The caller's schedule (any with tasks:admin), or 404."""
    try:
        schedule_id = uuid.UUID(raw_id)
    except ValueError:
        schedule_id = None
    row = (
        None
        if schedule_id is None
        else store.get_schedule(
            conn, schedule_id, operations.owner_scope(current_principal()), lock=lock
        )
    )
    if row is None:
        raise NotFound(f"schedule {raw_id} not found", {"scheduleId": raw_id})
    return row


@blp.route("", methods=["POST"], strict_slashes=False)
@requires("schedules:write")
@blp.arguments(CreateScheduleSchema())
@blp.doc(
    operationId="createSchedule",
    responses=openapi.responses(
        {201: openapi.ok(ScheduleSchema, "Created", ("Location",))}, 404, 422
    ),
)
def create_schedule(body: dict[str, Any]) -> tuple[Response, int, dict[str, str]]:
    """Create a schedule.

    Request: {"name": "nightly", "cron": "0 2 * * *" | "interval": 60000,
              "timezone": "Europe/Berlin", "task": {"taskDefinitionId": "echo", "input": {…},
              "priority": "HIGH", "executionConfig": {…}, "workflowInstanceId": "…"},
              "overlapPolicy": "ALLOW|SKIP|CANCEL_PREVIOUS", "catchupWindow": 60000,
              "startAt": "…", "endAt": "…", "paused": false}
    Response 201 (+ `Location`): the schedule, with `nextRunAt`.
    Errors: 400 malformed (both or neither of cron and interval, interval < 1000, bad cron or
    time zone), 404 unknown definition, 422 input fails the definition's inputSchema.
    """
    _check_template(body["task"])
    values = {_COLUMNS[k]: v for k, v in body.items() if k in _COLUMNS}
    created_at = datetime.now(UTC)
    values["next_run_at"] = _next_run(values, created_at)
    with services().db.connection() as conn:
        row = store.insert_schedule(
            conn, uuid.uuid4(), current_principal().subject, values, created_at
        )
    location = url_for("schedules.get_schedule", schedule_id=str(row.id))
    return jsonify(schedule_json(row)), 201, {"Location": location}


@blp.route("", methods=["GET"], strict_slashes=False)
@requires("schedules:read")
@blp.arguments(ListSchedulesQuery, location="query", unknown=RAISE)
@blp.doc(
    operationId="listSchedules",
    responses=openapi.responses({200: openapi.ok(ScheduleListSchema, "A page of schedules")}),
)
def list_schedules(query: dict[str, Any]) -> Response:
    """List schedules newest first; filters `paused`, `taskDefinitionId`; page or cursor.

    Errors: 400 naming the parameter (page with cursor, bad cursor, limit outside 1..100).
    """
    page, after = position(query)
    limit = query["limit"]
    flt = store.ScheduleFilter(
        owner=operations.owner_scope(current_principal()),
        paused=query.get("paused"),
        task_definition_id=query.get("taskDefinitionId"),
    )
    with services().db.connection() as conn:
        rows, total = store.list_schedules(
            conn, flt, limit=limit + 1, offset=((page or 1) - 1) * limit, after=after
        )
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
    return jsonify(schedule_list(rows, page_doc(page, limit, total, True), cursor))


@blp.route("/<schedule_id>", methods=["GET"])
@requires("schedules:read")
@blp.doc(
    operationId="getSchedule",
    responses=openapi.responses({200: openapi.ok(ScheduleSchema, "The schedule")}, 404),
)
def get_schedule(schedule_id: str) -> Response:
    """Get a schedule. Errors: 404 unknown (or another principal's) schedule."""
    with services().db.connection() as conn:
        row = _load(conn, schedule_id)
    return jsonify(schedule_json(row))


@blp.route("/<schedule_id>", methods=["PATCH"])
@requires("schedules:write")
@blp.arguments(PatchScheduleSchema())
@blp.doc(
    operationId="updateSchedule",
    responses=openapi.responses({200: openapi.ok(ScheduleSchema, "The schedule")}, 404, 422),
)
def update_schedule(body: dict[str, Any], schedule_id: str) -> Response:
    """Change any field; `paused: true|false` pauses and resumes; `nextRunAt` is recomputed.

    Giving `cron` drops `interval` and the other way round. Resuming does not fire the
    slots missed while paused: the next slot is the first after now. A slot already due but
    not yet fired when an active schedule is edited still fires (if the new timing has it).
    The PATCH and a sweeper's round take the same row lock, so neither overwrites the other.
    Errors: 400 malformed, 404 unknown schedule or definition, 422 input fails the schema.
    """
    if "task" in body:
        _check_template(body["task"])
    with services().db.connection() as conn:
        row = _load(conn, schedule_id, lock=True)
        values = {_COLUMNS[k]: v for k, v in body.items() if k in _COLUMNS}
        if "cron" in values:
            values["interval_ms"] = None
        elif "interval_ms" in values:
            values["cron"] = None
        merged = {
            "cron": row.cron,
            "interval_ms": row.interval_ms,
            "timezone": row.timezone,
            "start_at": row.start_at,
            "end_at": row.end_at,
            **values,
        }
        start, end = merged["start_at"], merged["end_at"]
        if start is not None and end is not None and end <= start:
            raise ValidationError(
                "endAt must be after startAt",
                {"field": "endAt", "issue": "not after startAt", "location": "body"},
            )
        # A due slot the sweeper has not fired yet is kept, unless the schedule was or
        # becomes paused (a pause skips the slots it covers).
        stays_active = not row.paused and not values.get("paused", False)
        pending = row.next_run_at if stays_active else None
        values["next_run_at"] = _next_run(merged, row.created_at, pending)
        row = store.update_schedule(conn, row.id, values)
    return jsonify(schedule_json(row))


@blp.route("/<schedule_id>", methods=["DELETE"])
@requires("schedules:write")
@blp.doc(
    operationId="deleteSchedule",
    responses=openapi.responses({204: {"description": "Deleted"}}, 404),
)
def delete_schedule(schedule_id: str) -> tuple[str, int]:
    """Delete a schedule; the tasks it fired stay. Errors: 404 unknown schedule."""
    with services().db.connection() as conn:
        row = _load(conn, schedule_id)
        store.delete_schedule(conn, row.id, None)
    return "", 204


@blp.route("/<schedule_id>/trigger", methods=["POST"])
@requires("schedules:write")
@blp.doc(
    operationId="triggerSchedule",
    responses=openapi.responses(
        {201: openapi.ok(TaskCreatedSchema, "The new task", ("Location",))}, 404, 422
    ),
)
def trigger_schedule(schedule_id: str) -> tuple[Response, int, dict[str, str]]:
    """Fire the schedule's task now, outside its slot sequence (`scheduledFor` null).

    The task belongs to the schedule's owner and carries its `scheduleId`; the overlap
    policy does not apply. It is built as a submission's, so its input is checked against
    the definition's current schema. Errors: 404 unknown schedule, or its definition is
    gone; 422 its input no longer matches the definition's schema.
    """
    svc = services()
    with svc.db.connection() as conn:
        row = _load(conn, schedule_id)
    definition = svc.definitions.get(row.task["taskDefinitionId"])
    new = store.SlotTask(fired_task(row.task, definition, row.owner), row.id, None)
    executor = new.task.executor
    open_windows = {executor} if svc.window.is_open(executor) else set()
    with svc.db.connection() as conn:
        task = store.insert_schedule_tasks(conn, [new], open_windows)[0]
    submission.publish([task], svc)
    SUBMITTED.labels(task.task_definition_id).inc()
    location = url_for("tasks.get_task", task_id=str(task.id))
    return jsonify(task_created(task)), 201, {"Location": location}
