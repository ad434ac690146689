"""The console's webhooks pages: subscriptions, and each one's delivery log (with redeliver)."""

from __future__ import annotations

import uuid
from typing import Any

from flask import redirect, request, url_for
from werkzeug.wrappers import Response

from api import operations
from api.auth import current_principal, requires
from api.console.blueprint import bp, page_number, query_string, render
from api.pagination import page_doc
from api.responses.webhooks import delivery_json, webhook_json
from api.services import services
from shared import store
from shared.errors import Conflict, NotFound

PAGE_SIZE = 50


@bp.route("/webhooks")
@requires("webhooks:read")
def webhooks() -> tuple[str, int]:
    """Subscriptions newest first (the caller's own; everyone's with tasks:admin)."""
    page = page_number()
    flt = store.WebhookFilter(owner=operations.owner_scope(current_principal()))
    with services().db.connection() as conn:
        rows, total = store.list_webhooks(conn, flt, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    pagination = page_doc(page, PAGE_SIZE, total)
    return render(
        "webhooks.html",
        items=[webhook_json(r) for r in rows],
        pagination=pagination,
        prev=query_string({"page": page - 1}) if page > 1 else None,
        next=query_string({"page": page + 1}) if page < pagination["totalPages"] else None,
    )


def _load(conn: store.Conn, raw_id: str, lock: bool = False) -> store.Webhook:
    """The caller's subscription (any with tasks:admin), or 404, as the API finds it."""
    try:
        webhook_id = uuid.UUID(raw_id)
    except ValueError:
        webhook_id = None
    owner = operations.owner_scope(current_principal())
    row = None if webhook_id is None else store.get_webhook(conn, webhook_id, owner, lock=lock)
    if row is None:
        raise NotFound(f"webhook {raw_id} not found", {"webhookId": raw_id})
    return row


@bp.route("/webhooks/<webhook_id>")
@requires("webhooks:read")
def webhook(webhook_id: str) -> tuple[str, int]:
    """One subscription and its delivery log, newest first, filtered by status.

    Past TASKEXEC_LIST_EXACT_COUNT_MAX matching deliveries the total is an estimate, shown so.
    """
    status = request.args.get("status") or None
    if status not in (None, *store.DELIVERY_STATUSES):
        status = None
    page = page_number()
    with services().db.connection() as conn:
        row = _load(conn, webhook_id)
        # One row more than the page says whether another follows: past the exact cap the
        # total is an estimate, so it cannot say where the log ends (as the task list).
        rows = store.list_deliveries(
            conn, row.id, status=status, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE
        )
        total, exact = store.count_delivery_log(
            conn, row.id, status=status, exact_max=services().settings.list_exact_count_max
        )
    more, rows = len(rows) > PAGE_SIZE, rows[:PAGE_SIZE]
    pagination = page_doc(page, PAGE_SIZE, total, exact)
    base: dict[str, Any] = {"status": status}
    return render(
        "webhook.html",
        webhook=webhook_json(row),
        deliveries=[delivery_json(d) for d in rows],
        pagination=pagination,
        status=status or "",
        statuses=store.DELIVERY_STATUSES,
        may_redeliver=current_principal().can("webhooks:write") and not row.disabled,
        notice="Queued for delivery again." if request.args.get("done") == "redeliver" else None,
        prev=query_string({**base, "page": page - 1}) if page > 1 else None,
        next=query_string({**base, "page": page + 1}) if more else None,
    )


@bp.route("/webhooks/<webhook_id>/deliveries/<delivery_id>/redeliver", methods=["POST"])
@requires("webhooks:write")
def redeliver(webhook_id: str, delivery_id: str) -> Response:
    """Send a delivery again (the API's redeliver): 409 while the subscription is disabled."""
    with services().db.connection() as conn:
        row = _load(conn, webhook_id, lock=True)  # as the API: no disable slips in between
        if row.disabled:
            raise Conflict(
                f"webhook {row.id} is disabled; re-enable it to redeliver",
                {"webhookId": str(row.id), "disabledReason": row.disabled_reason},
            )
        try:
            wanted: uuid.UUID | None = uuid.UUID(delivery_id)
        except ValueError:
            wanted = None
        delivery = None if wanted is None else store.redeliver(conn, row.id, wanted)
        if delivery is None:
            raise NotFound(f"delivery {delivery_id} not found", {"deliveryId": delivery_id})
    target = url_for("console.webhook", webhook_id=webhook_id, done="redeliver")
    return redirect(target, code=303)
