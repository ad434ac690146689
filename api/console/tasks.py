"""Console pages for tasks: the list (filters, paging, refreshing), a task, and its actions."""

from __future__ import annotations

from typing import Any

from flask import Response, redirect, request, url_for
from marshmallow import ValidationError as SchemaError

from api import operations, submission
from api.auth import current_principal, requires
from api.console.blueprint import bp, query_string, render
from api.console.forms import parse_json
from api.errors import status_for
from api.pagination import encode_cursor, page_doc, position
from api.schemas import ListTasksQuery
from api.services import services
from shared import store
from shared.errors import TaskexecError, ValidationError
from shared.pending import pending_reason
from shared.status import PendingReason, Status, TaskType

#: The list's filters, as the form and the API name them.
FILTERS = (
    "type",
    "taskDefinitionId",
    "workflowInstanceId",
    "scheduleId",
    "createdAfter",
    "createdBefore",
)
#: What a finished action says on the task's page (fixed texts: nothing from the request).
NOTICES = {
    "cancelled": "Cancelled.",
    "pinned": "Pinned: retention keeps this task.",
    "unpinned": "Unpinned: retention applies again.",
    "completed": "Completed.",
}
#: Each pendingReason in words (the API's reason; the page shows the code beside it).
WHY: dict[str, str] = {
    PendingReason.SCHEDULED: "Scheduled: it starts at its runAt.",
    PendingReason.RETRY_BACKOFF: "Waiting out its retry policy's backoff before the next attempt.",
    PendingReason.CONCURRENCY_LIMIT: "Held back: a concurrency limit it is under is full.",
    PendingReason.QUEUED: "Queued: due, waiting for a free worker slot of its executor.",
    PendingReason.NO_WORKER: "No live worker consumes its executor's queue.",
    PendingReason.MANUAL: "A manual task: it waits until someone completes it.",
}
#: Seconds between refreshes of the list and of an active task.
LIST_REFRESH = 5
#: Log lines a task's page shows: the newest ones.
LOG_TAIL = 200
TASK_REFRESH = 2


def _list_args() -> dict[str, Any]:
    """The list's query as the API takes it: statuses joined by commas, empty fields dropped."""
    args: dict[str, Any] = {k: v for k, v in request.args.items() if v and k != "status"}
    statuses = [s for raw in request.args.getlist("status") for s in raw.split(",") if s]
    if statuses:
        args["status"] = ",".join(statuses)
    return args


def _load_tasks() -> dict[str, Any]:
    """Read the page the query asks for; a query the API would refuse is shown as its error."""
    raw = _list_args()
    context: dict[str, Any] = {
        "args": raw,
        "statuses": [s.value for s in Status],
        "types": [t.value for t in TaskType],
        "reasons": [r.value for r in PendingReason],
        "selected": set(raw.get("status", "").split(",")),
        "tasks": [],
        "pagination": None,
        "problem": None,
        "refresh": LIST_REFRESH,
        "query": query_string(raw),
    }
    try:
        query = ListTasksQuery().load(raw)
        page, after = position(query)
    except SchemaError as exc:
        context["problem"] = "; ".join(f"{field}: {_first(msgs)}" for field, msgs in _fields(exc))
        return context
    except ValidationError as exc:
        context["problem"] = exc.message
        return context
    limit = query["limit"]
    # The API's list, read the same way: same filters, scope, paging and pendingReason.
    found = operations.list_task_page(services(), current_principal(), query, page, after)
    tasks, more, total, exact, live = (
        found.tasks,
        found.more,
        found.total,
        found.exact,
        found.live,
    )
    base = {k: v for k, v in raw.items() if k not in ("page", "cursor")}
    links: dict[str, str | None] = {"first": None, "prev": None, "next": None, "older": None}
    if page is not None and page > 1:
        links["first"] = query_string(base)
        links["prev"] = query_string({**base, "page": page - 1})
    elif page is None:
        links["first"] = query_string(base)
    if more and page is not None:
        links["next"] = query_string({**base, "page": page + 1})
    if more:
        links["older"] = query_string(
            {**base, "cursor": encode_cursor(tasks[-1].created_at, tasks[-1].id)}
        )
    context.update(
        tasks=[(t, pending_reason(t, live=live)) for t in tasks],
        pagination=page_doc(page, limit, total, exact),
        links=links,
    )
    return context


def _fields(exc: SchemaError) -> list[tuple[str, Any]]:
    messages = exc.messages
    return list(messages.items()) if isinstance(messages, dict) else [("query", messages)]


def _first(messages: Any) -> str:
    return str(messages[0]) if isinstance(messages, list) and messages else str(messages)


@bp.route("/")
@bp.route("/tasks")
@requires("tasks:list")
def tasks() -> tuple[str, int]:
    """The task list, newest first, with the API's filters and paging."""
    context = _load_tasks()
    return render("tasks.html", 400 if context["problem"] else 200, **context)


@bp.route("/tasks/rows")
@requires("tasks:list")
def task_rows() -> tuple[str, int]:
    """The list's table alone: what the page fetches every few seconds."""
    return render("_task_rows.html", **_load_tasks())


def _task_context(task_id: str) -> dict[str, Any]:
    principal = current_principal()
    svc = services()
    live = operations.live_executors(svc)
    with svc.db.connection() as conn:
        task = operations.load_task(conn, task_id, principal)
        doc = operations.task_document(svc, conn, task, live)  # exactly what the API shows
        lines = store.log_tail(conn, task.id, LOG_TAIL)
    status = Status(task.status)
    return {
        "task": doc,
        "lines": lines,
        "active": not status.terminal,
        "refresh": TASK_REFRESH,
        "why": WHY.get(doc.get("pendingReason") or ""),
        "may": {
            "cancel": principal.can("tasks:cancel") and not status.terminal,
            "retry": principal.can("tasks:execute") and status in operations.RETRYABLE,
            "pin": principal.is_admin or principal.can("tasks:execute"),
            "complete": principal.can("tasks:complete")
            and task.type == TaskType.MANUAL.value
            and status == Status.PENDING,
        },
    }


@bp.route("/tasks/<task_id>")
@requires("tasks:read")
def task(task_id: str) -> tuple[str, int]:
    """One task: status, why it waits, input, output, error, attempts, progress, log tail."""
    notice = NOTICES.get(request.args.get("done", ""))
    return render("task.html", notice=notice, **_task_context(task_id))


@bp.route("/tasks/<task_id>/live")
@requires("tasks:read")
def task_live(task_id: str) -> tuple[str, int]:
    """The changing part of a task's page, fetched every few seconds while it is active."""
    return render("_task_live.html", **_task_context(task_id))


def _action_failed(task_id: str, error: TaskexecError) -> tuple[str, int]:
    """Show the task again with what went wrong, under the action's own status code."""
    context = _task_context(task_id)
    return render("task.html", status_for(error), problem=error.message, **context)


def _done(task_id: str, what: str) -> Response:
    return redirect(url_for("console.task", task_id=task_id, done=what), code=303)  # type: ignore[return-value]


@bp.route("/tasks/<task_id>/cancel", methods=["POST"])
@requires("tasks:cancel")
def cancel(task_id: str) -> Response | tuple[str, int]:
    """Cancel gracefully (the handler is asked to stop) or by force (interrupted at once)."""
    force = request.form.get("mode") == "force"
    reason = (request.form.get("reason") or "").strip()[:500] or "cancelled in the console"
    try:
        operations.cancel(operations.parse_task_id(task_id), current_principal(), reason, force)
    except TaskexecError as exc:
        if exc.code == "NOT_FOUND":
            raise
        return _action_failed(task_id, exc)
    return _done(task_id, "cancelled")


@bp.route("/tasks/<task_id>/retry", methods=["POST"])
@requires("tasks:execute")
def retry(task_id: str) -> Response | tuple[str, int]:
    """Replay a failed, timed-out or cancelled task as a new task (the API's retry)."""
    svc = services()
    principal = current_principal()
    with svc.db.connection() as conn:
        original = operations.load_task(conn, task_id, principal)
    try:
        row = operations.retry_row(svc, principal, original, {})
        new = submission.submit(svc, principal, [row])[0].task
    except TaskexecError as exc:
        return _action_failed(task_id, exc)
    return redirect(url_for("console.task", task_id=str(new.id)), code=303)  # type: ignore[return-value]


@bp.route("/tasks/<task_id>/pin", methods=["POST"])
@requires("tasks:execute", when=lambda: not current_principal().is_admin)
def pin(task_id: str) -> Response:
    """Pin or unpin (`pinned=false`) a task, as the API's pin routes."""
    pinned = request.form.get("pinned", "true") != "false"
    operations.pin(task_id, current_principal(), pinned)
    return _done(task_id, "pinned" if pinned else "unpinned")


@bp.route("/tasks/<task_id>/complete", methods=["POST"])
@requires("tasks:complete")
def complete(task_id: str) -> Response | tuple[str, int]:
    """Complete a pending manual task with the output typed into the form (JSON)."""
    try:
        output = parse_json(request.form.get("output", ""), "output")
        operations.complete_manual(task_id, current_principal(), output)
    except TaskexecError as exc:
        if exc.code == "NOT_FOUND":
            raise
        return _action_failed(task_id, exc)
    return _done(task_id, "completed")
