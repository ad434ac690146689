"""GET /api/v1/tasks/{taskId}/logs: the lines a task's handler logged, paged by sequence number."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from api import openapi
from api.auth import current_principal, requires
from api.parsing import Blueprint
from api.resources import rfc3339
from api.services import services
from api.tasks import owner_scope, parse_task_id
from shared import store
from shared.errors import TaskNotFound
from shared.status import Status

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000

blp = Blueprint(
    "task_logs",
    __name__,
    url_prefix="/api/v1/tasks",
    description="Log lines that task handlers report while they run",
)


class LogQuerySchema(Schema):
    after = fields.Integer(
        load_default=0,
        validate=validate.Range(min=0),
        metadata={"description": "Return lines whose seq is greater (the last nextAfter)"},
    )
    limit = fields.Integer(
        load_default=DEFAULT_LIMIT,
        validate=validate.Range(min=1, max=MAX_LIMIT),
        metadata={"description": f"Lines per page, 1 to {MAX_LIMIT}"},
    )


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


@blp.route("/<task_id>/logs", methods=["GET"])
@requires("tasks:read")
@blp.arguments(LogQuerySchema, location="query")
@blp.response(200, LogPageSchema)
@blp.doc(
    operationId="getTaskLogs",
    responses=openapi.responses({200: openapi.ok(LogPageSchema, "A page of log lines")}, 404),
)
def task_logs(query: dict[str, Any], task_id: str) -> dict[str, Any]:
    """Read a task's log lines, oldest first.

    Query: after=0&limit=100 (at most 1000)
    Response 200: {"items": [{"seq": 17, "attempt": 1, "level": "INFO", "message": "step 1/3",
                              "createdAt": "2023-07-15T14:30:01.120Z"}], "nextAfter": 17}
    While the task runs, poll with `after=<nextAfter>` for new lines.
    Errors: 400 bad paging, 404 unknown (or another principal's) task.
    """
    tid = parse_task_id(task_id)
    after, limit = query["after"], query["limit"]
    with services().db.connection() as conn:
        # The task first: a line is committed before the status that ends its attempt, so a
        # task read as finished here has all its lines visible to the next query.
        task = store.get_task(conn, tid, owner_scope(current_principal()))
        if task is None:
            raise TaskNotFound(f"task {task_id} not found")
        lines = store.task_logs(conn, tid, after=after, limit=limit)
    finished = Status(task.status).terminal and len(lines) < limit
    return {
        "items": [
            {
                "seq": line.seq,
                "attempt": line.attempt,
                "level": line.level,
                "message": line.message,
                "createdAt": rfc3339(line.created_at),
            }
            for line in lines
        ],
        "nextAfter": None if finished else (lines[-1].seq if lines else after),
    }
