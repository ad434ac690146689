"""Marshmallow schemas of the webhook requests: subscriptions and the delivery-log query."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from marshmallow import RAISE, Schema, fields, validate
from marshmallow import ValidationError as FieldError

from api.pagination import MAX_PAGE
from api.schemas import UtcDateTime
from shared.store.webhooks import DEFAULT_EVENTS, TASK_EVENTS
from shared.webhook_targets import MAX_URL_LENGTH, validate_url

_ID = validate.Length(min=1, max=200)
MAX_DESCRIPTION = 1000
DELIVERY_STATUSES = ("PENDING", "DELIVERED", "FAILED")
#: Deliveries one redelivery by filter takes at most (the rest: call again with its cursor).
MAX_REDELIVER_BATCH = 10_000


def check_url(value: str) -> None:
    """An absolute http or https URL with a host and no credentials.

    Whether its address may be reached depends on TASKEXEC_WEBHOOK_ALLOW_PRIVATE: the view
    checks a literal address against it, and the deliverer every resolved one.
    """
    if any(not c.isprintable() for c in value):
        raise FieldError("must not contain control characters")
    issue = validate_url(value, allow_private=True)
    if issue is not None:
        raise FieldError(issue)


class EventList(fields.List):
    """Event types, each named when unknown; duplicates dropped, kept in the documented order."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(
            fields.String(validate=validate.OneOf(TASK_EVENTS)),
            validate=validate.Length(min=1, error="give at least one event (or disable it)"),
            metadata={"description": "Of " + ", ".join(TASK_EVENTS)},
            **kw,
        )

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> list[Any | None]:
        if isinstance(value, list):
            unknown = [v for v in value if isinstance(v, str) and v not in TASK_EVENTS]
            if unknown:
                raise FieldError(f"unknown event {unknown[0]!r}; known: {', '.join(TASK_EVENTS)}")
        names = super()._deserialize(value, attr, data, **kwargs)
        return [e for e in TASK_EVENTS if e in names]


class WebhookFilterSchema(Schema):
    """Which tasks' events a subscription receives; an absent or null field matches every task."""

    class Meta:
        unknown = RAISE

    taskDefinitionId = fields.String(allow_none=True, validate=_ID)
    workflowInstanceId = fields.String(allow_none=True, validate=_ID)


_URL_CHECKS: list[Callable[[Any], Any]] = [validate.Length(min=1, max=MAX_URL_LENGTH), check_url]
_URL = {"description": "http or https; private addresses are refused when delivering"}


class CreateWebhookSchema(Schema):
    """The body of `POST /api/v1/webhooks`."""

    class Meta:
        unknown = RAISE

    url = fields.String(required=True, validate=_URL_CHECKS, metadata=_URL)
    events = EventList(load_default=list(DEFAULT_EVENTS))
    filter = fields.Nested(WebhookFilterSchema, load_default=dict)
    description = fields.String(allow_none=True, validate=validate.Length(max=MAX_DESCRIPTION))


class PatchWebhookSchema(Schema):
    """The body of `PATCH /api/v1/webhooks/{id}`: any field; `filter` replaces the whole filter."""

    class Meta:
        unknown = RAISE

    url = fields.String(validate=_URL_CHECKS, metadata=_URL)
    events = EventList()
    filter = fields.Nested(
        WebhookFilterSchema, allow_none=True, metadata={"description": "null: every task"}
    )
    description = fields.String(allow_none=True, validate=validate.Length(max=MAX_DESCRIPTION))
    disabled = fields.Boolean(
        metadata={"description": "false re-enables (and clears disabledReason and failingSince)"}
    )


class _Page(Schema):
    class Meta:
        unknown = RAISE

    page = fields.Integer(
        validate=validate.Range(min=1, max=MAX_PAGE),
        metadata={"description": "Page number, from 1 (the default)"},
    )
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(
        validate=validate.Length(min=1, max=200),
        metadata={"description": "The `nextCursor` of the previous page (instead of `page`)"},
    )


class ListWebhooksQuery(_Page):
    """The query of `GET /api/v1/webhooks`."""

    disabled = fields.Boolean()
    event = fields.String(
        validate=validate.OneOf(TASK_EVENTS), metadata={"description": "Subscribed to this event"}
    )


class ListDeliveriesQuery(_Page):
    """The query of `GET /api/v1/webhooks/{id}/deliveries`."""

    status = fields.String(validate=validate.OneOf(DELIVERY_STATUSES))
    taskId = fields.UUID(metadata={"description": "The deliveries of one task's events"})


class RedeliverFilterSchema(Schema):
    """Which of a subscription's deliveries a redelivery by filter sends again."""

    class Meta:
        unknown = RAISE

    status = fields.String(
        validate=validate.OneOf(DELIVERY_STATUSES),
        metadata={"description": "FAILED (the default), DELIVERED, or PENDING (due now)"},
    )
    taskId = fields.UUID(metadata={"description": "The deliveries of one task's events"})
    createdAfter = UtcDateTime(
        format="iso", metadata={"description": "RFC 3339: events at or after it"}
    )
    createdBefore = UtcDateTime(
        format="iso", metadata={"description": "RFC 3339: events before it"}
    )


class RedeliverManySchema(Schema):
    """The body of `POST /api/v1/webhooks/{id}/deliveries/redeliver` (every field optional)."""

    class Meta:
        unknown = RAISE

    filter = fields.Nested(RedeliverFilterSchema, load_default=dict)
    limit = fields.Integer(
        load_default=1000,
        validate=validate.Range(min=1, max=MAX_REDELIVER_BATCH),
        metadata={"description": "At most this many, oldest first (default 1000)"},
    )
    cursor = fields.String(
        validate=validate.Length(min=1, max=200),
        metadata={"description": "The `nextCursor` of the previous call: go on after it"},
    )
