"""How schedules look on the wire (camelCase, RFC 3339 UTC times, durations in milliseconds)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields

from api.pagination import TaskPaginationSchema
from api.responses import enum_field, rfc3339, time_field
from shared.schedules import OVERLAP_POLICIES, SKIP_REASONS
from shared.store import Schedule


class ScheduleSchema(Schema):
    id = fields.String(required=True, metadata={"format": "uuid"})
    name = fields.String(required=True)
    cron = fields.String(metadata={"description": "Present for a cron schedule"})
    interval = fields.Integer(metadata={"description": "Milliseconds; for an interval schedule"})
    timezone = fields.String(required=True)
    task = fields.Dict(required=True, metadata={"description": "The task template"})
    overlapPolicy = enum_field(list(OVERLAP_POLICIES), required=True)
    catchupWindow = fields.Integer(required=True, metadata={"description": "Milliseconds"})
    startAt = time_field(required=True, allow_none=True)
    endAt = time_field(required=True, allow_none=True)
    paused = fields.Boolean(required=True)
    nextRunAt = time_field(
        "The next slot; null when paused or past endAt", required=True, allow_none=True
    )
    lastRunAt = time_field("The last slot fired", required=True, allow_none=True)
    skippedSlots = fields.Integer(
        required=True,
        metadata={
            "description": "Slots not fired: missed past catchupWindow, overlap, or the"
            " template could not make a task (see lastSkipReason)"
        },
    )
    lastSkippedAt = time_field("The last slot skipped", required=True, allow_none=True)
    lastSkipReason = enum_field(
        list(SKIP_REASONS),
        required=True,
        allow_none=True,
        metadata={"description": "Why the last slot was skipped; null if none was"},
    )
    lastSkipMessage = fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "What happened, e.g. the definition that is gone or the input"
            " fields that no longer match its schema"
        },
    )
    createdAt = time_field(required=True)
    updatedAt = time_field(required=True)


def schedule_json(row: Schedule) -> dict[str, Any]:
    """A schedule, as every schedule endpoint returns it."""
    doc: dict[str, Any] = {"id": str(row.id), "name": row.name}
    if row.cron is not None:
        doc["cron"] = row.cron
    else:
        doc["interval"] = row.interval_ms
    doc.update(
        {
            "timezone": row.timezone,
            "task": row.task,
            "overlapPolicy": row.overlap_policy,
            "catchupWindow": row.catchup_window_ms,
            "startAt": rfc3339(row.start_at),
            "endAt": rfc3339(row.end_at),
            "paused": row.paused,
            "nextRunAt": None if row.paused else rfc3339(row.next_run_at),
            "lastRunAt": rfc3339(row.last_run_at),
            "skippedSlots": row.skipped_count,
            "lastSkippedAt": rfc3339(row.last_skipped_at),
            "lastSkipReason": row.last_skip_reason,
            "lastSkipMessage": row.last_skip_message,
            "createdAt": rfc3339(row.created_at),
            "updatedAt": rfc3339(row.updated_at),
        }
    )
    return doc


class ScheduleListSchema(Schema):
    items = fields.List(fields.Nested(ScheduleSchema), required=True)
    pagination = fields.Nested(TaskPaginationSchema, required=True)
    nextCursor = fields.String(metadata={"description": "Pass as `cursor` for the next page"})


def schedule_list(
    rows: list[Schedule], pagination: dict[str, Any], cursor: str | None
) -> dict[str, Any]:
    """A page of schedules; `nextCursor` only while more follow."""
    doc: dict[str, Any] = {"items": [schedule_json(r) for r in rows], "pagination": pagination}
    if cursor is not None:
        doc["nextCursor"] = cursor
    return doc
