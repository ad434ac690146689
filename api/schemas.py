"""Marshmallow schemas of the request envelopes (task input itself is checked by jsonschema)."""

from __future__ import annotations

from marshmallow import RAISE, Schema, fields, validate

from shared.status import Priority, Status, TaskType

_ID = validate.Length(min=1, max=200)
_MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000


class RetryPolicySchema(Schema):
    class Meta:
        unknown = RAISE

    maxRetries = fields.Integer(validate=validate.Range(min=0, max=100))
    retryInterval = fields.Integer(validate=validate.Range(min=0, max=_MAX_TIMEOUT_MS))
    backoffMultiplier = fields.Float(validate=validate.Range(min=1, max=100))
    retryOnTimeout = fields.Boolean()
    jitter = fields.Float(validate=validate.Range(min=0, max=1))


class ExecutionConfigSchema(Schema):
    class Meta:
        unknown = RAISE

    timeout = fields.Integer(
        validate=validate.Range(min=1, max=_MAX_TIMEOUT_MS),
        metadata={"description": "Milliseconds one attempt may run"},
    )
    retryPolicy = fields.Nested(RetryPolicySchema)


class SubmitTaskSchema(Schema):
    """The body of `POST /api/v1/tasks`."""

    class Meta:
        unknown = RAISE

    taskDefinitionId = fields.String(required=True, validate=_ID)
    workflowInstanceId = fields.String(allow_none=True, validate=_ID)
    input = fields.Dict(load_default=dict, metadata={"description": "Checked against inputSchema"})
    priority = fields.String(
        load_default=Priority.MEDIUM.value, validate=validate.OneOf([p.value for p in Priority])
    )
    executionConfig = fields.Nested(ExecutionConfigSchema, load_default=dict)
    idempotencyKey = fields.String(validate=validate.Length(min=1, max=200))


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


STATUSES = [s.value for s in Status]
TYPES = [t.value for t in TaskType]
