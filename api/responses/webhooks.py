"""How webhook subscriptions and their deliveries look on the wire (camelCase, RFC 3339 UTC)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields

from api.pagination import TaskPaginationSchema
from api.responses import enum_field, rfc3339, time_field
from shared.store import Delivery, Webhook
from shared.store.deliveries import DELIVERY_STATUSES, TEST_EVENT
from shared.store.webhooks import TASK_EVENTS

#: What a delivery's `type` may be: a task event, or the test event of POST .../test.
DELIVERY_TYPES = [*TASK_EVENTS, TEST_EVENT]


class WebhookFilterOutSchema(Schema):
    taskDefinitionId = fields.String(required=True, allow_none=True)
    workflowInstanceId = fields.String(required=True, allow_none=True)


class WebhookSchema(Schema):
    id = fields.String(required=True, metadata={"format": "uuid"})
    url = fields.String(required=True)
    events = fields.List(enum_field(list(TASK_EVENTS)), required=True)
    filter = fields.Nested(WebhookFilterOutSchema, required=True)
    description = fields.String(required=True, allow_none=True)
    scope = enum_field(
        ["own", "all"],
        required=True,
        metadata={
            "description": "own: the owner's tasks only; all: every owner's (the subscription"
            " was created or last changed with tasks:admin)"
        },
    )
    disabled = fields.Boolean(required=True)
    disabledReason = fields.String(
        required=True, allow_none=True, metadata={"description": "Why it was disabled"}
    )
    disabledAt = time_field(required=True, allow_none=True)
    failingSince = time_field(
        "Deliveries have failed since then (null while they succeed); past the configured"
        " period the subscription is disabled",
        required=True,
        allow_none=True,
    )
    previousSecretExpiresAt = time_field(
        "Until then the secret a rotation replaced still signs beside the new one",
        required=True,
        allow_none=True,
    )
    createdAt = time_field(required=True)
    updatedAt = time_field(required=True)


class WebhookWithSecretSchema(WebhookSchema):
    secret = fields.String(
        required=True,
        metadata={"description": "whsec_…: shown only on create and rotate-secret; keep it"},
    )


def webhook_json(row: Webhook, *, secret: bool = False) -> dict[str, Any]:
    """A subscription, as every webhook endpoint returns it; the secret only when asked."""
    doc: dict[str, Any] = {
        "id": str(row.id),
        "url": row.url,
        "events": list(row.events),
        "filter": {
            "taskDefinitionId": row.task_definition_id,
            "workflowInstanceId": row.workflow_instance_id,
        },
        "description": row.description,
        "scope": "all" if row.admin else "own",
        "disabled": row.disabled,
        "disabledReason": row.disabled_reason,
        "disabledAt": rfc3339(row.disabled_at),
        "failingSince": rfc3339(row.failing_since),
        "previousSecretExpiresAt": rfc3339(row.previous_secret_expires_at)
        if row.previous_secret is not None
        else None,
        "createdAt": rfc3339(row.created_at),
        "updatedAt": rfc3339(row.updated_at),
    }
    if secret:
        doc["secret"] = row.secret
    return doc


class WebhookListSchema(Schema):
    items = fields.List(fields.Nested(WebhookSchema), required=True)
    pagination = fields.Nested(TaskPaginationSchema, required=True)
    nextCursor = fields.String(metadata={"description": "Pass as `cursor` for the next page"})


def page_json(
    items: list[dict[str, Any]], pagination: dict[str, Any], cursor: str | None
) -> dict[str, Any]:
    """A page of a list; `nextCursor` only while more follow."""
    doc: dict[str, Any] = {"items": items, "pagination": pagination}
    if cursor is not None:
        doc["nextCursor"] = cursor
    return doc


class DeliverySchema(Schema):
    id = fields.String(required=True, metadata={"format": "uuid"})
    eventId = fields.String(
        required=True, metadata={"format": "uuid", "description": "The webhook-id header"}
    )
    type = enum_field(DELIVERY_TYPES, required=True)
    taskId = fields.String(required=True, allow_none=True, metadata={"format": "uuid"})
    status = enum_field(list(DELIVERY_STATUSES), required=True)
    attempts = fields.Integer(required=True)
    lastAttemptAt = time_field(required=True, allow_none=True)
    nextAttemptAt = time_field(
        "When the next attempt is due (PENDING only)", required=True, allow_none=True
    )
    responseStatus = fields.Integer(
        required=True, allow_none=True, metadata={"description": "The last attempt's HTTP status"}
    )
    responseTimeMs = fields.Integer(required=True, allow_none=True)
    error = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "Why the last attempt failed (refused address, timeout, status)"},
    )
    createdAt = time_field(required=True)


class DeliveryListSchema(Schema):
    items = fields.List(fields.Nested(DeliverySchema), required=True)
    pagination = fields.Nested(TaskPaginationSchema, required=True)
    nextCursor = fields.String(metadata={"description": "Pass as `cursor` for the next page"})


class RedeliveredSchema(Schema):
    redelivered = fields.Integer(
        required=True, metadata={"description": "Deliveries made PENDING and due now"}
    )
    nextCursor = fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "Pass as `cursor` with the same filter for the next ones; null: done"
        },
    )


def delivery_json(row: Delivery) -> dict[str, Any]:
    """One delivery of the log; `nextAttemptAt` only while one is due."""
    return {
        "id": str(row.id),
        "eventId": str(row.event_id),
        "type": row.type,
        "taskId": None if row.task_id is None else str(row.task_id),
        "status": row.status,
        "attempts": row.attempts,
        "lastAttemptAt": rfc3339(row.last_attempt_at),
        "nextAttemptAt": rfc3339(row.next_attempt_at) if row.status == "PENDING" else None,
        "responseStatus": row.response_status,
        "responseTimeMs": row.response_time_ms,
        "error": row.error,
        "createdAt": rfc3339(row.created_at),
    }
