"""Webhook subscriptions: their rows, listing, changes and secret rotation."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.store._rows import Conn, all_, one, scalar

#: The task events a subscription may ask for (the task trigger queues them: migration 0014).
TASK_EVENTS = (
    "task.started",
    "task.retrying",
    "task.completed",
    "task.failed",
    "task.timed_out",
    "task.cancelled",
)
#: What a subscription receives when it names no events: the terminal ones.
DEFAULT_EVENTS = ("task.completed", "task.failed", "task.timed_out", "task.cancelled")
#: How long the secret a rotation replaces keeps signing beside the new one.
PREVIOUS_SECRET_LIFETIME = timedelta(hours=24)
#: The reason a subscription disabled through the API shows.
DISABLED_BY_REQUEST = "disabled through the API"


@dataclass(frozen=True)
class Webhook:
    """One row of the webhooks table."""

    id: uuid.UUID
    owner: str
    admin: bool
    url: str
    events: list[str]
    task_definition_id: str | None
    workflow_instance_id: str | None
    description: str | None
    disabled: bool
    disabled_reason: str | None
    disabled_at: datetime | None
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime


#: The columns a client writes (POST and PATCH); the rest the service keeps.
WRITABLE = (
    "admin",
    "url",
    "events",
    "task_definition_id",
    "workflow_instance_id",
    "description",
)


def insert_webhook(
    conn: Conn, webhook_id: uuid.UUID, owner: str, secret: str, values: dict[str, Any]
) -> Webhook:
    """Store a new, enabled subscription (`values` keyed by WRITABLE columns)."""
    columns = [c for c in WRITABLE if c in values]
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO webhooks (id, owner, secret, {', '.join(columns)})"
            f" VALUES (%s, %s, %s, {', '.join(['%s'] * len(columns))}) RETURNING *",
            [webhook_id, owner, secret] + [values[c] for c in columns],
        )
        row = one(cur, Webhook)
        assert row is not None
        return row


def count_webhooks_of(conn: Conn, owner: str) -> int:
    """How many subscriptions `owner` has, holding a lock on its name until the transaction ends.

    Two creates at once count one after the other, so a limit checked on this count holds.
    """
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('webhooks:' || %s, 0))", (owner,)
        )
        cur.execute("SELECT count(*) FROM webhooks WHERE owner = %s", (owner,))
        return scalar(cur, int)


def get_webhook(
    conn: Conn, webhook_id: uuid.UUID, owner: str | None, *, lock: bool = False
) -> Webhook | None:
    """Return a subscription; with `owner`, only if that principal owns it (lock: FOR UPDATE)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT * FROM webhooks WHERE id = %s AND (%s::text IS NULL OR owner = %s)"
            + (" FOR UPDATE" if lock else ""),
            (webhook_id, owner, owner),
        )
        return one(cur, Webhook)


def update_webhook(
    conn: Conn, webhook_id: uuid.UUID, values: dict[str, Any], disabled: bool | None = None
) -> Webhook:
    """Write the given WRITABLE columns; `disabled` True/False disables or re-enables.

    Disabling keeps the reason and time of an earlier disable (the deliverer's, say);
    re-enabling clears them and `failing_since`, so the failure clock starts afresh.
    """
    columns = [c for c in WRITABLE if c in values]
    sets = "".join(f", {c} = %s" for c in columns)
    params: list[Any] = [values[c] for c in columns]
    if disabled is True:
        sets += (
            ", disabled_reason = CASE WHEN disabled THEN disabled_reason ELSE %s END"
            ", disabled_at = CASE WHEN disabled THEN disabled_at ELSE now() END"
            ", disabled = true"
        )
        params.append(DISABLED_BY_REQUEST)
    elif disabled is False:
        sets += (
            ", disabled = false, disabled_reason = NULL, disabled_at = NULL, failing_since = NULL"
        )
    with conn.cursor() as cur:
        cur.execute(
            f"UPDATE webhooks SET updated_at = now(){sets} WHERE id = %s RETURNING *",
            [*params, webhook_id],
        )
        row = one(cur, Webhook)
        assert row is not None
        return row


def rotate_webhook_secret(conn: Conn, webhook_id: uuid.UUID, secret: str) -> Webhook:
    """Make `secret` the signing secret; the current one signs beside it for 24 hours.

    A second rotation within the 24 hours replaces the kept one: at most two secrets sign.
    """
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE webhooks SET previous_secret = secret, previous_secret_expires_at = now() + %s,"
            " secret = %s, updated_at = now() WHERE id = %s RETURNING *",
            (PREVIOUS_SECRET_LIFETIME, secret, webhook_id),
        )
        row = one(cur, Webhook)
        assert row is not None
        return row


def delete_webhook(conn: Conn, webhook_id: uuid.UUID, owner: str | None) -> bool:
    """Delete a subscription and its delivery log; False if no such (visible) one."""
    with conn.cursor() as cur:
        cur.execute(
            "DELETE FROM webhooks WHERE id = %s AND (%s::text IS NULL OR owner = %s)",
            (webhook_id, owner, owner),
        )
        return bool(cur.rowcount)


@dataclass(frozen=True)
class WebhookFilter:
    """The listing filters; None means no filter."""

    owner: str | None = None
    disabled: bool | None = None
    event: str | None = None


def list_webhooks(
    conn: Conn,
    flt: WebhookFilter,
    *,
    limit: int,
    offset: int = 0,
    after: tuple[datetime, uuid.UUID] | None = None,
) -> tuple[list[Webhook], int]:
    """Page through subscriptions newest first (by offset or a cursor); return (page, total)."""
    where: list[str] = ["TRUE"]
    params: list[Any] = []
    if flt.owner is not None:
        where.append("owner = %s")
        params.append(flt.owner)
    if flt.disabled is not None:
        where.append("disabled = %s")
        params.append(flt.disabled)
    if flt.event is not None:
        where.append("%s = ANY(events)")
        params.append(flt.event)
    clause = " AND ".join(where)
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM webhooks WHERE {clause}", params)
        row = cur.fetchone()
        total = int(row[0]) if row else 0
        if after is not None:
            clause += " AND (created_at, id) < (%s, %s)"
            params += [after[0], after[1]]
            offset = 0
        cur.execute(
            f"SELECT * FROM webhooks WHERE {clause}"
            " ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s",
            [*params, limit, offset],
        )
        return all_(cur, Webhook), total
