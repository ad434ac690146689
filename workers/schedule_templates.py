"""A schedule as the firer keeps it between rounds: its task template, its next slot rendered."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shared import store
from shared.broker import Rendered
from shared.errors import InputValidationError, TaskexecError
from shared.schedules import SKIP_DEFINITION, SKIP_INPUT, SKIP_TEMPLATE, Timing, fired_task


def timing_of(schedule: store.Schedule) -> Timing:
    """A stored schedule's slot rule."""
    return Timing(
        cron=schedule.cron,
        interval_ms=schedule.interval_ms,
        timezone=schedule.timezone,
        anchor=schedule.start_at or schedule.created_at,
        start_at=schedule.start_at,
        end_at=schedule.end_at,
    )


def definition_of(schedule: store.Schedule) -> str:
    return str(schedule.task.get("taskDefinitionId", ""))


def definition_key(definition: store.DefinitionRow | None) -> tuple[str, datetime] | None:
    return None if definition is None else (definition.version, definition.updated_at)


@dataclass(frozen=True)
class Ahead:
    """A schedule's next slot, rendered before it falls due: its task (id and all), the SQL
    rows of its insert and of the schedule's advance, and its message. Used only if, at the
    claim, the schedule still waits for that slot and it is the only one due."""

    slot: datetime
    next_slot: datetime | None
    task: store.NewTask
    row: store.SlotRow
    done: store.Progress
    progress: str
    advance: str  # its guarded advance, for a round without a claim (store.fire_rendered)
    message: Rendered | None  # None for a manual task: nothing goes to Redis


@dataclass
class Template:
    """A schedule as the firer keeps it between rounds: valid while its `updated_at` and its
    definition's (version, updated_at) are those it was built from."""

    schedule: store.Schedule
    timing: Timing
    definition: tuple[str, datetime] | None
    row: store.NewTask | None  # the task a slot inserts (a new id each); None: skip the slot
    skip: tuple[str, str] | None  # (reason, message) when `row` is None
    max_running: int | None = None  # the owner's per-principal limit it was built with
    used: float = 0.0  # monotonic time of the last round or preparation that used it
    ahead: Ahead | None = None  # its next slot, rendered by prepare()


def build_template(
    schedule: store.Schedule, definition: store.DefinitionRow | None, max_running: int | None = None
) -> Template:
    """Build a schedule's task row as a submission's; a template that cannot make one says why.

    Never raises: a schedule that cannot fire must not stop the others.
    """
    timing = timing_of(schedule)
    key = definition_key(definition)
    definition_id = schedule.task.get("taskDefinitionId", "")
    if definition is None:
        message = f"task definition {definition_id!r} is not published"
        return Template(schedule, timing, key, None, (SKIP_DEFINITION, message))
    try:
        row = fired_task(schedule.task, definition, schedule.owner, max_running)
    except InputValidationError as exc:
        problems = exc.details.get("errors") or [exc.details]
        detail = "; ".join(f"{p.get('field')}: {p.get('issue')}" for p in problems[:3])
        message = f"{exc.message} (version {definition.version}): {detail}"
        return Template(schedule, timing, key, None, (SKIP_INPUT, message))
    except (TaskexecError, ValueError, KeyError, TypeError) as exc:
        message = exc.message if isinstance(exc, TaskexecError) else f"{exc!r}"
        return Template(schedule, timing, key, None, (SKIP_TEMPLATE, message))
    return Template(schedule, timing, key, row, None, max_running)
