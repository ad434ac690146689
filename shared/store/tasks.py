"""The task ledger: submissions, reads, and the API's writes (cancel, complete)."""

from __future__ import annotations

import uuid
from collections.abc import Container, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2.extras
from psycopg2.extras import Json

from shared.concurrency import is_limited
from shared.status import ACTIVE, ALLOWED_FROM, HELD, Status, TaskType
from shared.store._rows import Conn, one, statuses

_ACTIVE = statuses(ACTIVE)
_CANCEL_FROM = statuses(ALLOWED_FROM[Status.CANCELLED])
# Completed by hand from where no attempt holds the task (a manual task is never claimed).
_MANUAL_COMPLETE_FROM = statuses(ALLOWED_FROM[Status.COMPLETED] - HELD)


@dataclass(frozen=True)
class Task:
    """One row of the ledger."""

    id: uuid.UUID
    owner: str
    task_definition_id: str
    definition_version: str
    workflow_instance_id: str | None
    type: str
    status: Status
    priority: int
    executor: str
    input: Any
    output: Any
    error: dict[str, Any] | None
    timeout_ms: int
    retry_policy: dict[str, Any]
    attempts: int
    worker_lost_count: int
    start_time: datetime | None
    end_time: datetime | None
    worker_host: str | None
    worker_pid: int | None
    lease_expires_at: datetime | None
    next_attempt_at: datetime | None
    published_at: datetime | None
    deadline_at: datetime | None
    cancel_requested_at: datetime | None
    cancel_reason: str | None
    cancelled_by: str | None
    cancel_force: bool
    progress: dict[str, Any] | None
    source: str
    created_at: datetime
    updated_at: datetime
    run_at: datetime | None = None  # when the client asked it to start (runAt/delay), if it did
    schedule_id: uuid.UUID | None = None  # the schedule that fired (or triggered) it
    scheduled_for: datetime | None = None  # its slot; None when triggered by hand
    pinned: bool = False  # kept whatever its retention (POST /api/v1/tasks/{id}/pin)
    retry_of: uuid.UUID | None = None  # the task this one replays (POST …/{id}/retry)
    # The concurrency limits it was submitted under (None: none of that kind), and the full
    # limit holding it back while it waits (`limits.py` names them), if one does.
    definition_limit: int | None = None
    concurrency_key: str | None = None
    key_limit: int | None = None
    owner_limit: int | None = None
    held_on: str | None = None

    @property
    def limited(self) -> bool:
        """Say whether any concurrency limit applies to it."""
        return is_limited(self.definition_limit, self.concurrency_key, self.owner_limit)


@dataclass(frozen=True)
class NewTask:
    """What a submission writes."""

    id: uuid.UUID
    owner: str
    task_definition_id: str
    definition_version: str
    workflow_instance_id: str | None
    type: str
    priority: int
    executor: str
    input: Any
    timeout_ms: int
    retry_policy: dict[str, Any]
    deadline_at: datetime | None = None
    source: str = "tasks"
    published: bool = True  # the caller publishes right after commit (optimistic outbox)
    run_at: datetime | None = None  # a delayed task: it waits here until then
    retry_of: uuid.UUID | None = None  # a replay: the failed (or cancelled) task it repeats
    definition_limit: int | None = None  # the definition's concurrencyLimit
    concurrency_key: str | None = None  # executionConfig.concurrency.key, scoped to the owner
    key_limit: int | None = None  # executionConfig.concurrency.limit
    owner_limit: int | None = None  # the principal's maxRunning

    @property
    def limited(self) -> bool:
        """Say whether any concurrency limit applies to it."""
        return is_limited(self.definition_limit, self.concurrency_key, self.owner_limit)


#: The sweeper LISTENs on it to learn that a delayed task may be due sooner than it thought.
RELEASE_CHANNEL = "taskexec_release"

#: A waiting task ready to be sent (due, held by no limit, no message yet): the rows of the
#: partial index tasks_ready, read by the releaser and by the submit path below. `{t}.` is
#: the alias of the tasks row it applies to.
READY = (
    "{t}.published_at IS NULL AND {t}.next_attempt_at IS NULL AND {t}.held_on IS NULL"
    " AND {t}.type <> 'MANUAL' AND {t}.status IN ('PENDING', 'RETRYING')"
)
# (column, the type its VALUES entry is cast to: the first row types the VALUES list).
TASK_COLUMNS = (
    ("id", "uuid"),
    ("owner", "text"),
    ("task_definition_id", "text"),
    ("definition_version", "text"),
    ("workflow_instance_id", "text"),
    ("type", "text"),
    ("status", "text"),
    ("priority", "smallint"),
    ("executor", "text"),
    ("input", "jsonb"),
    ("timeout_ms", "integer"),
    ("retry_policy", "jsonb"),
    ("deadline_at", "timestamptz"),
    ("source", "text"),
    ("retry_of", "uuid"),
    ("definition_limit", "integer"),
    ("concurrency_key", "text"),
    ("key_limit", "integer"),
    ("owner_limit", "integer"),
)
TASK_NAMES = ", ".join(c for c, _ in TASK_COLUMNS)
# A plain INSERT ... VALUES of a row published as its caller says (a schedule's slot).
_INSERT_COLUMNS = f"{TASK_NAMES}, published_at"
_INSERT_TEMPLATE = "(" + ", ".join(["%s"] * len(TASK_COLUMNS)) + ", CASE WHEN %s THEN now() END)"
TASK_PICKED = ", ".join(f"v.{c}" for c, _ in TASK_COLUMNS)
_TEMPLATE = "(" + ", ".join(f"%s::{kind}" for _, kind in TASK_COLUMNS) + ", %s::boolean{more})"
# A row goes out at once (stamped published, the caller publishes after commit) only if the
# caller says so (not manual, under no limit, its executor's window has room) and its owner has
# nothing ready waiting in that executor, which would otherwise be overtaken: then it waits
# for the releaser like the rest of the owner's backlog. An index probe of tasks_ready, which
# is empty while the system keeps up.
PUBLISH_IF_FIRST = (
    f"NOT EXISTS (SELECT 1 FROM tasks w WHERE w.executor = v.executor AND w.owner = v.owner"
    f" AND {READY.format(t='w')})"
)
# What the database decides of a new row; the rest is what the insert sent, or a column's
# default (`_as_stored`). Reading back all 43 columns (the input decoded from jsonb again,
# every timestamp parsed) cost more CPU than the INSERT's own round trip.
_DECIDED = "id, created_at, updated_at, published_at, run_at, next_attempt_at"
_INSERT = (
    f"INSERT INTO tasks ({TASK_NAMES}, published_at) SELECT {TASK_PICKED},"
    f" CASE WHEN v.publish AND {PUBLISH_IF_FIRST} THEN now() END"
    f" FROM (VALUES %s) AS v({TASK_NAMES}, publish) RETURNING {_DECIDED}"
)
# A batch with a delayed row: the row waits (next_attempt_at, no published_at) unless its time
# has already come by the database's clock, which the claim and the sweeper also go by; the
# NOTIFY (sent at commit, in the same round trip) wakes a sweeper to release it on time.
_DELAYED_INSERT = (
    f"NOTIFY {RELEASE_CHANNEL}; INSERT INTO tasks ({TASK_NAMES}, published_at, run_at,"
    f" next_attempt_at) SELECT {TASK_PICKED}, CASE WHEN v.publish"
    f" AND COALESCE(v.run_at <= now(), true) AND {PUBLISH_IF_FIRST} THEN now() END,"
    f" v.run_at, v.run_at FROM (VALUES %s) AS v({TASK_NAMES}, publish, run_at)"
    f" RETURNING {_DECIDED}"
)


def insert_tasks(
    conn: Conn, tasks: Sequence[NewTask], publishable: Container[uuid.UUID] | None = None
) -> list[Task]:
    """Insert PENDING tasks in one statement; return them as stored, in the order given.

    A task marked `published` is stamped as if its message were already sent: the caller
    publishes right after commit, and if that fails (or the process dies first) the sweeper
    republishes it once `republish_after` has passed. This saves a write per submission.
    That fast path is taken only while the executor's dispatch window has room (the row's id
    is in `publishable`; None: every row), the task is under no concurrency limit and its
    owner has nothing ready waiting there; otherwise the row waits, unpublished, for the releaser,
    woken by a NOTIFY. A delayed task (`run_at`) is stored due at `run_at` and unpublished,
    so no message exists until the sweeper releases it; only a batch holding one pays for
    the NOTIFY up front.
    """
    if not tasks:
        return []
    delayed = any(t.run_at is not None for t in tasks)
    with conn.cursor() as cur:
        rows = [
            task_values(t, t.published and (publishable is None or t.id in publishable))
            for t in tasks
        ]
        # Rows sure to wait for the releaser (no room, a limit) send its wake-up in the same
        # round trip; the hot path (everything published) sends none.
        waits = any(t.published and not row[-1] for t, row in zip(tasks, rows, strict=True))
        if delayed:
            rows = [(*row, t.run_at) for row, t in zip(rows, tasks, strict=True)]
            sql, template = _DELAYED_INSERT, _TEMPLATE.format(more=", %s::timestamptz")
        else:
            sql = f"NOTIFY {RELEASE_CHANNEL}; {_INSERT}" if waits else _INSERT
            template = _TEMPLATE.format(more="")
        decided = psycopg2.extras.execute_values(
            cur, sql, rows, template=template, page_size=len(rows), fetch=True
        )
        by_id = {row[0]: row for row in decided}
        stored = [_as_stored(t, by_id[t.id]) for t in tasks]
        if not delayed and not waits and any(_waits(t) for t in stored):
            # A row the INSERT kept back (its owner had work waiting): wake the releaser,
            # which may have gone idle meanwhile (after the commit on an autocommit
            # connection; at commit in a transaction).
            cur.execute(f"NOTIFY {RELEASE_CHANNEL}")
        return stored


def _as_stored(new: NewTask, decided: Sequence[Any]) -> Task:
    """The row `new` became: what was sent, the columns' defaults and what `_DECIDED` read.

    `input` and `retry_policy` are the values sent, equal to what jsonb gives back (the test
    `test_an_inserted_task_is_what_a_read_returns` compares every field with a SELECT).
    """
    _, created_at, updated_at, published_at, run_at, next_attempt_at = decided
    return Task(
        id=new.id,
        owner=new.owner,
        task_definition_id=new.task_definition_id,
        definition_version=new.definition_version,
        workflow_instance_id=new.workflow_instance_id,
        type=new.type,
        status=Status.PENDING,
        priority=new.priority,
        executor=new.executor,
        input=new.input,
        output=None,
        error=None,
        timeout_ms=new.timeout_ms,
        retry_policy=new.retry_policy,
        attempts=0,
        worker_lost_count=0,
        start_time=None,
        end_time=None,
        worker_host=None,
        worker_pid=None,
        lease_expires_at=None,
        next_attempt_at=next_attempt_at,
        published_at=published_at,
        deadline_at=new.deadline_at,
        cancel_requested_at=None,
        cancel_reason=None,
        cancelled_by=None,
        cancel_force=False,
        progress=None,
        source=new.source,
        created_at=created_at,
        updated_at=updated_at,
        run_at=run_at,
        retry_of=new.retry_of,
        definition_limit=new.definition_limit,
        concurrency_key=new.concurrency_key,
        key_limit=new.key_limit,
        owner_limit=new.owner_limit,
    )


def _waits(task: Task) -> bool:
    """Whether a task just stored waits for the releaser (not for a time, nor a person)."""
    return task.published_at is None and task.type != TaskType.MANUAL.value


def task_values(t: NewTask, publish: bool | None = None) -> tuple[Any, ...]:
    """A row's parameters for _TEMPLATE (and _INSERT_TEMPLATE); `publish` defaults to its own."""
    publish = t.published if publish is None else publish
    return (
        t.id,
        t.owner,
        t.task_definition_id,
        t.definition_version,
        t.workflow_instance_id,
        t.type,
        Status.PENDING.value,
        t.priority,
        t.executor,
        Json(t.input),
        t.timeout_ms,
        Json(t.retry_policy),
        t.deadline_at,
        t.source,
        t.retry_of,
        t.definition_limit,
        t.concurrency_key,
        t.key_limit,
        t.owner_limit,
        publish and not t.limited,
    )


def get_task(conn: Conn, task_id: uuid.UUID, owner: str | None = None) -> Task | None:
    """Return a task; with `owner`, only if that principal owns it."""
    with conn.cursor() as cur:
        if owner is None:
            cur.execute("SELECT * FROM tasks WHERE id = %s", (task_id,))
        else:
            cur.execute("SELECT * FROM tasks WHERE id = %s AND owner = %s", (task_id, owner))
        return one(cur, Task)


def anchor_deadline(conn: Conn, task_id: uuid.UUID, seconds: int) -> datetime | None:
    """Set an active task's deadline to `seconds` after its stored creation time (DB clock).

    The Task API inserts a deadline from the API host's clock; this makes "since submission"
    exact against the `created_at` it reports. A delayed task's time counts from its `run_at`
    (when it was asked to start, if later): its wait is not time it was given to finish.
    None if the task has already finished.
    """
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE tasks SET deadline_at = GREATEST(created_at, run_at)"
            " + make_interval(secs => %s)"
            " WHERE id = %s AND status = ANY(%s) RETURNING deadline_at",
            (seconds, task_id, _ACTIVE),
        )
        row = cur.fetchone()
        return row[0] if row else None


@dataclass(frozen=True)
class CancelOutcome:
    """The result of a cancel request: the task after it, and its status before."""

    task: Task
    previous_status: Status
    cancelled: bool


def cancel_task(
    conn: Conn,
    task_id: uuid.UUID,
    *,
    owner: str | None,
    reason: str | None,
    by: str,
    force: bool,
) -> CancelOutcome | None:
    """Record a cancel and move an active task to CANCELLED; None if no such (visible) task."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT status FROM tasks WHERE id = %s AND (%s::text IS NULL OR owner = %s)"
            " FOR UPDATE",
            (task_id, owner, owner),
        )
        row = cur.fetchone()
        if row is None:
            return None
        previous = Status(row[0])
        cur.execute(
            """
            UPDATE tasks SET status = 'CANCELLED', cancel_requested_at = now(),
                cancel_reason = %(reason)s, cancelled_by = %(by)s, cancel_force = %(force)s,
                end_time = now(), next_attempt_at = NULL, updated_at = now()
            WHERE id = %(id)s AND status = ANY(%(from)s)
            RETURNING *
            """,
            {"id": task_id, "reason": reason, "by": by, "force": force, "from": _CANCEL_FROM},
        )
        updated = one(cur, Task)
        if updated is not None:
            if previous == Status.RUNNING and updated.limited:
                # Its limits have room: the releaser may send the next held-back task.
                from shared.store.limits import wake_releaser  # limits reads this module

                wake_releaser(cur, task_id)
            return CancelOutcome(updated, previous, cancelled=True)
        cur.execute("SELECT * FROM tasks WHERE id = %s", (task_id,))
        current = one(cur, Task)
        assert current is not None  # the row is locked FOR UPDATE above
        return CancelOutcome(current, previous, cancelled=False)


def retries_of(conn: Conn, task_id: uuid.UUID) -> list[uuid.UUID]:
    """List the ids of the tasks that replay `task_id`, oldest first."""
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM tasks WHERE retry_of = %s ORDER BY created_at, id", (task_id,))
        return [row[0] for row in cur.fetchall()]


def task_ids_of_workflow(
    conn: Conn, workflow_instance_id: str, owner: str | None
) -> list[uuid.UUID]:
    """List the ids of a workflow's tasks (visible to `owner` when given)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id FROM tasks WHERE workflow_instance_id = %s"
            " AND (%s::text IS NULL OR owner = %s) ORDER BY created_at",
            (workflow_instance_id, owner, owner),
        )
        return [row[0] for row in cur.fetchall()]


def complete_manual_task(
    conn: Conn, task_id: uuid.UUID, output: Any, owner: str | None
) -> Task | None:
    """Complete a PENDING manual task with `output`; None if it is not one (or not visible)."""
    with conn.cursor() as cur:
        cur.execute(
            """
            UPDATE tasks SET status = 'COMPLETED', output = %s, start_time = COALESCE(start_time,
                created_at), end_time = now(), updated_at = now()
            WHERE id = %s AND type = 'MANUAL' AND status = ANY(%s)
              AND (%s::text IS NULL OR owner = %s)
            RETURNING *
            """,
            (Json(output), task_id, _MANUAL_COMPLETE_FROM, owner, owner),
        )
        return one(cur, Task)
