"""All SQL of the service: functions that take a connection and return dataclasses."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import psycopg2.extensions
import psycopg2.extras
from psycopg2.extras import Json

from shared.definitions import TaskDefinition
from shared.status import ACTIVE, CLAIMABLE, Status

Conn = psycopg2.extensions.connection
_MIGRATION_LOCK = 0x7461736B  # "task": one advisory lock id for every migrating process

_ACTIVE = [s.value for s in ACTIVE]
_CLAIMABLE = [s.value for s in CLAIMABLE]


def _cursor(conn: Conn) -> psycopg2.extras.RealDictCursor:
    return conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)


def _one(cur: Any) -> dict[str, Any]:
    """Fetch the one row a query always returns (an aggregate)."""
    row = cur.fetchone()
    assert row is not None
    return dict(row)


def _build(cls: Any, row: dict[str, Any] | None) -> Any:
    if row is None:
        return None
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in row.items() if k in names})


def _build_tuple(cls: Any, cur: Any) -> Any:
    """Build `cls` from the next row of a plain (tuple) cursor; None when there is none."""
    row = cur.fetchone()
    if row is None:
        return None
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = frozenset(f.name for f in fields(cls))
    columns = zip(cur.description, row, strict=True)
    return cls(**{d.name: v for d, v in columns if d.name in names})


_FIELDS: dict[Any, frozenset[str]] = {}


# ---------------------------------------------------------------- migrations


def apply_migrations(conn: Conn, migrations: Sequence[tuple[int, str, str]]) -> list[str]:
    """Apply the (version, name, sql) migrations not yet recorded; return the names applied.

    A session-level advisory lock makes concurrent callers wait for each other, so the
    second one finds everything applied.
    """
    applied: list[str] = []
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
    try:
        conn.autocommit = False
        with conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur.execute("SELECT version FROM schema_migrations")
            done = {row[0] for row in cur.fetchall()}
        conn.commit()
        for version, name, sql in sorted(migrations):
            if version in done:
                continue
            with conn.cursor() as cur:
                cur.execute(sql)
                cur.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name)
                )
            conn.commit()
            applied.append(name)
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))
        conn.autocommit = False
    return applied


def applied_migrations(conn: Conn) -> list[int]:
    """List the applied migration versions (empty before the first)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
        row = cur.fetchone()
        if not row or not row[0]:
            return []
        cur.execute("SELECT version FROM schema_migrations ORDER BY version")
        return [r[0] for r in cur.fetchall()]


def ping(conn: Conn) -> None:
    """Run a trivial query (readiness)."""
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        cur.fetchone()


# ---------------------------------------------------------------- definitions


@dataclass(frozen=True)
class DefinitionRow:
    """A published task definition, as the API serves it."""

    id: str
    version: str
    name: str
    description: str
    type: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any]
    timeout_ms: int
    retry_policy: dict[str, Any]
    executor: str
    security_context: dict[str, Any]
    resource_requirements: dict[str, Any]
    default_config: dict[str, Any]
    created_at: datetime
    updated_at: datetime


def definition_document(definition: TaskDefinition) -> dict[str, Any]:
    """The stored form of a definition (its row's columns)."""
    return {
        "id": definition.id,
        "version": definition.version,
        "name": definition.name,
        "description": definition.description,
        "type": definition.type.value,
        "input_schema": definition.input_schema,
        "output_schema": definition.output_schema,
        "timeout_ms": definition.timeout_ms,
        "retry_policy": definition.retry_policy.to_json(),
        "executor": definition.executor,
        "security_context": definition.security_context,
        "resource_requirements": definition.resource_requirements,
        "default_config": definition.default_config,
    }


_RELEASE = re.compile(r"^\d+(?:\.\d+)*")


def _older(version: str, than: str) -> bool:
    """Say whether release `version` precedes `than` (dotted numbers; otherwise never)."""
    mine, theirs = _RELEASE.match(version.strip()), _RELEASE.match(than.strip())
    if mine is None or theirs is None:
        return False
    return tuple(map(int, mine.group().split("."))) < tuple(map(int, theirs.group().split(".")))


def publish_definitions(conn: Conn, definitions: Iterable[TaskDefinition]) -> None:
    """Upsert definitions; every version is kept in the history table.

    The served row only moves forward: a worker still running an older release (say,
    restarted mid-deploy) records its version in the history but does not roll back the
    definition the API serves.
    """
    with conn.cursor() as cur:
        for definition in definitions:
            doc = definition_document(definition)
            cur.execute(
                "INSERT INTO task_definition_versions (id, version, document) VALUES (%s, %s, %s)"
                " ON CONFLICT (id, version) DO UPDATE SET document = EXCLUDED.document",
                (doc["id"], doc["version"], Json(doc)),
            )
            cur.execute("SELECT version FROM task_definitions WHERE id = %s", (doc["id"],))
            served = cur.fetchone()
            if served is not None and _older(doc["version"], served[0]):
                continue
            cur.execute(
                """
                INSERT INTO task_definitions (id, version, name, description, type, input_schema,
                    output_schema, timeout_ms, retry_policy, executor, security_context,
                    resource_requirements, default_config)
                VALUES (%(id)s, %(version)s, %(name)s, %(description)s, %(type)s, %(input_schema)s,
                    %(output_schema)s, %(timeout_ms)s, %(retry_policy)s, %(executor)s,
                    %(security_context)s, %(resource_requirements)s, %(default_config)s)
                ON CONFLICT (id) DO UPDATE SET
                    version = EXCLUDED.version, name = EXCLUDED.name,
                    description = EXCLUDED.description, type = EXCLUDED.type,
                    input_schema = EXCLUDED.input_schema, output_schema = EXCLUDED.output_schema,
                    timeout_ms = EXCLUDED.timeout_ms, retry_policy = EXCLUDED.retry_policy,
                    executor = EXCLUDED.executor, security_context = EXCLUDED.security_context,
                    resource_requirements = EXCLUDED.resource_requirements,
                    default_config = EXCLUDED.default_config, updated_at = now()
                WHERE (task_definitions.version, task_definitions.input_schema,
                       task_definitions.output_schema, task_definitions.name,
                       task_definitions.description, task_definitions.timeout_ms,
                       task_definitions.retry_policy, task_definitions.executor,
                       task_definitions.resource_requirements, task_definitions.default_config,
                       task_definitions.type, task_definitions.security_context)
                   IS DISTINCT FROM
                      (EXCLUDED.version, EXCLUDED.input_schema, EXCLUDED.output_schema,
                       EXCLUDED.name, EXCLUDED.description, EXCLUDED.timeout_ms,
                       EXCLUDED.retry_policy, EXCLUDED.executor,
                       EXCLUDED.resource_requirements, EXCLUDED.default_config,
                       EXCLUDED.type, EXCLUDED.security_context)
                """,
                {
                    **doc,
                    **{
                        k: Json(doc[k])
                        for k in (
                            "input_schema",
                            "output_schema",
                            "retry_policy",
                            "security_context",
                            "resource_requirements",
                            "default_config",
                        )
                    },
                },
            )


def get_definition(conn: Conn, definition_id: str) -> DefinitionRow | None:
    """Return the newest published version of a definition."""
    with _cursor(conn) as cur:
        cur.execute("SELECT * FROM task_definitions WHERE id = %s", (definition_id,))
        return _build(DefinitionRow, cur.fetchone())


def definition_versions(conn: Conn, definition_id: str) -> list[str]:
    """List every version ever published of a definition, oldest first."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT version FROM task_definition_versions WHERE id = %s"
            " ORDER BY published_at, version",
            (definition_id,),
        )
        return [row[0] for row in cur.fetchall()]


def definition_version_document(
    conn: Conn, definition_id: str, version: str
) -> dict[str, Any] | None:
    """Return one published version of a definition (its stored columns), if recorded."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT document FROM task_definition_versions WHERE id = %s AND version = %s",
            (definition_id, version),
        )
        row = cur.fetchone()
        return dict(row[0]) if row else None


def list_definitions(
    conn: Conn, *, type_: str | None, search: str | None, limit: int, offset: int
) -> tuple[list[DefinitionRow], int]:
    """Page through definitions by id; `search` matches name or description, any case."""
    where: list[str] = ["TRUE"]
    params: list[Any] = []
    if type_:
        where.append("type = %s")
        params.append(type_)
    if search:
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where.append("(name ILIKE %s OR description ILIKE %s)")
        params += [pattern, pattern]
    clause = " AND ".join(where)
    with _cursor(conn) as cur:
        cur.execute(f"SELECT count(*) AS n FROM task_definitions WHERE {clause}", params)
        total = _one(cur)["n"]
        cur.execute(
            f"SELECT * FROM task_definitions WHERE {clause} ORDER BY id LIMIT %s OFFSET %s",
            [*params, limit, offset],
        )
        return [_build(DefinitionRow, row) for row in cur.fetchall()], total


# ---------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Task:
    """One row of the ledger."""

    id: uuid.UUID
    owner: str
    task_definition_id: str
    definition_version: str
    workflow_instance_id: str | None
    type: str
    status: str
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


@dataclass(frozen=True)
class Attempt:
    """One execution attempt of a task."""

    task_id: uuid.UUID
    attempt: int
    status: str
    started_at: datetime
    ended_at: datetime | None
    worker_host: str | None
    worker_pid: int | None
    error: dict[str, Any] | None


_INSERT_COLUMNS = (
    "id, owner, task_definition_id, definition_version, workflow_instance_id, type, status,"
    " priority, executor, input, timeout_ms, retry_policy, deadline_at, source, published_at"
)
_INSERT_TEMPLATE = "(" + ", ".join(["%s"] * 14) + ", CASE WHEN %s THEN now() END)"


def insert_tasks(conn: Conn, tasks: Sequence[NewTask]) -> list[Task]:
    """Insert PENDING tasks in one statement; return them as stored (in the given order).

    A task marked `published` is stamped as if its message were already sent: the caller
    publishes right after commit, and if that fails (or the process dies first) the sweeper
    republishes it once `republish_after` has passed. This saves a write per submission.
    """
    if not tasks:
        return []
    rows = [
        (
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
            t.published,
        )
        for t in tasks
    ]
    with _cursor(conn) as cur:
        result = psycopg2.extras.execute_values(
            cur,
            f"INSERT INTO tasks ({_INSERT_COLUMNS}) VALUES %s RETURNING *",
            rows,
            template=_INSERT_TEMPLATE,
            page_size=max(len(rows), 1),
            fetch=True,
        )
    return [_build(Task, row) for row in result]


def get_task(conn: Conn, task_id: uuid.UUID, owner: str | None = None) -> Task | None:
    """Return a task; with `owner`, only if that principal owns it."""
    with _cursor(conn) as cur:
        if owner is None:
            cur.execute("SELECT * FROM tasks WHERE id = %s", (task_id,))
        else:
            cur.execute("SELECT * FROM tasks WHERE id = %s AND owner = %s", (task_id, owner))
        return _build(Task, cur.fetchone())


def get_attempts(conn: Conn, task_id: uuid.UUID) -> list[Attempt]:
    """Return a task's attempts, first to last."""
    with _cursor(conn) as cur:
        cur.execute("SELECT * FROM task_attempts WHERE task_id = %s ORDER BY attempt", (task_id,))
        return [_build(Attempt, row) for row in cur.fetchall()]


def anchor_deadline(conn: Conn, task_id: uuid.UUID, seconds: int) -> datetime | None:
    """Set an active task's deadline to `seconds` after its stored creation time (DB clock).

    The Task API inserts a deadline from the API host's clock; this makes "since submission"
    exact against the `created_at` it reports. None if the task has already finished.
    """
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE tasks SET deadline_at = created_at + make_interval(secs => %s)"
            " WHERE id = %s AND status = ANY(%s) RETURNING deadline_at",
            (seconds, task_id, _ACTIVE),
        )
        row = cur.fetchone()
        return row[0] if row else None


@dataclass(frozen=True)
class TaskFilter:
    """The listing filters; None means no filter."""

    owner: str | None = None
    statuses: tuple[str, ...] = ()
    type: str | None = None
    workflow_instance_id: str | None = None
    task_definition_id: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


def _task_where(flt: TaskFilter) -> tuple[str, list[Any]]:
    where: list[str] = ["TRUE"]
    params: list[Any] = []
    if flt.owner is not None:
        where.append("owner = %s")
        params.append(flt.owner)
    if len(flt.statuses) == 1:
        # Plain equality lets the planner read (…, status, created_at) indexes in order.
        where.append("status = %s")
        params.append(flt.statuses[0])
    elif flt.statuses:
        where.append("status = ANY(%s)")
        params.append(list(flt.statuses))
    for column, value in (
        ("type", flt.type),
        ("workflow_instance_id", flt.workflow_instance_id),
        ("task_definition_id", flt.task_definition_id),
    ):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if flt.created_after is not None:
        where.append("created_at >= %s")
        params.append(flt.created_after)
    if flt.created_before is not None:
        where.append("created_at < %s")
        params.append(flt.created_before)
    return " AND ".join(where), params


def list_tasks(
    conn: Conn,
    flt: TaskFilter,
    *,
    limit: int,
    offset: int = 0,
    after: tuple[datetime, uuid.UUID] | None = None,
) -> list[Task]:
    """Page through tasks newest first, by offset or after a (created_at, id) cursor.

    The page's ids are found first in the listing indexes alone (index-only scans), and
    only those rows are read in full, so a deep offset skips index entries, not table rows.
    """
    clause, params = _task_where(flt)
    if after is not None:
        clause += " AND (created_at, id) < (%s, %s)"
        params += [after[0], after[1]]
        offset = 0
    with _cursor(conn) as cur:
        cur.execute(
            f"""
            SELECT t.* FROM tasks t
            JOIN (SELECT id, created_at FROM tasks WHERE {clause}
                  ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s) page USING (id)
            ORDER BY page.created_at DESC, page.id DESC
            """,
            [*params, limit, offset],
        )
        return [_build(Task, row) for row in cur.fetchall()]


def count_tasks(conn: Conn, flt: TaskFilter, exact_max: int = 0) -> tuple[int, bool]:
    """Count the tasks a filter matches; return (count, exact).

    With `exact_max` > 0 at most `exact_max + 1` rows are counted; a larger result is the
    planner's estimate (never below `exact_max + 1`), because an exact count of a large
    match walks every matching index entry. 0 always counts exactly.
    """
    clause, params = _task_where(flt)
    with conn.cursor() as cur:
        if exact_max <= 0:
            cur.execute(f"SELECT count(*) FROM tasks WHERE {clause}", params)
            return int(_first(cur)), True
        cur.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM tasks WHERE {clause} LIMIT %s) capped",
            [*params, exact_max + 1],
        )
        counted = int(_first(cur))
        if counted <= exact_max:
            return counted, True
        cur.execute(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM tasks WHERE {clause}", params)
        plan = _first(cur)
        estimate = int(plan[0]["Plan"]["Plan Rows"])
        return max(estimate, counted), False


def _first(cur: Any) -> Any:
    """The first column of the one row a query always returns."""
    row = cur.fetchone()
    assert row is not None
    return row[0]


def mark_published(conn: Conn, task_ids: Sequence[uuid.UUID]) -> None:
    """Record that the tasks' messages reached the broker."""
    if not task_ids:
        return
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE tasks SET published_at = now()"
            " WHERE id = ANY(%s) AND status = ANY(%s) AND published_at IS NULL",
            (list(task_ids), _CLAIMABLE),
        )


def claim_task(conn: Conn, task_id: uuid.UUID, host: str, pid: int, lease: float) -> Task | None:
    """Start a new attempt if the task is claimable now (compare-and-set); else None.

    One statement (the attempt row is inserted by a data-modifying CTE), so it is atomic
    even on an autocommit connection: a claim costs a worker one round trip.
    """
    with conn.cursor() as cur:  # a plain cursor: RealDictRow cost a no-op task a tenth
        cur.execute(
            """
            WITH claimed AS (
                UPDATE tasks SET status = 'RUNNING', attempts = attempts + 1,
                    start_time = COALESCE(start_time, now()), worker_host = %(host)s,
                    worker_pid = %(pid)s,
                    lease_expires_at = now() + make_interval(secs => %(lease)s),
                    next_attempt_at = NULL, updated_at = now()
                WHERE id = %(id)s AND status = ANY(%(claimable)s)
                  AND cancel_requested_at IS NULL AND type <> 'MANUAL'
                  AND (next_attempt_at IS NULL OR next_attempt_at <= now())
                RETURNING *
            ), attempt AS (
                INSERT INTO task_attempts (task_id, attempt, status, worker_host, worker_pid)
                SELECT id, attempts, 'RUNNING', %(host)s, %(pid)s FROM claimed
                ON CONFLICT (task_id, attempt) DO NOTHING
            )
            SELECT * FROM claimed
            """,
            {"id": task_id, "host": host, "pid": pid, "lease": lease, "claimable": _CLAIMABLE},
        )
        return _build_tuple(Task, cur)


def close_attempt(
    cur: Any, task_id: uuid.UUID, attempt: int, outcome: str | None, error: dict[str, Any] | None
) -> None:
    """End an open attempt row; with no `outcome`, say why the task moved on without it."""
    cur.execute(
        """
        UPDATE task_attempts a SET ended_at = now(), error = %s,
            status = COALESCE(%s, (
                SELECT CASE WHEN t.status = 'CANCELLED' THEN 'CANCELLED' ELSE 'SUPERSEDED' END
                FROM tasks t WHERE t.id = a.task_id))
        WHERE a.task_id = %s AND a.attempt = %s AND a.ended_at IS NULL
        """,
        (Json(error) if error is not None else None, outcome, task_id, attempt),
    )


_FINISH_ATTEMPT = """
    WITH finished AS (
        UPDATE tasks SET status = %(status)s, output = %(output)s, error = %(error)s,
            end_time = now(), lease_expires_at = NULL, updated_at = now(),
            worker_lost_count = worker_lost_count + %(lost)s
        WHERE id = %(id)s AND status = 'RUNNING' AND attempts = %(attempt)s
        RETURNING id
    ), closed AS (
        UPDATE task_attempts a SET ended_at = now(), error = %(error)s, status = %(status)s
        WHERE a.task_id = %(id)s AND a.attempt = %(attempt)s AND a.ended_at IS NULL
          AND EXISTS (SELECT 1 FROM finished)
    )
    SELECT count(*) FROM finished
"""


def finish_attempt(
    conn: Conn,
    task_id: uuid.UUID,
    attempt: int,
    status: Status,
    *,
    output: Any = None,
    error: dict[str, Any] | None = None,
) -> bool:
    """Record a terminal outcome of the current attempt; False if the task moved on meanwhile.

    One statement, the task and its attempt row together (a CTE), so it is atomic on an
    autocommit connection too. When the task moved on, the attempt is closed by a statement
    of its own: a CTE reads the snapshot from before the statement, which can predate the
    cancel that this update waited for, and would call a cancelled attempt SUPERSEDED.
    """
    with conn.cursor() as cur:
        cur.execute(
            _FINISH_ATTEMPT,
            {
                "id": task_id,
                "attempt": attempt,
                "status": status.value,
                "output": Json(output) if output is not None else None,
                "error": Json(error) if error is not None else None,
                # Count every lost worker, the final one too, as schedule_retry and fail_task do.
                "lost": 1 if error is not None and error.get("kind") == "WORKER_LOST" else 0,
            },
        )
        row = cur.fetchone()
        if row and row[0]:
            return True
        close_attempt(cur, task_id, attempt, None, error)
        return False


def schedule_retry(
    conn: Conn,
    task_id: uuid.UUID,
    attempt: int,
    *,
    error: dict[str, Any],
    delay_ms: int,
    published: bool,
    worker_lost: bool = False,
    outcome: str = "FAILED",
) -> Task | None:
    """Move the current attempt's task to RETRYING, due after `delay_ms`.

    `published` says the caller will publish the message itself with a countdown; then
    `published_at` is the due time, so the sweeper republishes only if it never arrives.
    """
    with _cursor(conn) as cur:
        cur.execute(
            """
            UPDATE tasks SET status = 'RETRYING', error = %(error)s,
                next_attempt_at = now() + make_interval(secs => %(delay)s),
                published_at = CASE WHEN %(published)s
                    THEN now() + make_interval(secs => %(delay)s) END,
                worker_lost_count = worker_lost_count + %(lost)s,
                lease_expires_at = NULL, updated_at = now()
            WHERE id = %(id)s AND status = 'RUNNING' AND attempts = %(attempt)s
            RETURNING *
            """,
            {
                "id": task_id,
                "attempt": attempt,
                "error": Json(error),
                "delay": delay_ms / 1000.0,
                "published": published,
                "lost": 1 if worker_lost else 0,
            },
        )
        task = _build(Task, cur.fetchone())
        close_attempt(cur, task_id, attempt, outcome if task else None, error)
        return task


@dataclass(frozen=True)
class Heartbeat:
    """What a running attempt learns when it renews its lease."""

    current: bool  # the attempt still owns the task
    cancel_requested: bool


def heartbeat(conn: Conn, task_id: uuid.UUID, attempt: int, lease: float) -> Heartbeat:
    """Extend the lease of a running attempt and report whether a cancel was requested."""
    with conn.cursor() as cur:
        cur.execute(
            """
            UPDATE tasks SET lease_expires_at = now() + make_interval(secs => %s)
            WHERE id = %s AND status = 'RUNNING' AND attempts = %s
            RETURNING cancel_requested_at IS NOT NULL
            """,
            (lease, task_id, attempt),
        )
        row = cur.fetchone()
        if row is not None:
            return Heartbeat(current=True, cancel_requested=bool(row[0]))
        cur.execute("SELECT cancel_requested_at IS NOT NULL FROM tasks WHERE id = %s", (task_id,))
        row = cur.fetchone()
        return Heartbeat(current=False, cancel_requested=bool(row and row[0]))


def cancel_state(conn: Conn, task_id: uuid.UUID, attempt: int) -> tuple[bool, bool]:
    """Say (stop, force) for a running attempt: stop once it was cancelled or superseded."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT status <> 'RUNNING' OR attempts <> %s OR cancel_requested_at IS NOT NULL,"
            " cancel_force FROM tasks WHERE id = %s",
            (attempt, task_id),
        )
        row = cur.fetchone()
        if row is None:
            return True, False
        return bool(row[0]), bool(row[0]) and bool(row[1])


def retry_due_in(conn: Conn, task_id: uuid.UUID) -> float | None:
    """Seconds until a RETRYING task whose retry rides on a countdown is due; else None."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT EXTRACT(EPOCH FROM next_attempt_at - now())::float FROM tasks"
            " WHERE id = %s AND status = 'RETRYING' AND cancel_requested_at IS NULL"
            " AND published_at IS NOT NULL AND next_attempt_at > now()",
            (task_id,),
        )
        row = cur.fetchone()
        return float(row[0]) if row else None


def end_abandoned_attempt(conn: Conn, task_id: uuid.UUID, host: str, pid: int) -> bool:
    """Close the attempt that (host, pid) ran if the task moved on without it; say if one was."""
    with conn.cursor() as cur:
        cur.execute(
            """
            UPDATE task_attempts a SET ended_at = now(), status = CASE
                WHEN t.status IN ('CANCELLED', 'TIMED_OUT', 'FAILED') THEN t.status
                ELSE 'SUPERSEDED' END
            FROM tasks t
            WHERE a.task_id = t.id AND a.task_id = %s AND a.ended_at IS NULL
              AND a.worker_host = %s AND a.worker_pid = %s
              AND NOT (t.status = 'RUNNING' AND t.attempts = a.attempt)
            """,
            (task_id, host, pid),
        )
        return cur.rowcount > 0


@dataclass(frozen=True)
class CancelOutcome:
    """The result of a cancel request: the task after it, and its status before."""

    task: Task
    previous_status: str
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
    with _cursor(conn) as cur:
        cur.execute(
            "SELECT status FROM tasks WHERE id = %s AND (%s::text IS NULL OR owner = %s)"
            " FOR UPDATE",
            (task_id, owner, owner),
        )
        row = cur.fetchone()
        if row is None:
            return None
        previous = row["status"]
        cur.execute(
            """
            UPDATE tasks SET status = 'CANCELLED', cancel_requested_at = now(),
                cancel_reason = %(reason)s, cancelled_by = %(by)s, cancel_force = %(force)s,
                end_time = now(), next_attempt_at = NULL, updated_at = now()
            WHERE id = %(id)s AND status = ANY(%(active)s)
            RETURNING *
            """,
            {"id": task_id, "reason": reason, "by": by, "force": force, "active": _ACTIVE},
        )
        updated = cur.fetchone()
        if updated is None:
            cur.execute("SELECT * FROM tasks WHERE id = %s", (task_id,))
            return CancelOutcome(_build(Task, cur.fetchone()), previous, cancelled=False)
        return CancelOutcome(_build(Task, updated), previous, cancelled=True)


def task_ids_of_workflow(conn: Conn, workflow_instance_id: str, owner: str | None) -> list[Any]:
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
    with _cursor(conn) as cur:
        cur.execute(
            """
            UPDATE tasks SET status = 'COMPLETED', output = %s, start_time = COALESCE(start_time,
                created_at), end_time = now(), updated_at = now()
            WHERE id = %s AND type = 'MANUAL' AND status = 'PENDING'
              AND (%s::text IS NULL OR owner = %s)
            RETURNING *
            """,
            (Json(output), task_id, owner, owner),
        )
        return _build(Task, cur.fetchone())


def set_progress(conn: Conn, task_id: uuid.UUID, attempt: int, progress: dict[str, Any]) -> None:
    """Record the latest progress of a running attempt."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE tasks SET progress = %s WHERE id = %s AND attempts = %s AND status = 'RUNNING'",
            (Json(progress), task_id, attempt),
        )


def append_log(conn: Conn, task_id: uuid.UUID, attempt: int, level: str, message: str) -> None:
    """Append one line to a task's log."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO task_logs (task_id, attempt, level, message) VALUES (%s, %s, %s, %s)",
            (task_id, attempt, level, message),
        )


@dataclass(frozen=True)
class LogLine:
    """One line a handler logged through its context."""

    seq: int
    attempt: int
    level: str
    message: str
    created_at: datetime


def task_logs(conn: Conn, task_id: uuid.UUID, *, after: int, limit: int) -> list[LogLine]:
    """Return a task's log lines with `seq` above `after`, oldest first (the primary key range)."""
    with _cursor(conn) as cur:
        cur.execute(
            "SELECT seq, attempt, level, message, created_at FROM task_logs"
            " WHERE task_id = %s AND seq > %s ORDER BY seq LIMIT %s",
            (task_id, after, limit),
        )
        return [_build(LogLine, row) for row in cur.fetchall()]


# ---------------------------------------------------------------- metrics


@dataclass(frozen=True)
class ActiveGroup:
    """Active tasks of one status and executor, for the scrape-time gauges."""

    status: str
    executor: str
    manual: bool
    count: int
    oldest_pending_seconds: float | None


def active_groups(conn: Conn, timeout_ms: int = 2000) -> list[ActiveGroup]:
    """Count active tasks by status and executor (an index range over the active rows only)."""
    with _cursor(conn) as cur:
        # A scrape must never pile up behind a slow database: give up rather than queue.
        cur.execute("SET LOCAL statement_timeout = %s", (timeout_ms,))
        cur.execute(
            """
            SELECT status, executor, type = 'MANUAL' AS manual, count(*) AS count,
                EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE status = 'PENDING'))
                    ::float8 AS oldest_pending_seconds
            FROM tasks WHERE status = ANY(%s)
            GROUP BY status, executor, type = 'MANUAL'
            """,
            (_ACTIVE,),
        )
        return [_build(ActiveGroup, row) for row in cur.fetchall()]


def definition_executors(conn: Conn) -> list[str]:
    """List the executors that published definitions name (so an idle queue still reads 0)."""
    with conn.cursor() as cur:
        cur.execute("SELECT DISTINCT executor FROM task_definitions WHERE type <> 'MANUAL'")
        return sorted(row[0] for row in cur.fetchall())


# ---------------------------------------------------------------- the sweeper


@dataclass(frozen=True)
class Dispatch:
    """What the broker needs to deliver one task."""

    id: uuid.UUID
    task_definition_id: str
    executor: str
    priority: int
    timeout_ms: int


def take_due_for_publish(conn: Conn, republish_after: float, limit: int = 500) -> list[Dispatch]:
    """Claim waiting tasks whose message is missing or overdue, and stamp them published.

    A task counts as overdue once it has been due for `republish_after` seconds without a
    worker claiming it (its message may have been lost with Redis). SKIP LOCKED lets several
    sweepers run at once without publishing the same task twice in one round.
    """
    with _cursor(conn) as cur:
        cur.execute(
            """
            WITH due AS (
                SELECT id FROM tasks
                WHERE status IN ('PENDING', 'RETRYING') AND type <> 'MANUAL'
                  AND cancel_requested_at IS NULL
                  AND (next_attempt_at IS NULL OR next_attempt_at <= now())
                  AND (published_at IS NULL
                       OR published_at < now() - make_interval(secs => %s))
                ORDER BY priority DESC, created_at
                LIMIT %s
                FOR UPDATE SKIP LOCKED
            )
            UPDATE tasks t SET published_at = now() FROM due WHERE t.id = due.id
            RETURNING t.id, t.task_definition_id, t.executor, t.priority, t.timeout_ms
            """,
            (republish_after, limit),
        )
        return [_build(Dispatch, row) for row in cur.fetchall()]


def unpublish(conn: Conn, task_ids: Sequence[uuid.UUID]) -> None:
    """Forget a publish that failed, so the next sweep tries again at once."""
    if task_ids:
        with conn.cursor() as cur:
            cur.execute(
                "UPDATE tasks SET published_at = NULL WHERE id = ANY(%s) AND status = ANY(%s)",
                (list(task_ids), _CLAIMABLE),
            )


def expired_leases(conn: Conn, limit: int = 100) -> list[Task]:
    """Return RUNNING tasks whose worker stopped renewing the lease."""
    with _cursor(conn) as cur:
        cur.execute(
            "SELECT * FROM tasks WHERE status = 'RUNNING' AND lease_expires_at < now()"
            " ORDER BY lease_expires_at LIMIT %s",
            (limit,),
        )
        return [_build(Task, row) for row in cur.fetchall()]


def extend_running_leases(conn: Conn, lease: float) -> int:
    """Give every RUNNING attempt a full lease from now; return how many were extended.

    For the sweeper after a database outage: while Postgres was away no worker could renew
    its lease, so an expired lease then says nothing about whether its worker is alive.
    """
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE tasks SET lease_expires_at = now() + make_interval(secs => %s)"
            " WHERE status = 'RUNNING' AND lease_expires_at < now() + make_interval(secs => %s)",
            (lease, lease),
        )
        return cur.rowcount


def expired_deadlines(conn: Conn, limit: int = 100) -> list[Task]:
    """Return active tasks past their deadline (Task API timeouts)."""
    with _cursor(conn) as cur:
        cur.execute(
            "SELECT * FROM tasks WHERE deadline_at < now()"
            " AND status IN ('PENDING', 'RUNNING', 'RETRYING')"
            " ORDER BY deadline_at LIMIT %s",
            (limit,),
        )
        return [_build(Task, row) for row in cur.fetchall()]


def fail_task(
    conn: Conn, task_id: uuid.UUID, status: Status, error: dict[str, Any], attempt: int | None
) -> Task | None:
    """Move an active task to a terminal failure status (sweeper use); None if it moved on."""
    with _cursor(conn) as cur:
        cur.execute(
            """
            UPDATE tasks SET status = %(status)s, error = %(error)s, end_time = now(),
                lease_expires_at = NULL, next_attempt_at = NULL, updated_at = now(),
                worker_lost_count = worker_lost_count
                    + CASE WHEN %(error)s::jsonb ->> 'kind' = 'WORKER_LOST' THEN 1 ELSE 0 END
            WHERE id = %(id)s AND status = ANY(%(active)s)
              AND (%(attempt)s::int IS NULL OR attempts = %(attempt)s)
            RETURNING *
            """,
            {
                "id": task_id,
                "status": status.value,
                "error": Json(error),
                "active": _ACTIVE,
                "attempt": attempt,
            },
        )
        task = _build(Task, cur.fetchone())
        if task is not None and task.attempts:
            close_attempt(cur, task_id, task.attempts, status.value, error)
        return task


def close_abandoned_attempts(
    conn: Conn, older_than: float, limit: int = 100
) -> list[tuple[uuid.UUID, str]]:
    """Close attempt rows left open by tasks that moved on `older_than` seconds ago.

    Their worker died (or ignored every signal) after the task was cancelled, timed out or
    superseded. Returns (task id, task status) for each attempt closed.
    """
    with conn.cursor() as cur:
        cur.execute(
            """
            WITH stale AS (
                SELECT a.task_id, a.attempt, t.status FROM task_attempts a
                JOIN tasks t ON t.id = a.task_id
                WHERE a.ended_at IS NULL
                  AND NOT (t.status = 'RUNNING' AND t.attempts = a.attempt)
                  AND t.updated_at < now() - make_interval(secs => %s)
                LIMIT %s
                FOR UPDATE OF a SKIP LOCKED
            )
            UPDATE task_attempts a SET ended_at = now(), status = CASE
                WHEN stale.status IN ('CANCELLED', 'TIMED_OUT', 'FAILED') THEN stale.status
                ELSE 'SUPERSEDED' END
            FROM stale WHERE a.task_id = stale.task_id AND a.attempt = stale.attempt
            RETURNING a.task_id, stale.status
            """,
            (older_than, limit),
        )
        return [(row[0], row[1]) for row in cur.fetchall()]


# ---------------------------------------------------------------- API keys


@dataclass(frozen=True)
class ApiKey:
    """A stored API key (its secret only as a hash)."""

    id: str
    name: str
    owner: str
    permissions: list[str]
    key_hash: str
    rate_limit: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def insert_api_key(
    conn: Conn,
    *,
    key_id: str,
    name: str,
    owner: str,
    permissions: Sequence[str],
    key_hash: str,
    rate_limit: str | None,
) -> ApiKey:
    """Store a new API key."""
    with _cursor(conn) as cur:
        cur.execute(
            "INSERT INTO api_keys (id, name, owner, permissions, key_hash, rate_limit)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING *",
            (key_id, name, owner, list(permissions), key_hash, rate_limit),
        )
        return _build(ApiKey, cur.fetchone())


def get_api_key(conn: Conn, key_id: str) -> ApiKey | None:
    """Return a key by its public id (prefix)."""
    with _cursor(conn) as cur:
        cur.execute("SELECT * FROM api_keys WHERE id = %s", (key_id,))
        return _build(ApiKey, cur.fetchone())


def list_api_keys(conn: Conn) -> list[ApiKey]:
    """Return every key, oldest first."""
    with _cursor(conn) as cur:
        cur.execute("SELECT * FROM api_keys ORDER BY created_at")
        return [_build(ApiKey, row) for row in cur.fetchall()]


def revoke_api_key(conn: Conn, key_id: str) -> bool:
    """Revoke a key; say whether it existed and was active."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL",
            (key_id,),
        )
        return cur.rowcount == 1


def touch_api_key(conn: Conn, key_id: str, every_seconds: int = 60) -> None:
    """Record a use of a key, at most once per `every_seconds` (keeps the hot path write-free)."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE api_keys SET last_used_at = now() WHERE id = %s AND (last_used_at IS NULL"
            " OR last_used_at < now() - make_interval(secs => %s))",
            (key_id, every_seconds),
        )


# ---------------------------------------------------------------- idempotency


@dataclass(frozen=True)
class IdempotencyRecord:
    """A remembered submission: which task a key produced, and for which request."""

    owner: str
    key: str
    request_hash: str
    task_id: uuid.UUID
    expires_at: datetime


def get_idempotency(conn: Conn, owner: str, key: str) -> IdempotencyRecord | None:
    """Return the live record of a key, if any."""
    with _cursor(conn) as cur:
        cur.execute(
            "SELECT * FROM idempotency_keys WHERE owner = %s AND key = %s AND expires_at > now()",
            (owner, key),
        )
        return _build(IdempotencyRecord, cur.fetchone())


def claim_idempotency(
    conn: Conn, owner: str, key: str, request_hash: str, task_id: uuid.UUID, ttl: int
) -> IdempotencyRecord:
    """Bind a key to a task unless a live binding exists; return the binding that holds."""
    with _cursor(conn) as cur:
        cur.execute(
            """
            INSERT INTO idempotency_keys (owner, key, request_hash, task_id, expires_at)
            VALUES (%s, %s, %s, %s, now() + make_interval(secs => %s))
            ON CONFLICT (owner, key) DO UPDATE SET request_hash = EXCLUDED.request_hash,
                task_id = EXCLUDED.task_id, expires_at = EXCLUDED.expires_at
                WHERE idempotency_keys.expires_at <= now()
            RETURNING *
            """,
            (owner, key, request_hash, task_id, ttl),
        )
        row = cur.fetchone()
        if row is None:
            cur.execute(
                "SELECT * FROM idempotency_keys WHERE owner = %s AND key = %s", (owner, key)
            )
            row = cur.fetchone()
        return _build(IdempotencyRecord, row)


def purge_expired_idempotency(conn: Conn) -> int:
    """Delete expired idempotency records; return how many."""
    with conn.cursor() as cur:
        cur.execute("DELETE FROM idempotency_keys WHERE expires_at <= now()")
        return cur.rowcount
