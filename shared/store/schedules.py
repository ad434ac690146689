"""Recurring schedules: their rows, the sweeper's claim of due ones, and the tasks they fire."""

from __future__ import annotations

import uuid
from collections.abc import Container, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2
import psycopg2.errors
from psycopg2.extras import Json

from shared.status import ACTIVE, TaskType
from shared.store._rows import Conn, Cursor, all_, one, statuses
from shared.store.tasks import (
    PUBLISH_IF_FIRST,
    RELEASE_CHANNEL,
    TASK_COLUMNS,
    TASK_NAMES,
    TASK_PICKED,
    NewTask,
    Task,
    task_values,
)

_ACTIVE = statuses(ACTIVE)
#: The schedule-firing thread LISTENs on it: a created or edited schedule may be due sooner.
SCHEDULE_CHANNEL = "taskexec_schedules"


@dataclass(frozen=True)
class Schedule:
    """One row of the schedules table."""

    id: uuid.UUID
    owner: str
    name: str
    cron: str | None
    interval_ms: int | None
    timezone: str
    task: dict[str, Any]
    overlap_policy: str
    catchup_window_ms: int
    start_at: datetime | None
    end_at: datetime | None
    paused: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    skipped_count: int
    last_skipped_at: datetime | None
    created_at: datetime
    updated_at: datetime
    last_skip_reason: str | None = None  # shared.schedules.SKIP_*: why the last skip happened
    last_skip_message: str | None = None  # what the user would need to fix, if anything


@dataclass(frozen=True)
class DueSchedule:
    """A claimed schedule, as the claim reads it: enough to find its cached template."""

    id: uuid.UUID
    updated_at: datetime  # changes with every API write: a new value means a new template
    next_run_at: datetime


@dataclass(frozen=True)
class SlotTask:
    """A task a schedule fires: the row a submission would write, plus its schedule and slot."""

    task: NewTask
    schedule_id: uuid.UUID
    scheduled_for: datetime | None  # None: a trigger, outside the slot sequence


@dataclass(frozen=True)
class Progress:
    """What a round did to one claimed schedule (written by fire_round)."""

    id: uuid.UUID
    updated_at: datetime  # the version claimed: a round never writes over a newer one
    next_run_at: datetime | None
    last_run_at: datetime | None = None  # the last slot fired, if any
    skipped: int = 0
    last_skipped_at: datetime | None = None
    skip_reason: str | None = None
    skip_message: str | None = None


#: The columns a client may write (POST and PATCH); the rest the service keeps.
WRITABLE = (
    "name",
    "cron",
    "interval_ms",
    "timezone",
    "task",
    "overlap_policy",
    "catchup_window_ms",
    "start_at",
    "end_at",
    "paused",
    "next_run_at",
)


def _param(column: str, value: Any) -> Any:
    return Json(value) if column == "task" else value


def insert_schedule(
    conn: Conn, schedule_id: uuid.UUID, owner: str, values: dict[str, Any], created_at: datetime
) -> Schedule:
    """Store a new schedule (`values` keyed by WRITABLE columns)."""
    columns = [c for c in WRITABLE if c in values]
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO schedules (id, owner, created_at, updated_at, {', '.join(columns)})"
            f" VALUES (%s, %s, %s, %s, {', '.join(['%s'] * len(columns))}) RETURNING *",
            [schedule_id, owner, created_at, created_at] + [_param(c, values[c]) for c in columns],
        )
        row = one(cur, Schedule)
        assert row is not None
        # Wakes a sleeping sweeper (at commit) to fire a slot sooner than it planned.
        cur.execute(f"NOTIFY {SCHEDULE_CHANNEL}")
        return row


def get_schedule(
    conn: Conn, schedule_id: uuid.UUID, owner: str | None, *, lock: bool = False
) -> Schedule | None:
    """Return a schedule; with `owner`, only if that principal owns it (FOR UPDATE with lock)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT * FROM schedules WHERE id = %s AND (%s::text IS NULL OR owner = %s)"
            + (" FOR UPDATE" if lock else ""),
            (schedule_id, owner, owner),
        )
        return one(cur, Schedule)


def update_schedule(conn: Conn, schedule_id: uuid.UUID, values: dict[str, Any]) -> Schedule:
    """Write the given WRITABLE columns of a schedule (locked by the caller)."""
    columns = [c for c in WRITABLE if c in values]
    sets = "".join(f", {c} = %s" for c in columns)
    with conn.cursor() as cur:
        cur.execute(
            f"UPDATE schedules SET updated_at = now(){sets} WHERE id = %s RETURNING *",
            [_param(c, values[c]) for c in columns] + [schedule_id],
        )
        row = one(cur, Schedule)
        assert row is not None
        # Wakes a sleeping sweeper (at commit) to fire a slot sooner than it planned.
        cur.execute(f"NOTIFY {SCHEDULE_CHANNEL}")
        return row


def delete_schedule(conn: Conn, schedule_id: uuid.UUID, owner: str | None) -> bool:
    """Delete a schedule (its tasks stay); False if no such (visible) schedule."""
    with conn.cursor() as cur:
        cur.execute(
            "DELETE FROM schedules WHERE id = %s AND (%s::text IS NULL OR owner = %s)",
            (schedule_id, owner, owner),
        )
        return bool(cur.rowcount)


@dataclass(frozen=True)
class ScheduleFilter:
    """The listing filters; None means no filter."""

    owner: str | None = None
    paused: bool | None = None
    task_definition_id: str | None = None


def list_schedules(
    conn: Conn,
    flt: ScheduleFilter,
    *,
    limit: int,
    offset: int = 0,
    after: tuple[datetime, uuid.UUID] | None = None,
) -> tuple[list[Schedule], int]:
    """Page through schedules newest first (by offset or a cursor); return (page, total)."""
    where: list[str] = ["TRUE"]
    params: list[Any] = []
    if flt.owner is not None:
        where.append("owner = %s")
        params.append(flt.owner)
    if flt.paused is not None:
        where.append("paused = %s")
        params.append(flt.paused)
    if flt.task_definition_id is not None:
        where.append("task ->> 'taskDefinitionId' = %s")
        params.append(flt.task_definition_id)
    clause = " AND ".join(where)
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM schedules WHERE {clause}", params)
        row = cur.fetchone()
        total = int(row[0]) if row else 0
        page_clause, page_params = clause, list(params)
        if after is not None:
            page_clause += " AND (created_at, id) < (%s, %s)"
            page_params += [after[0], after[1]]
            offset = 0
        cur.execute(
            f"SELECT * FROM schedules WHERE {page_clause}"
            " ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s",
            [*page_params, limit, offset],
        )
        return all_(cur, Schedule), total


def get_schedules(conn: Conn, ids: Sequence[uuid.UUID]) -> list[Schedule]:
    """The schedules with these ids (any owner), in no particular order."""
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM schedules WHERE id = ANY(%s)", (list(ids),))
        return all_(cur, Schedule)


def claim_due_schedules(conn: Conn, limit: int) -> tuple[list[DueSchedule], datetime]:
    """Lock due, unpaused schedules for this transaction; return them and the database's now.

    SKIP LOCKED: a schedule another sweeper is firing (or an API write is changing) is left to
    it. Exactly-once does not rest on this lock (the unique slot index holds it); the lock
    spares duplicate work and keeps a PATCH and a round from interleaving. Only three columns
    are read: the firer keeps each schedule's template by (id, updated_at).
    """
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, updated_at, next_run_at, now() FROM schedules WHERE NOT paused"
            " AND next_run_at IS NOT NULL AND next_run_at <= now()"
            " ORDER BY next_run_at LIMIT %s FOR UPDATE SKIP LOCKED",
            (limit,),
        )
        rows = cur.fetchall()
        if rows:
            return [DueSchedule(r[0], r[1], r[2]) for r in rows], rows[0][3]
        cur.execute("SELECT now()")
        row = cur.fetchone()
        assert row is not None
        return [], row[0]


def schedules_due_by(conn: Conn, seconds: float, limit: int) -> list[DueSchedule]:
    """Unpaused schedules due within `seconds` (no lock): what the firer prepares before
    their slot."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT id, updated_at, next_run_at FROM schedules WHERE NOT paused"
            " AND next_run_at IS NOT NULL AND next_run_at <= now() + make_interval(secs => %s)"
            " ORDER BY next_run_at LIMIT %s",
            (seconds, limit),
        )
        return [DueSchedule(r[0], r[1], r[2]) for r in cur.fetchall()]


def active_schedule_tasks(
    conn: Conn, schedule_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[uuid.UUID]]:
    """The tasks of these schedules that are not terminal yet (for their overlap policy)."""
    found: dict[uuid.UUID, list[uuid.UUID]] = {}
    if not schedule_ids:
        return found
    with conn.cursor() as cur:
        cur.execute(
            "SELECT schedule_id, id FROM tasks WHERE schedule_id = ANY(%s) AND status = ANY(%s)",
            (list(schedule_ids), _ACTIVE),
        )
        for schedule_id, task_id in cur.fetchall():
            found.setdefault(schedule_id, []).append(task_id)
    return found


# A slot's row is a submission's (tasks.TASK_COLUMNS and task_values, whatever columns those grow),
# published at once on the same terms (shared/store/tasks.py's PUBLISH_IF_FIRST: the caller lets
# it, and its owner has nothing ready waiting there), plus its schedule and slot; the conflict
# target is the unique slot index.
_SLOT_INSERT = (
    f"INSERT INTO tasks ({TASK_NAMES}, published_at, schedule_id, scheduled_for)"
    f" SELECT {TASK_PICKED}, CASE WHEN v.publish AND {PUBLISH_IF_FIRST} THEN now() END,"
    " v.schedule_id, v.scheduled_for"
    f" FROM (VALUES {{values}}) AS v({TASK_NAMES}, publish, schedule_id, scheduled_for) {{where}}"
    " ON CONFLICT (schedule_id, scheduled_for) WHERE schedule_id IS NOT NULL DO NOTHING"
    " RETURNING {returning}"
)
# A rendered slot's advance is its claim: it moves the schedule on only if the row is still
# the version the slot was rendered from, waits for that very slot, is due by the database's
# clock, within its catch-up window, and the slot is the only one due. A concurrent round
# holding the row makes it wait, then re-check against the row that round left.
_ADVANCE_IF = (
    "UPDATE schedules s SET next_run_at = v.next_run_at, last_run_at = v.slot"
    " FROM (VALUES {}) v(id, updated_at, slot, next_run_at, catchup_ms)"
    " WHERE s.id = v.id AND s.updated_at = v.updated_at AND s.next_run_at = v.slot"
    " AND NOT s.paused AND v.slot <= now()"
    " AND v.slot >= now() - make_interval(secs => v.catchup_ms / 1000.0)"
    " AND (v.next_run_at IS NULL OR v.next_run_at > now())"
    " RETURNING s.id"
)
_ADVANCE_IF_TEMPLATE = "(%s::uuid, %s::timestamptz, %s::timestamptz, %s::timestamptz, %s::bigint)"
_SLOT_HEAD = "(" + ", ".join(f"%s::{kind}" for _, kind in TASK_COLUMNS) + ", "
_SLOT_TAIL = "::boolean, %s::uuid, %s::timestamptz)"
_PROGRESS = (
    "UPDATE schedules s SET next_run_at = v.next_run_at,"
    " last_run_at = COALESCE(v.last_run_at, s.last_run_at),"
    " skipped_count = s.skipped_count + v.skipped,"
    " last_skipped_at = COALESCE(v.last_skipped_at, s.last_skipped_at),"
    " last_skip_reason = COALESCE(v.skip_reason, s.last_skip_reason),"
    " last_skip_message = CASE WHEN v.skip_reason IS NULL THEN s.last_skip_message"
    " ELSE v.skip_message END"
    " FROM (VALUES {}) v(id, updated_at, next_run_at, last_run_at, skipped, last_skipped_at,"
    " skip_reason, skip_message)"
    " WHERE s.id = v.id AND s.updated_at = v.updated_at"
)
_PROGRESS_TEMPLATE = (
    "(%s::uuid, %s::timestamptz, %s::timestamptz, %s::timestamptz, %s::bigint,"
    " %s::timestamptz, %s::text, %s::text)"
)


@dataclass(frozen=True)
class SlotRow:
    """A slot task's row as SQL text for fire_round, but for whether it goes out at once."""

    head: str
    tail: str
    executor: str
    may_publish: bool  # not manual and under no concurrency limit (tasks.task_values)

    def sql(self, publish: bool) -> str:
        """The row; `publish`: its executor's window has room for it (the caller decides)."""
        return f"{self.head}{'true' if publish and self.may_publish else 'false'}{self.tail}"


def render_slots(conn: Conn, slots: Sequence[SlotTask]) -> list[SlotRow]:
    """Each slot task's row as SQL text (rendered ahead of its slot, even)."""
    out = []
    with conn.cursor() as cur:
        for s in slots:
            values = task_values(s.task)
            out.append(
                SlotRow(
                    cur.mogrify(_SLOT_HEAD, values[:-1]).decode(),
                    cur.mogrify(_SLOT_TAIL, (s.schedule_id, s.scheduled_for)).decode(),
                    s.task.executor,
                    bool(values[-1]),
                )
            )
    return out


def render_progress(conn: Conn, progress: Sequence[Progress]) -> list[str]:
    """Each schedule's progress as SQL text for fire_round."""
    with conn.cursor() as cur:
        return [
            cur.mogrify(
                _PROGRESS_TEMPLATE,
                (
                    p.id,
                    p.updated_at,
                    p.next_run_at,
                    p.last_run_at,
                    p.skipped,
                    p.last_skipped_at,
                    p.skip_reason,
                    p.skip_message,
                ),
            ).decode()
            for p in progress
        ]


def render_advances(conn: Conn, slots: Sequence[tuple[Progress, datetime, int]]) -> list[str]:
    """Each rendered slot's guarded advance (progress, slot, catch-up ms) for fire_rendered."""
    with conn.cursor() as cur:
        return [
            cur.mogrify(
                _ADVANCE_IF_TEMPLATE, (p.id, p.updated_at, slot, p.next_run_at, catchup_ms)
            ).decode()
            for p, slot, catchup_ms in slots
        ]


#: How long a round without a claim waits for a row another transaction holds (a PATCH, a
#: claimed round) before giving the whole batch back to the claimed rounds, which skip it.
RENDERED_LOCK_TIMEOUT_MS = 200


def fire_rendered(
    conn: Conn, rows: Sequence[str], advances: Sequence[str]
) -> tuple[set[uuid.UUID], dict[uuid.UUID, bool]] | None:
    """Fire slots rendered ahead, without a claim: one statement advances each schedule
    still as rendered (render_advances) and inserts the task of each one it advanced. Return
    the schedules advanced, and the tasks inserted with whether each goes out at once; None
    if a row was held by another transaction longer than RENDERED_LOCK_TIMEOUT_MS (nothing
    written then: `conn` in a transaction, under a savepoint).

    Exactly once as a claimed round: a schedule another round holds is waited for and then
    re-checked (it has moved on), and the slot index still turns a second insert into none.
    """
    if not rows:
        return set(), {}
    insert = _SLOT_INSERT.format(
        values=",".join(rows),
        where="WHERE v.schedule_id IN (SELECT id FROM advanced)",
        returning="id, schedule_id, published_at IS NOT NULL AS published,"
        " type = 'MANUAL' AS manual",
    )
    with conn.cursor() as cur:
        try:
            cur.execute(
                f"SAVEPOINT fire_rendered; SET LOCAL lock_timeout = {RENDERED_LOCK_TIMEOUT_MS};"
                f" WITH advanced AS ({_ADVANCE_IF.format(','.join(advances))}),"
                f" fired AS ({insert})"
                " SELECT a.id, f.id, f.published, f.manual"
                " FROM advanced a LEFT JOIN fired f ON f.schedule_id = a.id"
            )
        except psycopg2.errors.LockNotAvailable:
            _rollback_to(cur, "fire_rendered")
            return None
        except psycopg2.Error:
            _rollback_to(cur, "fire_rendered")
            raise
        found = cur.fetchall()
        if any(t is not None and not published and not manual for _, t, published, manual in found):
            cur.execute(f"NOTIFY {RELEASE_CHANNEL}")
    advanced = {schedule_id for schedule_id, _, _, _ in found}
    return advanced, {t: published for _, t, published, _ in found if t is not None}


def insert_schedule_tasks(
    conn: Conn, slots: Sequence[SlotTask], open_executors: Container[str] | None = None
) -> list[Task]:
    """Insert a schedule's tasks (a trigger's); return those inserted. A slot already fired
    (same schedule and scheduled_for, by any sweeper) inserts nothing and is not returned.

    Published at once as a submission is (the caller publishes after commit): not manual,
    under no limit, its executor in `open_executors` (None: all) and its owner with nothing
    ready waiting; otherwise it waits for the releaser, which a NOTIFY wakes.
    """
    if not slots:
        return []
    rows = render_slots(conn, slots)
    with conn.cursor() as cur:
        values = ",".join(
            r.sql(open_executors is None or r.executor in open_executors) for r in rows
        )
        cur.execute(_SLOT_INSERT.format(values=values, where="", returning="*"))
        stored = all_(cur, Task)
        if any(t.published_at is None and t.type != TaskType.MANUAL.value for t in stored):
            cur.execute(f"NOTIFY {RELEASE_CHANNEL}")
        return stored


def fire_round(conn: Conn, rows: Sequence[str], progress: Sequence[str]) -> dict[uuid.UUID, bool]:
    """Insert a round's tasks and advance its schedules in one statement; return the tasks
    inserted, each with whether it was stamped published (a slot some sweeper already fired
    inserts nothing). `rows` are SlotRow.sql texts, `progress` render_progress's. A row left
    to the releaser (a full window, a limit, its owner's backlog) wakes it, at commit.

    A schedule whose row changed since the claim (updated_at) is not advanced: the claim's
    lock makes that impossible today, and if it ever were not, an API write would still win
    over a stale round, and the slot index would still keep each slot to one task.
    """
    with conn.cursor() as cur:
        parts = []
        if rows:
            returning = "id, published_at IS NOT NULL, type = 'MANUAL'"
            insert = _SLOT_INSERT.format(values=",".join(rows), where="", returning=returning)
            parts.append(f"fired AS ({insert})")
        if progress:
            parts.append(f"advanced AS ({_PROGRESS.format(','.join(progress))} RETURNING 1)")
        if not parts:
            return {}
        select = "SELECT * FROM fired" if rows else "SELECT NULL, NULL, NULL WHERE false"
        # Under a savepoint: a row the database refuses rolls back this statement only, and
        # the caller can retry the round's schedules one by one in the same transaction.
        try:
            cur.execute(f"SAVEPOINT fire_round; WITH {', '.join(parts)} {select}")
        except psycopg2.Error:
            _rollback_to(cur, "fire_round")
            raise
        fired = cur.fetchall()
        if any(not published and not manual for _, published, manual in fired):
            cur.execute(f"NOTIFY {RELEASE_CHANNEL}")
        return {task_id: published for task_id, published, _ in fired}


def _rollback_to(cur: Cursor, savepoint: str) -> None:
    try:
        cur.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
    except psycopg2.Error:
        pass  # the connection itself is gone: the caller's transaction rolls back anyway


def next_schedule_in(conn: Conn) -> float | None:
    """Seconds until the earliest unpaused schedule falls due (None: none waits ahead).

    One entry of the partial index schedules_due, whatever the number of schedules.
    """
    with conn.cursor() as cur:
        cur.execute(
            "SELECT EXTRACT(EPOCH FROM next_run_at - now())::float FROM schedules"
            " WHERE NOT paused AND next_run_at IS NOT NULL"
            " ORDER BY next_run_at LIMIT 1"
        )
        row = cur.fetchone()
        return None if row is None else float(row[0])


def listen_for_schedules(conn: Conn) -> None:
    """LISTEN on the channel a created or edited schedule notifies (autocommit `conn`)."""
    with conn.cursor() as cur:
        cur.execute(f"LISTEN {SCHEDULE_CHANNEL}")
