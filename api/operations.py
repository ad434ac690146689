"""What the views do to existing tasks: find one the caller may see, cancel it, complete it.

The blueprints (api/tasks.py, api/task_apis.py, api/task_logs.py) call these and never each
other, as flaskr's views share `get_post(id)`.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime
from typing import Any

from api.metrics import CANCELLED
from api.services import Services, services
from shared import store, task_rows
from shared.broker import BROKER_ERRORS
from shared.credentials import Principal
from shared.errors import Conflict, TaskAlreadyFinished, TaskexecError, TaskNotFound
from shared.pending import pending_reason
from shared.retention import Retention
from shared.status import PendingReason, Priority, Status, TaskType
from shared.task_document import task_json

#: A task in one of these may be replayed: it ended without doing its work.
RETRYABLE = frozenset({Status.FAILED, Status.TIMED_OUT, Status.CANCELLED})


def parse_task_id(raw: str) -> uuid.UUID:
    """Parse a task id; anything that is not one is simply not found."""
    try:
        return uuid.UUID(raw)
    except ValueError as exc:
        raise TaskNotFound(f"task {raw!r} not found") from exc


def owner_scope(principal: Principal) -> str | None:
    """Whose tasks the caller sees: everyone's for tasks:admin, else their own."""
    return None if principal.is_admin else principal.subject


def live_executors(svc: Services) -> frozenset[str] | None:
    """The executors some live worker consumes (heartbeats, cached); None if Redis is away."""
    try:
        return frozenset(svc.window.slots())
    except BROKER_ERRORS:
        return None


def queue_position(svc: Services, conn: store.Conn, task: store.Task) -> int | None:
    """A QUEUED task's approximate place: messages already in its queue, then the releaser's
    fair order among the ready tasks in Postgres (store.queue_position)."""
    try:
        depth = svc.broker.queue_depths([task.executor])[task.executor]
    except BROKER_ERRORS:
        return None
    if task.published_at is not None:
        return max(depth, 1)  # its message is among them: at most that many go first
    return depth + store.queue_position(conn, task)


def task_document(
    svc: Services, conn: store.Conn, task: store.Task, live: frozenset[str] | None
) -> dict[str, Any]:
    """A task as GET /api/v1/tasks/{id} shows it: attempts, retries, why it waits and where."""
    position = None
    if pending_reason(task, live=live) == PendingReason.QUEUED:
        position = queue_position(svc, conn, task)
    return task_json(
        task,
        store.get_attempts(conn, task.id),
        store.retries_of(conn, task.id),
        expires_at=expires_at(task),
        live=live,
        queue_position=position,
    )


@dataclasses.dataclass(frozen=True)
class TaskPage:
    """One page of the task list, as the API and the console show it."""

    tasks: list[store.Task]
    more: bool  # another page follows
    total: int
    exact: bool  # False: `total` is the planner's estimate past the exact-count cap
    live: frozenset[str] | None  # live_executors, for pendingReason


def list_task_page(
    svc: Services,
    principal: Principal,
    query: dict[str, Any],
    page: int | None,
    after: tuple[datetime, uuid.UUID] | None,
) -> TaskPage:
    """The tasks the caller may see that match the list's query, newest first, one page."""
    limit = query["limit"]
    live = live_executors(svc)
    flt = store.TaskFilter(
        owner=owner_scope(principal),
        statuses=query.get("status", ()),
        type=query.get("type"),
        workflow_instance_id=query.get("workflowInstanceId"),
        task_definition_id=query.get("taskDefinitionId"),
        schedule_id=query.get("scheduleId"),
        created_after=query.get("createdAfter"),
        created_before=query.get("createdBefore"),
        pending_reasons=query.get("pendingReason", ()),
        live_executors=None if live is None else tuple(sorted(live)),
    )
    with svc.db.connection() as conn:
        # One row more than the page says whether another page follows (for nextCursor).
        tasks = store.list_tasks(
            conn, flt, limit=limit + 1, offset=((page or 1) - 1) * limit, after=after
        )
        total, exact = store.count_tasks(conn, flt, svc.settings.list_exact_count_max)
    return TaskPage(tasks[:limit], len(tasks) > limit, total, exact, live)


def load_task(conn: store.Conn, raw_id: str, principal: Principal) -> store.Task:
    """Return the task `raw_id` names if the caller may see it; 404 otherwise."""
    task = store.get_task(conn, parse_task_id(raw_id), owner_scope(principal))
    if task is None:
        raise TaskNotFound(f"task {raw_id} not found")
    return task


def expires_at(task: store.Task) -> datetime | None:
    """When retention may delete `task` (GET's expiresAt); None while active, pinned or kept."""
    if task.end_time is None or task.pinned:
        return None  # spares the definition look-up for most reads
    svc = services()
    try:
        override = svc.definitions.get(task.task_definition_id).retention
    except TaskexecError:
        return None  # its definition is gone: no purge class names it, so it is kept
    retention = Retention.from_settings(svc.settings)
    return retention.expires_at(task.status, task.end_time, task.pinned, override)


def pin(raw_id: str, principal: Principal, pinned: bool) -> store.Task:
    """Pin (keep whatever its retention) or unpin a task the caller may see; 404 otherwise."""
    with services().db.connection() as conn:
        task = store.set_pinned(conn, parse_task_id(raw_id), owner_scope(principal), pinned)
    if task is None:
        raise TaskNotFound(f"task {raw_id} not found")
    return task


def cancel(
    tid: uuid.UUID, principal: Principal, reason: str | None, force: bool, surface: str = "tasks"
) -> store.Task:
    """Cancel a task and stop its running attempt; 404 unknown, 409 already finished.

    `surface` (tasks or task_apis) labels the cancel in taskexec_tasks_cancelled_total.
    """
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
    CANCELLED.labels(surface).inc()
    if outcome.previous_status == Status.RUNNING.value and force:
        try:
            # Interrupt the handler (Celery's soft time-limit signal) rather than kill its
            # child: the slot is free at once instead of after the pool replaces the child.
            # The attempt's watcher kills the child if the handler ignores the interrupt.
            svc.broker.revoke(str(tid), terminate=True, signal="SIGUSR1")
        except BROKER_ERRORS:
            pass  # the attempt's own watcher sees the forced cancel and interrupts itself
    return outcome.task


def complete_manual(
    raw_id: str, principal: Principal, output: Any
) -> tuple[store.Task, list[store.Attempt]]:
    """Complete a PENDING manual task with `output`, checked against its version's outputSchema.

    Returns the completed task and its attempts. 404 unknown task, 409 not manual or no longer
    PENDING, 422 output failing the schema.
    """
    svc = services()
    with svc.db.connection() as conn:
        task = load_task(conn, raw_id, principal)
        if task.type != TaskType.MANUAL.value:
            raise Conflict(
                "only MANUAL tasks are completed through the API",
                {"field": "type", "issue": f"task is {task.type}", "type": task.type},
            )
        if task.status != Status.PENDING.value:
            raise TaskAlreadyFinished(f"task {raw_id} is {task.status}", {"status": task.status})
        version = store.definition_version_document(
            conn, task.task_definition_id, task.definition_version
        )
    schema = version["output_schema"] if version else None
    if schema is None:  # recorded before version history existed: the current definition
        schema = svc.definitions.get(task.task_definition_id).output_schema
    error = task_rows.output_errors(task.task_definition_id, schema, output)
    if error is not None:
        raise error
    with svc.db.connection() as conn:
        done = store.complete_manual_task(conn, task.id, output, owner_scope(principal))
        if done is None:  # cancelled (or completed) since we looked
            current = store.get_task(conn, task.id)
            status = current.status if current else None
            raise TaskAlreadyFinished(f"task {raw_id} is {status}", {"status": status})
        attempts = store.get_attempts(conn, task.id)
    return done, attempts


def retry_row(
    svc: Services, principal: Principal, original: store.Task, changes: dict[str, Any]
) -> store.NewTask:
    """Build the replay of `original`: same definition, workflow instance and owner.

    `changes` may give another input, executionConfig or priority; otherwise the original's
    are kept. The input is checked against the definition as it is now. 409 when the original
    is not FAILED, TIMED_OUT or CANCELLED; 404 when its definition is gone; 422 bad input.
    """
    if original.status not in RETRYABLE:
        raise Conflict(
            f"task {original.id} is {original.status}; only FAILED, TIMED_OUT or CANCELLED"
            " tasks are retried",
            {"status": original.status},
        )
    definition = svc.definitions.get(original.task_definition_id)
    config = changes.get("executionConfig") or {
        "timeout": original.timeout_ms,
        "retryPolicy": original.retry_policy,
    }
    if "executionConfig" not in changes and original.concurrency_key and original.key_limit:
        # The replay stays under the original's per-key limit (docs/lifecycle.md).
        config["concurrency"] = {"key": original.concurrency_key, "limit": original.key_limit}
    body = {
        "workflowInstanceId": original.workflow_instance_id,
        "input": changes.get("input", original.input),
        "priority": changes.get("priority") or Priority.from_rank(original.priority).value,
        "executionConfig": config,
    }
    row = task_rows.new_task(principal, body, definition)
    # An admin replaying someone's task replays it for them: the retry is theirs to see.
    return dataclasses.replace(row, owner=original.owner, retry_of=original.id)
