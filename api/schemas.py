"""Marshmallow schemas of the request envelopes (task input itself is checked by jsonschema)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from marshmallow import RAISE, Schema, fields, validate, validates_schema
from marshmallow import ValidationError as FieldError

from api.errors import field_errors
from api.pagination import MAX_PAGE
from shared.errors import ValidationError
from shared.status import PendingReason, Priority, Status, TaskType

_ID = validate.Length(min=1, max=200)
_MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000
#: How far ahead a task may be delayed (`runAt` or `delay`).
MAX_DELAY = timedelta(days=366)
MAX_DELAY_MS = int(MAX_DELAY.total_seconds()) * 1000
STATUSES = [s.value for s in Status]
TYPES = [t.value for t in TaskType]
#: A Task API job's longest timeout: the main API's longest attempt.
MAX_JOB_TIMEOUT_SECONDS = _MAX_TIMEOUT_MS // 1000
#: Log lines per page of `GET /api/v1/tasks/{id}/logs`.
DEFAULT_LOG_LIMIT = 100
MAX_LOG_LIMIT = 1000


class RetryPolicySchema(Schema):
    class Meta:
        unknown = RAISE

    maxRetries = fields.Integer(strict=True, validate=validate.Range(min=0, max=100))
    retryInterval = fields.Integer(strict=True, validate=validate.Range(min=0, max=_MAX_TIMEOUT_MS))
    backoffMultiplier = fields.Float(validate=validate.Range(min=1, max=100))
    retryOnTimeout = fields.Boolean()
    jitter = fields.Float(validate=validate.Range(min=0, max=1))


class ExecutionConfigSchema(Schema):
    class Meta:
        unknown = RAISE

    timeout = fields.Integer(
        strict=True,
        validate=validate.Range(min=1, max=_MAX_TIMEOUT_MS),
        metadata={"description": "Milliseconds one attempt may run"},
    )
    retryPolicy = fields.Nested(RetryPolicySchema)
    concurrency = fields.Nested(
        lambda: ConcurrencySchema(),
        metadata={"description": "At most `limit` of the owner's tasks with `key` RUNNING"},
    )


class ConcurrencySchema(Schema):
    """A per-key concurrency limit: scoped to the submitting owner."""

    class Meta:
        unknown = RAISE

    key = fields.String(required=True, validate=_ID)
    limit = fields.Integer(strict=True, required=True, validate=validate.Range(min=1, max=100_000))


class UtcDateTime(fields.AwareDateTime):
    """An RFC 3339 time, in UTC: Postgres refuses offsets that Python accepts (+17:38)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            return moment.astimezone(UTC)
        except OverflowError as exc:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise FieldError("out of range") from exc


class TaskTemplateSchema(Schema):
    """A task as it is submitted: also the template each of a schedule's slots fires."""

    class Meta:
        unknown = RAISE

    taskDefinitionId = fields.String(required=True, validate=_ID)
    workflowInstanceId = fields.String(allow_none=True, validate=_ID)
    input = fields.Dict(load_default=dict, metadata={"description": "Checked against inputSchema"})
    priority = fields.String(
        load_default=Priority.MEDIUM.value, validate=validate.OneOf([p.value for p in Priority])
    )
    executionConfig = fields.Nested(ExecutionConfigSchema, load_default=dict)


class SubmitTaskSchema(TaskTemplateSchema):
    """The body of `POST /api/v1/tasks`: a task template, plus when and how to submit it."""

    idempotencyKey = fields.String(validate=validate.Length(min=1, max=200))
    runAt = UtcDateTime(
        format="iso",
        metadata={
            "description": "RFC 3339 with an offset: start no earlier than this (at most 366"
            " days ahead; a time past runs at once). Not with delay"
        },
    )
    delay = fields.Integer(
        strict=True,
        validate=validate.Range(min=0, max=MAX_DELAY_MS),
        metadata={"description": "Milliseconds from now before it may start. Not with runAt"},
    )

    @validates_schema
    def _one_start_time(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "runAt" in data and "delay" in data:
            raise FieldError("give either runAt or delay, not both", field_name="delay")
        if "runAt" in data and data["runAt"] - datetime.now(UTC) > MAX_DELAY:
            raise FieldError("at most 366 days ahead", field_name="runAt")


class BulkSubmitSchema(Schema):
    """The body of `POST /api/v1/tasks/bulk`: each item is checked on its own."""

    class Meta:
        unknown = RAISE

    tasks = fields.List(fields.Raw(), required=True, validate=validate.Length(min=1))


class CancelTaskSchema(Schema):
    """The body of `POST /api/v1/tasks/{id}/cancel` (optional)."""

    class Meta:
        unknown = RAISE

    reason = fields.String(validate=validate.Length(max=1000), allow_none=True)
    force = fields.Boolean(load_default=False)


class BulkCancelSchema(Schema):
    """The body of `POST /api/v1/tasks/cancel`: ids or a workflow."""

    class Meta:
        unknown = RAISE

    ids = fields.List(fields.String(validate=_ID), validate=validate.Length(min=1, max=1000))
    workflowInstanceId = fields.String(validate=_ID)
    reason = fields.String(validate=validate.Length(max=1000), allow_none=True)
    force = fields.Boolean(load_default=False)


class CompleteTaskSchema(Schema):
    """The body of `POST /api/v1/tasks/{id}/complete`."""

    class Meta:
        unknown = RAISE

    output = fields.Raw(required=True)


class SubmitJobSchema(Schema):
    """The body of `POST /api/v1/task-apis/{apiName}` (both fields optional)."""

    class Meta:
        unknown = RAISE

    timeout = fields.Integer(
        strict=True,  # refuses 1.5, "60" and true
        allow_none=True,
        validate=validate.Range(min=1, max=MAX_JOB_TIMEOUT_SECONDS),
        metadata={"description": "Seconds since submission before the job is terminated"},
    )
    config = fields.Dict(
        keys=fields.String(),
        allow_none=True,
        metadata={"description": "Merged over the definition's default config: the task input"},
    )


class StatusList(fields.String):
    """One status or several, comma-separated or repeated (`status=PENDING,RUNNING`)."""

    is_multiple = True  # webargs passes every `status=` value, not just the first
    choices: list[str] = STATUSES
    noun = "status"

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            raise FieldError(f"expected {self.noun} names separated by commas")
        names = [name.strip() for v in values for name in v.split(",") if name.strip()]
        if not names:
            raise FieldError(f"give at least one {self.noun}")
        unknown = [name for name in names if name not in self.choices]
        if unknown:
            raise FieldError(
                f"unknown {self.noun} {', '.join(unknown)};"
                f" expected one of {', '.join(self.choices)}"
            )
        return tuple(dict.fromkeys(names))


class PendingReasonList(StatusList):
    """One pendingReason or several (`pendingReason=QUEUED,NO_WORKER`)."""

    choices = [r.value for r in PendingReason]
    noun = "pendingReason"


class ListTasksQuery(Schema):
    """The query of `GET /api/v1/tasks`; an unknown parameter is an error, not ignored."""

    class Meta:
        unknown = RAISE

    status = StatusList(metadata={"description": "One status or several, comma-separated"})
    type = fields.String(validate=validate.OneOf(TYPES))
    workflowInstanceId = fields.String(validate=_ID)
    taskDefinitionId = fields.String(validate=_ID)
    scheduleId = fields.UUID(metadata={"description": "Tasks a schedule fired or triggered"})
    pendingReason = PendingReasonList(
        metadata={"description": "Waiting tasks by why they wait; one reason or several"}
    )
    createdAfter = UtcDateTime(
        format="iso", metadata={"description": "RFC 3339; tasks created at or after it"}
    )
    createdBefore = UtcDateTime(
        format="iso", metadata={"description": "RFC 3339; tasks created before it"}
    )
    page = fields.Integer(
        validate=validate.Range(min=1, max=MAX_PAGE),
        metadata={"description": "Page number, from 1 (the default)"},
    )
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(
        validate=validate.Length(min=1, max=200),
        metadata={"description": "The `nextCursor` of the previous page (instead of `page`)"},
    )


#: The statuses a task can be replayed from (POST /api/v1/tasks/{id}/retry).
RETRYABLE = (Status.FAILED.value, Status.TIMED_OUT.value, Status.CANCELLED.value)
MAX_RETRY_BATCH = 1000


class RetryTaskSchema(Schema):
    """The optional body of `POST /api/v1/tasks/{id}/retry`: what the replay changes."""

    class Meta:
        unknown = RAISE

    input = fields.Dict(
        metadata={"description": "Instead of the original's; checked against the current schema"}
    )
    executionConfig = fields.Nested(
        ExecutionConfigSchema,
        metadata={"description": "Instead of the original's timeout and retry policy"},
    )
    priority = fields.String(
        validate=validate.OneOf([p.value for p in Priority]),
        metadata={"description": "Instead of the original's"},
    )


class RetryFilterSchema(Schema):
    """Which tasks a retry by filter replays (each not yet retried, newest first)."""

    class Meta:
        unknown = RAISE

    status = StatusList(
        validate=validate.ContainsOnly(RETRYABLE),
        metadata={"description": "FAILED, TIMED_OUT or CANCELLED, comma-separated; default all"},
    )
    taskDefinitionId = fields.String(validate=_ID)
    workflowInstanceId = fields.String(validate=_ID)
    createdAfter = UtcDateTime(format="iso", metadata={"description": "RFC 3339, inclusive"})
    createdBefore = UtcDateTime(format="iso", metadata={"description": "RFC 3339, exclusive"})


class BulkRetrySchema(Schema):
    """The body of `POST /api/v1/tasks/retry`: ids, or a filter with a limit."""

    class Meta:
        unknown = RAISE

    ids = fields.List(
        fields.String(validate=_ID), validate=validate.Length(min=1, max=MAX_RETRY_BATCH)
    )
    filter = fields.Nested(RetryFilterSchema)
    limit = fields.Integer(
        strict=True,
        validate=validate.Range(min=1, max=MAX_RETRY_BATCH),
        metadata={"description": "With filter: at most this many tasks (default 100)"},
    )

    @validates_schema
    def _ids_or_filter(self, data: dict[str, Any], **kwargs: Any) -> None:
        if ("ids" in data) == ("filter" in data):
            raise FieldError("give either ids or filter", field_name="ids")
        if "limit" in data and "filter" not in data:
            raise FieldError("limit goes with filter", field_name="limit")


class ListDefinitionsQuery(Schema):
    """The query of `GET /api/v1/tasks/definitions`."""

    class Meta:
        unknown = RAISE

    type = fields.String(validate=validate.OneOf(TYPES))
    search = fields.String(
        validate=validate.Length(max=200),
        metadata={"description": "Case-insensitive text in the name or description"},
    )
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=MAX_PAGE))
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))


class LogQuerySchema(Schema):
    """The query of `GET /api/v1/tasks/{id}/logs`."""

    after = fields.Integer(
        load_default=0,
        validate=validate.Range(min=0),
        metadata={"description": "Return lines whose seq is greater (the last nextAfter)"},
    )
    limit = fields.Integer(
        load_default=DEFAULT_LOG_LIMIT,
        validate=validate.Range(min=1, max=MAX_LOG_LIMIT),
        metadata={"description": f"Lines per page, 1 to {MAX_LOG_LIMIT}"},
    )


def load_bulk_item(schema: SubmitTaskSchema, index: int, raw: Any) -> dict[str, Any]:
    """Validate one bulk item's envelope; field names in errors are relative to the item."""
    if not isinstance(raw, dict):
        raise ValidationError(
            "each task must be a JSON object",
            {"field": f"tasks[{index}]", "issue": "not an object", "location": "body"},
        )
    try:
        return schema.load(raw)  # type: ignore[no-any-return]
    except FieldError as exc:
        details = field_errors(exc.messages)
        raise ValidationError(f"Invalid {details['field']}: {details['issue']}", details) from exc
