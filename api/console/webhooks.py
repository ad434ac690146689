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
from api.webhook_schemas import MAX_REDELIVER_BATCH
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
        exact_max = services().settings.list_exact_count_max
        total, exact = store.count_delivery_log(conn, row.id, status=status, exact_max=exact_max)
        may_redeliver = current_principal().can("webhooks:write") and not row.disabled
        # The failed ones, for the button that sends them all again (by their own index;
        # already counted when the log is filtered on them).
        if not may_redeliver:
            failed = (0, True)
        elif status == "FAILED":
            failed = (total, exact)
        else:
            failed = store.count_delivery_log(conn, row.id, status="FAILED", exact_max=exact_max)
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
        may_redeliver=may_redeliver,
        failed=failed,
        notice=_notice(request.args),
        prev=query_string({**base, "page": page - 1}) if page > 1 else None,
        next=query_string({**base, "page": page + 1}) if more else None,
    )


def _notice(args: Any) -> str | None:
    """What the redirect after a redelivery says it did."""
    done = args.get("done")
    if done == "redeliver":
        return "Queued for delivery again."
    if done == "failed":
        count = args.get("n", "")
        if not count.isdigit():
            return None
        plural = "delivery" if count == "1" else "deliveries"
        rest = " More remain: redeliver again." if args.get("more") == "1" else ""
        return f"{count} failed {plural} queued for delivery again.{rest}"
    return None


def _writable(conn: store.Conn, webhook_id: str) -> store.Webhook:
    """The subscription, locked as the API locks it; 409 while it is disabled."""
    row = _load(conn, webhook_id, lock=True)  # as the API: no disable slips in between
    if row.disabled:
        raise Conflict(
            f"webhook {row.id} is disabled; re-enable it to redeliver",
            {"webhookId": str(row.id), "disabledReason": row.disabled_reason},
        )
    return row


@bp.route("/webhooks/<webhook_id>/redeliver-failed", methods=["POST"])
@requires("webhooks:write")
def redeliver_failed(webhook_id: str) -> Response:
    """Send every failed delivery again, oldest first, up to a batch (the API's by filter)."""
    with services().db.connection() as conn:
        row = _writable(conn, webhook_id)
        count, _ = store.redeliver_matching(
            conn, row.id, status="FAILED", limit=MAX_REDELIVER_BATCH
        )
    more = "1" if count == MAX_REDELIVER_BATCH else "0"
    target = url_for("console.webhook", webhook_id=webhook_id, done="failed", n=count, more=more)
    return redirect(target, code=303)


@bp.route("/webhooks/<webhook_id>/deliveries/<delivery_id>/redeliver", methods=["POST"])
@requires("webhooks:write")
def redeliver(webhook_id: str, delivery_id: str) -> Response:
    """Send a delivery again (the API's redeliver): 409 while the subscription is disabled."""
    with services().db.connection() as conn:
        row = _writable(conn, webhook_id)
        try:
            wanted: uuid.UUID | None = uuid.UUID(delivery_id)
        except ValueError:
            wanted = None
        delivery = None if wanted is None else store.redeliver(conn, row.id, wanted)
        if delivery is None:
            raise NotFound(f"delivery {delivery_id} not found", {"deliveryId": delivery_id})
    target = url_for("console.webhook", webhook_id=webhook_id, done="redeliver")
    return redirect(target, code=303)
