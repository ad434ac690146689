"""GET /api/v1/tasks/{taskId}/logs: the lines a task's handler logged, paged by sequence number."""

from __future__ import annotations

from typing import Any

from flask import Response, jsonify

from api import openapi, operations
from api.auth import current_principal, requires
from api.parsing import Blueprint
from api.responses.tasks import LogPageSchema, log_page
from api.schemas import LogQuerySchema
from api.services import services
from shared import store
from shared.status import Status

blp = Blueprint(
    "task_logs",
    __name__,
    url_prefix="/api/v1/tasks",
    description="Log lines that task handlers report while they run",
)


@blp.route("/<task_id>/logs", methods=["GET"])
@requires("tasks:read")
@blp.arguments(LogQuerySchema, location="query")
@blp.doc(
    operationId="getTaskLogs",
    responses=openapi.responses({200: openapi.ok(LogPageSchema, "A page of log lines")}, 404),
)
def task_logs(query: dict[str, Any], task_id: str) -> Response:
    """Read a task's log lines, oldest first.

    Query: after=0&limit=100 (at most 1000)
    Response 200: {"items": [{"seq": 17, "attempt": 1, "level": "INFO", "message": "step 1/3",
                              "createdAt": "2023-07-15T14:30:01.120Z"}], "nextAfter": 17}
    While the task runs, poll with `after=<nextAfter>` for new lines.
    Errors: 400 bad paging, 404 unknown (or another principal's) task.
    """
    after, limit = query["after"], query["limit"]
    with services().db.connection() as conn:
        # The task first: a line is committed before the status that ends its attempt, so a
        # task read as finished here has all its lines visible to the next query.
        task = operations.load_task(conn, task_id, current_principal())
        lines = store.task_logs(conn, task.id, after=after, limit=limit)
    finished = Status(task.status).terminal and len(lines) < limit
    next_after = None if finished else (lines[-1].seq if lines else after)
    return jsonify(log_page(lines, next_after))
