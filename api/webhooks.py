"""The webhook endpoints under /api/v1/webhooks: subscriptions and their delivery log (issue 15)."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Response, jsonify, url_for
from marshmallow import RAISE

from api import openapi, operations
from api.auth import current_principal, requires
from api.errors import located
from api.limits import bulk_limit
from api.pagination import decode_cursor, encode_cursor, page_doc, position
from api.parsing import Blueprint
from api.responses.webhooks import (
    DeliveryListSchema,
    DeliverySchema,
    RedeliveredSchema,
    WebhookListSchema,
    WebhookSchema,
    WebhookWithSecretSchema,
    delivery_json,
    page_json,
    webhook_json,
)
from api.services import services
from api.webhook_schemas import (
    CreateWebhookSchema,
    ListDeliveriesQuery,
    ListWebhooksQuery,
    PatchWebhookSchema,
    RedeliverManySchema,
)
from shared import store
from shared.errors import Conflict, NotFound, ValidationError
from shared.webhook_signing import new_secret
from shared.webhook_targets import validate_url

blp = Blueprint(
    "webhooks",
    __name__,
    url_prefix="/api/v1/webhooks",
    description="Webhook subscriptions: signed task events, and their delivery log",
)


def _columns(body: dict[str, Any]) -> dict[str, Any]:
    """The columns a create or patch body writes (`filter` replaces both of its fields)."""
    values: dict[str, Any] = {k: body[k] for k in ("url", "events", "description") if k in body}
    if "filter" in body:
        flt = body["filter"] or {}
        values["task_definition_id"] = flt.get("taskDefinitionId")
        values["workflow_instance_id"] = flt.get("workflowInstanceId")
    return values


def _check_target(url: str) -> None:
    """400 for a literal loopback, private or metadata address, unless they are allowed.

    A host name is not resolved here: it may not exist yet, and may change; the deliverer
    resolves and checks it at every delivery.
    """
    issue = validate_url(url, services().settings.webhook_allow_private)
    if issue is not None:
        raise ValidationError(
            f"Invalid url: {issue}",
            located([{"field": "url", "issue": issue}], "body"),
        )


def _uuid(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


def _load(conn: store.Conn, raw_id: str, lock: bool = False) -> store.Webhook:
    """The caller's subscription (any with tasks:admin), or 404."""
    webhook_id = _uuid(raw_id)
    row = (
        None
        if webhook_id is None
        else store.get_webhook(
            conn, webhook_id, operations.owner_scope(current_principal()), lock=lock
        )
    )
    if row is None:
        raise NotFound(f"webhook {raw_id} not found", {"webhookId": raw_id})
    return row


_LINKS = {
    "GetWebhook": {"operationId": "getWebhook", "parameters": {"webhook_id": "$response.body#/id"}},
    "ListWebhookDeliveries": {
        "operationId": "listWebhookDeliveries",
        "parameters": {"webhook_id": "$response.body#/id"},
    },
}


@blp.route("", methods=["POST"], strict_slashes=False)
@requires("webhooks:write")
@blp.arguments(CreateWebhookSchema())
@blp.doc(
    operationId="createWebhook",
    responses=openapi.responses(
        {201: openapi.ok(WebhookWithSecretSchema, "Created", ("Location",), _LINKS)}, 409
    ),
)
def create_webhook(body: dict[str, Any]) -> tuple[Response, int, dict[str, str]]:
    """Subscribe a URL to task events.

    Request: {"url": "https://…", "events": ["task.completed", …] (default: the four
              terminal ones), "filter": {"taskDefinitionId": "…", "workflowInstanceId": "…"},
              "description": "…"}
    Response 201 (+ `Location`): the subscription with its signing `secret` (`whsec_…`),
    shown only here and by rotate-secret. It receives the events of the caller's tasks,
    or of every owner's tasks when the caller holds tasks:admin (`scope: all`).
    Errors: 400 naming the field (a URL other than http/https, an unknown event), 409 the
    owner has TASKEXEC_WEBHOOK_MAX_PER_OWNER subscriptions already.
    """
    principal = current_principal()
    _check_target(body["url"])
    values = _columns(body)
    values["admin"] = principal.is_admin
    limit = services().settings.webhook_max_per_owner
    with services().db.connection() as conn:
        if limit and store.count_webhooks_of(conn, principal.subject) >= limit:
            raise Conflict(
                f"{principal.subject} has {limit} webhook subscriptions, the most allowed"
                " (TASKEXEC_WEBHOOK_MAX_PER_OWNER); delete one or subscribe it to more events",
                {"limit": limit},
            )
        row = store.insert_webhook(conn, uuid.uuid4(), principal.subject, new_secret(), values)
    location = url_for("webhooks.get_webhook", webhook_id=str(row.id))
    return jsonify(webhook_json(row, secret=True)), 201, {"Location": location}


@blp.route("", methods=["GET"], strict_slashes=False)
@requires("webhooks:read")
@blp.arguments(ListWebhooksQuery, location="query", unknown=RAISE)
@blp.doc(
    operationId="listWebhooks",
    responses=openapi.responses({200: openapi.ok(WebhookListSchema, "A page of subscriptions")}),
)
def list_webhooks(query: dict[str, Any]) -> Response:
    """List subscriptions newest first; filters `disabled`, `event`; page or cursor.

    Errors: 400 naming the parameter (page with cursor, bad cursor, limit outside 1..100).
    """
    page, after = position(query)
    limit = query["limit"]
    flt = store.WebhookFilter(
        owner=operations.owner_scope(current_principal()),
        disabled=query.get("disabled"),
        event=query.get("event"),
    )
    with services().db.connection() as conn:
        rows, total = store.list_webhooks(
            conn, flt, limit=limit + 1, offset=((page or 1) - 1) * limit, after=after
        )
    more, rows = len(rows) > limit, rows[:limit]
    cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
    items = [webhook_json(r) for r in rows]
    return jsonify(page_json(items, page_doc(page, limit, total, True), cursor))


@blp.route("/<webhook_id>", methods=["GET"])
@requires("webhooks:read")
@blp.doc(
    operationId="getWebhook",
    responses=openapi.responses({200: openapi.ok(WebhookSchema, "The subscription")}, 404),
)
def get_webhook(webhook_id: str) -> Response:
    """Get a subscription (never its secret). Errors: 404 unknown (or another's) subscription."""
    with services().db.connection() as conn:
        row = _load(conn, webhook_id)
    return jsonify(webhook_json(row))


@blp.route("/<webhook_id>", methods=["PATCH"])
@requires("webhooks:write")
@blp.arguments(PatchWebhookSchema())
@blp.doc(
    operationId="updateWebhook",
    responses=openapi.responses({200: openapi.ok(WebhookSchema, "The subscription")}, 404),
)
def update_webhook(body: dict[str, Any], webhook_id: str) -> Response:
    """Change url, events, filter, description; `disabled: true|false` disables or re-enables.

    Re-enabling clears `disabledReason`, `disabledAt` and `failingSince`; deliveries the
    subscription missed while disabled are not made up (redeliver them from the log).
    A change by the owner re-reads its tasks:admin (the `scope`); a tasks:admin caller
    changing another owner's subscription leaves its scope alone.
    Errors: 400 naming the field, 404 unknown subscription.
    """
    principal = current_principal()
    if "url" in body:
        _check_target(body["url"])
    with services().db.connection() as conn:
        row = _load(conn, webhook_id, lock=True)
        values = _columns(body)
        if row.owner == principal.subject:
            values["admin"] = principal.is_admin
        row = store.update_webhook(conn, row.id, values, body.get("disabled"))
    return jsonify(webhook_json(row))


@blp.route("/<webhook_id>", methods=["DELETE"])
@requires("webhooks:write")
@blp.doc(
    operationId="deleteWebhook",
    responses=openapi.responses({204: {"description": "Deleted"}}, 404),
)
def delete_webhook(webhook_id: str) -> tuple[str, int]:
    """Delete a subscription and its delivery log; pending deliveries are dropped.

    Errors: 404 unknown subscription.
    """
    with services().db.connection() as conn:
        row = _load(conn, webhook_id)
        store.delete_webhook(conn, row.id, None)
    return "", 204


@blp.route("/<webhook_id>/rotate-secret", methods=["POST"])
@requires("webhooks:write")
@blp.doc(
    operationId="rotateWebhookSecret",
    responses=openapi.responses(
        {200: openapi.ok(WebhookWithSecretSchema, "The subscription with its new secret")}, 404
    ),
)
def rotate_secret(webhook_id: str) -> Response:
    """Replace the signing secret; the new one is shown once, here.

    For 24 hours (`previousSecretExpiresAt`) every delivery carries two signatures, one by
    each secret, so a receiver can switch at leisure. Rotating again within them drops the
    older one. Errors: 404 unknown subscription.
    """
    with services().db.connection() as conn:
        row = _load(conn, webhook_id, lock=True)
        row = store.rotate_webhook_secret(conn, row.id, new_secret())
    return jsonify(webhook_json(row, secret=True))


def _enabled(row: store.Webhook, doing: str) -> None:
    """409 for a disabled subscription: its deliveries would fail unsent."""
    if row.disabled:
        raise Conflict(
            f"webhook {row.id} is disabled; re-enable it (PATCH disabled: false) to {doing}",
            {"webhookId": str(row.id), "disabledReason": row.disabled_reason},
        )


@blp.route("/<webhook_id>/test", methods=["POST"])
@requires("webhooks:write")
@blp.doc(
    operationId="testWebhook",
    responses=openapi.responses(
        {202: openapi.ok(DeliverySchema, "The test event's delivery, queued")}, 404, 409
    ),
)
def test_webhook(webhook_id: str) -> tuple[Response, int]:
    """Send a `webhook.test` event to this subscription only (whatever its events and filter).

    Its `data` is `{"webhookId", "message"}`; it is signed, retried and logged like any
    other delivery. Response 202: the delivery (follow it in the log).
    Errors: 404 unknown subscription, 409 the subscription is disabled.
    """
    with services().db.connection() as conn:
        row = _load(conn, webhook_id, lock=True)
        _enabled(row, "test it")
        data = {"webhookId": str(row.id), "message": "a test event from taskexec"}
        delivery = store.enqueue_test_event(conn, row.id, data)
    return jsonify(delivery_json(delivery)), 202


@blp.route("/<webhook_id>/deliveries", methods=["GET"])
@requires("webhooks:read")
@blp.arguments(ListDeliveriesQuery, location="query", unknown=RAISE)
@blp.doc(
    operationId="listWebhookDeliveries",
    responses=openapi.responses({200: openapi.ok(DeliveryListSchema, "A page of the log")}, 404),
)
def list_deliveries(query: dict[str, Any], webhook_id: str) -> Response:
    """The subscription's delivery log, newest first; filters `status`, `taskId`; page or cursor.

    Past TASKEXEC_LIST_EXACT_COUNT_MAX matching deliveries `totalItems` is an estimate
    (`totalItemsExact: false`), as in the task list.

    Errors: 400 naming the parameter, 404 unknown subscription.
    """
    page, after = position(query)
    limit = query["limit"]
    status, task_id = query.get("status"), query.get("taskId")
    with services().db.connection() as conn:
        row = _load(conn, webhook_id)
        rows = store.list_deliveries(
            conn,
            row.id,
            status=status,
            task_id=task_id,
            limit=limit + 1,
            offset=((page or 1) - 1) * limit,
            after=after,
        )
        total, exact = store.count_delivery_log(
            conn,
            row.id,
            status=status,
            task_id=task_id,
            exact_max=services().settings.list_exact_count_max,
        )
    more, rows = len(rows) > limit, rows[:limit]
    cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
    items = [delivery_json(d) for d in rows]
    return jsonify(page_json(items, page_doc(page, limit, total, exact), cursor))


@blp.route("/<webhook_id>/deliveries/<delivery_id>/redeliver", methods=["POST"])
@requires("webhooks:write")
@blp.doc(
    operationId="redeliverWebhookDelivery",
    responses=openapi.responses(
        {202: openapi.ok(DeliverySchema, "The delivery, PENDING and due now")}, 404, 409
    ),
)
def redeliver(webhook_id: str, delivery_id: str) -> tuple[Response, int]:
    """Send a delivery again, whatever its status, with the same `webhook-id` (event id).

    A FAILED one gets a fresh retry period counted from now; `attempts` keeps counting.
    Response 202: the delivery, PENDING. Errors: 404 unknown subscription or delivery (of
    another subscription), 409 the subscription is disabled.
    """
    with services().db.connection() as conn:
        row = _load(conn, webhook_id, lock=True)
        _enabled(row, "redeliver")
        wanted = _uuid(delivery_id)
        delivery = None if wanted is None else store.redeliver(conn, row.id, wanted)
        if delivery is None:
            raise NotFound(f"delivery {delivery_id} not found", {"deliveryId": delivery_id})
    return jsonify(delivery_json(delivery)), 202


@blp.route("/<webhook_id>/deliveries/redeliver", methods=["POST"])
@bulk_limit
@requires("webhooks:write")
@blp.arguments(RedeliverManySchema())
@blp.doc(
    operationId="redeliverWebhookDeliveries",
    responses=openapi.responses(
        {202: openapi.ok(RedeliveredSchema, "How many were redelivered, and where to go on")},
        404,
        409,
    ),
)
def redeliver_many(body: dict[str, Any], webhook_id: str) -> tuple[Response, int]:
    """Send again every delivery a filter matches: after an outage, or for a receiver's replay.

    Request (every field optional): {"filter": {"status": "FAILED", "taskId": "…",
    "createdAfter": "…", "createdBefore": "…"}, "limit": 1000, "cursor": "…"}. `status` is
    FAILED by default (DELIVERED replays what was received; PENDING brings retries waiting
    for their backoff forward); `createdAfter`/`createdBefore` bound the events' time. Oldest
    first, at most `limit` (at most 10,000) per call; each as the single redelivery does it
    (same `webhook-id`, a fresh retry period, `attempts` counting on).
    Response 202: {"redelivered": 1000, "nextCursor": "…"}: pass `nextCursor` as `cursor`
    with the same filter for the next ones, until it is null.
    Rate-limited by TASKEXEC_RATELIMIT_BULK.
    Errors: 400 naming the field, 404 unknown subscription, 409 the subscription is disabled.
    """
    wanted = body["filter"]
    after = decode_cursor(body["cursor"], location="body") if "cursor" in body else None
    limit = body["limit"]
    with services().db.connection() as conn:
        row = _load(conn, webhook_id, lock=True)
        _enabled(row, "redeliver")
        count, last = store.redeliver_matching(
            conn,
            row.id,
            status=wanted.get("status", "FAILED"),
            task_id=wanted.get("taskId"),
            created_after=wanted.get("createdAfter"),
            created_before=wanted.get("createdBefore"),
            after=after,
            limit=limit,
        )
    cursor = encode_cursor(*last) if last is not None and count == limit else None
    return jsonify({"redelivered": count, "nextCursor": cursor}), 202
