"""Marshmallow schemas of the schedule requests (the task template as a submission's fields)."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, fields, validate, validates_schema
from marshmallow import ValidationError as FieldError

from api.pagination import MAX_PAGE
from api.schemas import TaskTemplateSchema, UtcDateTime
from shared.schedules import (
    DEFAULT_CATCHUP_MS,
    MIN_INTERVAL_MS,
    OVERLAP_POLICIES,
    valid_cron,
    valid_timezone,
)

_ID = validate.Length(min=1, max=200)
#: A year: a longer catch-up window would fire slots a whole outage late.
_MAX_CATCHUP_MS = 366 * 24 * 3600 * 1000


def _cron(value: str) -> None:
    if not valid_cron(value):
        raise FieldError("not a five-field cron expression")


def _timezone(value: str) -> None:
    if not valid_timezone(value):
        raise FieldError("not an IANA time zone")


class _ScheduleFields(Schema):
    class Meta:
        unknown = RAISE

    cron = fields.String(
        validate=[validate.Length(max=200), _cron],
        metadata={"description": "Five fields, read in `timezone`. Not with interval"},
    )
    interval = fields.Integer(
        strict=True,
        validate=validate.Range(min=MIN_INTERVAL_MS),
        metadata={"description": "Milliseconds between slots (>= 1000). Not with cron"},
    )
    timezone = fields.String(validate=_timezone, metadata={"description": "IANA, default UTC"})
    overlapPolicy = fields.String(validate=validate.OneOf(OVERLAP_POLICIES))
    catchupWindow = fields.Integer(
        strict=True,
        validate=validate.Range(min=0, max=_MAX_CATCHUP_MS),
        metadata={"description": "Milliseconds; a slot missed by longer is skipped"},
    )
    startAt = UtcDateTime(format="iso", allow_none=True)
    endAt = UtcDateTime(format="iso", allow_none=True)
    paused = fields.Boolean()

    @validates_schema
    def _bounds(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "cron" in data and "interval" in data:
            raise FieldError("give either cron or interval, not both", field_name="interval")
        start, end = data.get("startAt"), data.get("endAt")
        if start is not None and end is not None and end <= start:
            raise FieldError("must be after startAt", field_name="endAt")


class CreateScheduleSchema(_ScheduleFields):
    """The body of `POST /api/v1/schedules`."""

    name = fields.String(required=True, validate=_ID)
    task = fields.Nested(TaskTemplateSchema, required=True)
    timezone = fields.String(load_default="UTC", validate=_timezone)
    overlapPolicy = fields.String(load_default="ALLOW", validate=validate.OneOf(OVERLAP_POLICIES))
    catchupWindow = fields.Integer(
        strict=True,
        load_default=DEFAULT_CATCHUP_MS,
        validate=validate.Range(min=0, max=_MAX_CATCHUP_MS),
        metadata={"description": "Milliseconds; a slot missed by longer is skipped"},
    )
    paused = fields.Boolean(load_default=False)

    @validates_schema
    def _one_rule(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "cron" not in data and "interval" not in data:
            raise FieldError("give cron or interval", field_name="cron")


class PatchScheduleSchema(_ScheduleFields):
    """The body of `PATCH /api/v1/schedules/{id}`: any field; cron replaces interval and back."""

    name = fields.String(validate=_ID)
    task = fields.Nested(TaskTemplateSchema)


class ListSchedulesQuery(Schema):
    """The query of `GET /api/v1/schedules`."""

    class Meta:
        unknown = RAISE

    paused = fields.Boolean()
    taskDefinitionId = fields.String(validate=_ID)
    page = fields.Integer(validate=validate.Range(min=1, max=MAX_PAGE))
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(validate=validate.Length(min=1, max=200))
