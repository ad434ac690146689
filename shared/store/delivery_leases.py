"""Webhook deliveries, the deliverers' side: claims, leases, outcomes (the log: deliveries)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.store._prepared import CUSTOM_PLANS, Prepared
from shared.store._rows import Conn, all_


@dataclass(frozen=True)
class Claimed:
    """A delivery a deliverer holds (until `locked_until`), with what sending it needs."""

    id: uuid.UUID
    event_id: uuid.UUID
    webhook_id: uuid.UUID
    type: str
    task_id: uuid.UUID | None
    attempts: int  # including the one about to be made
    created_at: datetime
    retry_from: datetime | None  # when a redelivery restarted the retry horizon
    locked_until: datetime
    event_created_at: datetime
    # The task row as it was at the change (to_jsonb), as JSON text: the deliveries of one
    # event share it, so the deliverer decodes it once per event, not once per delivery.
    task: str | None
    data: dict[str, Any] | None  # a test event's data
    url: str
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None
    disabled: bool
    disabled_reason: str | None
    failing_since: datetime | None
    owner: str = ""
    admin: bool = False
    # The owner's API keys at the claim: whether it has any, any active, any active one
    # with tasks:admin. An owner without keys (a JWT subject) cannot be checked.
    owner_keyed: bool = False
    owner_active: bool = True
    owner_admin: bool = True
    due_count: int = 0  # due rows the claim looked at (more than claimed: a backlog)


#: Sent before the claim's and the next-due look-up's statement (in the same implicit
#: transaction, so it ends with it): the first due rows in index order, never a bitmap scan
#: of every pending row sorted. The planner picks the latter when its statistics say the
#: table is small (freshly created or emptied, not analyzed since): measured 69 ms instead
#: of 0.3 ms per claim with 27,000 rows pending.
_INDEX_ORDER = "SET LOCAL enable_bitmapscan = off;"


#: The Claimed fields a lease takes from its subscription `w` (and the owner's API keys):
#: the claim's and the fan-out's (store.fan_out_and_lease) alike.
CLAIMED_SUBSCRIPTION = """
    w.url, w.secret, w.previous_secret, w.previous_secret_expires_at, w.disabled,
    w.disabled_reason, w.failing_since, w.owner, w.admin,
    EXISTS (SELECT 1 FROM api_keys k WHERE k.owner = w.owner) AS owner_keyed,
    EXISTS (SELECT 1 FROM api_keys k WHERE k.owner = w.owner AND k.revoked_at IS NULL)
        AS owner_active,
    EXISTS (SELECT 1 FROM api_keys k WHERE k.owner = w.owner AND k.revoked_at IS NULL
            AND k.permissions && ARRAY['tasks:admin', '*']) AS owner_admin
"""

#: What a claim returns for each leased delivery (the Claimed fields, in order).
_CLAIMED = f"""
    d.id, d.event_id, d.webhook_id, d.type, d.task_id, d.attempts, d.created_at, d.retry_from,
    d.locked_until, e.created_at AS event_created_at, e.task::text AS task, e.data,
    {CLAIMED_SUBSCRIPTION}
"""


#: The claim: prepared, as every look of every deliverer runs it, but planned each time
#: (CUSTOM_PLANS): its plan depends on the LIMITs' values. Saves only the parsing.
_CLAIM = Prepared(
    "taskexec_claim_deliveries",
    f"""
            WITH RECURSIVE pending AS (
                -- The subscriptions with pending rows, one index probe each (a skip scan of
                -- webhook_deliveries_pending, migration 0020). Reading the due rows in due
                -- order instead walked every due row of a subscription at its cap (a slow
                -- receiver's backlog) before reaching anyone else's: 2 ms per claim at
                -- 15,000 such rows, growing with them.
                (SELECT webhook_id FROM webhook_deliveries
                 WHERE status = 'PENDING' ORDER BY webhook_id LIMIT 1)
                UNION ALL
                SELECT (SELECT d.webhook_id FROM webhook_deliveries d
                        WHERE d.status = 'PENDING' AND d.webhook_id > p.webhook_id
                        ORDER BY d.webhook_id LIMIT 1)
                FROM pending p WHERE p.webhook_id IS NOT NULL
            ), due AS MATERIALIZED (
                -- Each free subscription's first due rows, one more than its cap can take (so
                -- a backlog shows in due_count), then the oldest of them.
                SELECT c.id, c.webhook_id, c.next_attempt_at
                FROM pending p
                CROSS JOIN LATERAL (
                    SELECT d.id, d.webhook_id, d.next_attempt_at FROM webhook_deliveries d
                    -- This subscription's rows due by now, as a range of the pending
                    -- index (row comparisons): with `webhook_id = ...` the planner may read
                    -- the due index instead and filter on webhook_id, walking others' rows.
                    WHERE (d.webhook_id, d.next_attempt_at) >= (p.webhook_id, '-infinity')
                      AND (d.webhook_id, d.next_attempt_at) <= (p.webhook_id, now())
                      AND d.status = 'PENDING'
                    ORDER BY d.webhook_id, d.next_attempt_at LIMIT %(per)s + 1
                ) c
                WHERE p.webhook_id IS NOT NULL AND NOT (p.webhook_id = ANY (%(busy)s::uuid[]))
                  -- Not a subscription deleted while its deliveries were written.
                  AND (SELECT true FROM webhooks w WHERE w.id = p.webhook_id)
                ORDER BY c.next_attempt_at
                LIMIT %(scan)s
            ), ranked AS (
                SELECT due.id, due.next_attempt_at,
                    row_number() OVER (PARTITION BY due.webhook_id
                                       ORDER BY due.next_attempt_at, due.id) AS n,
                    coalesce(room.free, %(per)s) AS free
                FROM due LEFT JOIN unnest(%(room_ids)s::uuid[], %(room_free)s::int[])
                    AS room (webhook_id, free) ON room.webhook_id = due.webhook_id
            ), chosen AS (
                SELECT id FROM ranked WHERE n <= free ORDER BY next_attempt_at LIMIT %(free)s
            ), locked AS (
                -- Only the rows taken are locked (a lock is a write to the row). One that
                -- another deliverer took meanwhile is skipped (locked), or fails the condition
                -- checked again on its latest version (leased: due later; or delivered).
                SELECT d.id FROM webhook_deliveries d
                WHERE d.id IN (SELECT id FROM chosen)
                  AND d.status = 'PENDING' AND d.next_attempt_at <= now()
                FOR UPDATE SKIP LOCKED
            )
            UPDATE webhook_deliveries d
            SET attempts = d.attempts + 1,
                locked_until = now() + make_interval(secs => %(lease)s),
                next_attempt_at = now() + make_interval(secs => %(lease)s)
            FROM locked c, webhook_events e, webhooks w
            WHERE d.id = c.id AND e.id = d.event_id AND w.id = d.webhook_id
            RETURNING {_CLAIMED}, (SELECT count(*) FROM due) AS due_count
            """,
    {
        "busy": "uuid[]",
        "scan": "int",
        "per": "int",
        "room_ids": "uuid[]",
        "room_free": "int[]",
        "free": "int",
        "lease": "float8",
    },
    prefix=_INDEX_ORDER + CUSTOM_PLANS,
)


def claim_deliveries(
    conn: Conn,
    *,
    free: int,
    per_subscription: int,
    room: Mapping[uuid.UUID, int],
    scan: int,
    lease_seconds: float,
) -> list[Claimed]:
    """Lease up to `free` due deliveries in one statement, oldest due first; count the attempt.

    Looks at the first due, unleased rows of each subscription with room (up to `scan` in
    all, oldest due first; a subscription with room 0 is not read at all, however many of its
    rows are due) and takes at most `room[w]` of subscription w's (`per_subscription` for one
    not in `room`): the deliverer's cap per subscription. Only the rows taken are locked
    (FOR UPDATE SKIP LOCKED, the condition checked again: several deliverers never take the
    same row). `next_attempt_at` moves to
    the lease's end with `locked_until`, so a delivery whose deliverer dies mid-send becomes
    due again when the lease lapses, and the due index never walks rows in flight. One
    statement: run it in autocommit.
    """
    busy = [str(w) for w, n in room.items() if n <= 0]
    partial = [(str(w), n) for w, n in room.items() if n > 0]
    with conn.cursor() as cur:
        _CLAIM.run(
            cur,
            {
                "busy": busy,
                "scan": scan,
                "per": per_subscription,
                "room_ids": [w for w, _ in partial],
                "room_free": [n for _, n in partial],
                "free": free,
                "lease": lease_seconds,
            },
        )
        return all_(cur, Claimed)


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended."""

    delivered: bool
    response_status: int | None
    response_time_ms: int | None
    error: str | None


#: The outcome of a batch of delivered attempts: prepared, as arrays (one statement text
#: whatever the batch's size, unlike a VALUES list); planned each time, for the batch's size.
_DELIVERED = Prepared(
    "taskexec_record_delivered",
    """
    UPDATE webhook_deliveries d
    SET status = 'DELIVERED', locked_until = NULL, last_attempt_at = v.at,
        response_status = v.status, response_time_ms = v.ms, error = NULL
    FROM unnest(%(ids)s::uuid[], %(leases)s::timestamptz[], %(statuses)s::int[], %(ms)s::int[],
                %(ats)s::timestamptz[]) AS v (id, lease, status, ms, at)
    WHERE d.id = v.id AND d.locked_until = v.lease
    """,
    {
        "ids": "uuid[]",
        "leases": "timestamptz[]",
        "statuses": "int[]",
        "ms": "int[]",
        "ats": "timestamptz[]",
    },
    prefix=CUSTOM_PLANS,
)


def record_delivered_batch(
    conn: Conn, delivered: Sequence[tuple[Claimed, Outcome, datetime]]
) -> int:
    """Mark many leased deliveries DELIVERED in one statement; return how many still held.

    Each item is (the claim, its outcome, when the attempt ended). An item whose lease was
    lost (`locked_until` changed: another deliverer took the row over) records nothing. The
    subscriptions that were failing at the claim are healthy again.
    """
    if not delivered:
        return 0
    with conn.cursor() as cur:
        _DELIVERED.run(
            cur,
            {
                "ids": [str(c.id) for c, _, _ in delivered],
                "leases": [c.locked_until for c, _, _ in delivered],
                "statuses": [o.response_status for _, o, _ in delivered],
                "ms": [o.response_time_ms for _, o, _ in delivered],
                "ats": [at for _, _, at in delivered],
            },
        )
        recorded = cur.rowcount
        healed = sorted({str(c.webhook_id) for c, _, _ in delivered if c.failing_since})
        if healed:
            cur.execute(
                "UPDATE webhooks SET failing_since = NULL"
                " WHERE id = ANY (%s::uuid[]) AND failing_since IS NOT NULL",
                (healed,),
            )
        return recorded


def refuse_delivery(conn: Conn, claimed: Claimed, reason: str) -> bool:
    """Disable a claimed delivery's subscription for `reason` and fail the delivery unsent.

    For a subscription its owner may no longer have (every API key of the owner revoked, or
    `scope: all` without an active tasks:admin key): no event reaches it from then on.
    """
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE webhooks SET disabled = true, disabled_reason = %s, disabled_at = now(),"
            " updated_at = now() WHERE id = %s AND NOT disabled",
            (reason[:500], claimed.webhook_id),
        )
    return fail_undeliverable(conn, claimed, f"subscription disabled: {reason}")


def record_failed_attempt(
    conn: Conn,
    claimed: Claimed,
    outcome: Outcome,
    retry_in: float | None,
    disable_after: float | None,
) -> bool:
    """Record a failed attempt: PENDING again in `retry_in` seconds, or FAILED when None.

    The subscription's `failing_since` is set if unset; once it lies more than
    `disable_after` seconds back (None: never disable), the subscription is disabled with
    the reason, and its deliveries then fail when claimed. False if the lease was lost.
    """
    with conn.cursor() as cur:
        cur.execute(
            """
            UPDATE webhook_deliveries
            SET status = CASE WHEN %(retry)s::float8 IS NULL THEN 'FAILED' ELSE 'PENDING' END,
                next_attempt_at = CASE WHEN %(retry)s::float8 IS NULL THEN next_attempt_at
                    ELSE now() + make_interval(secs => %(retry)s::float8) END,
                locked_until = NULL, last_attempt_at = now(),
                response_status = %(status)s, response_time_ms = %(ms)s, error = %(error)s
            WHERE id = %(id)s AND locked_until = %(lease)s
            """,
            {
                "retry": retry_in,
                "status": outcome.response_status,
                "ms": outcome.response_time_ms,
                "error": outcome.error,
                "id": claimed.id,
                "lease": claimed.locked_until,
            },
        )
        if cur.rowcount == 0:
            return False
        cur.execute(
            """
            UPDATE webhooks SET failing_since = coalesce(failing_since, now())
            WHERE id = %s AND NOT disabled
            RETURNING failing_since,
                -- Seconds compared, not times: now() minus a long period (a large setting)
                -- is out of the timestamp range. None (`off`) compares as NULL: never.
                extract(epoch FROM now() - failing_since) > %s::float8
            """,
            (claimed.webhook_id, disable_after),
        )
        row = cur.fetchone()
        if row is not None and row[1] and disable_after is not None:
            reason = (
                f"deliveries failing since {row[0].isoformat()} (last: {outcome.error or 'error'})"
            )
            cur.execute(
                "UPDATE webhooks SET disabled = true, disabled_reason = %s, disabled_at = now(),"
                " updated_at = now() WHERE id = %s AND NOT disabled",
                (reason[:500], claimed.webhook_id),
            )
        return True


def fail_undeliverable(conn: Conn, claimed: Claimed, error: str) -> bool:
    """Mark a leased delivery FAILED without an attempt (its subscription is disabled)."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE webhook_deliveries SET status = 'FAILED', locked_until = NULL,"
            " attempts = greatest(attempts - 1, 0), error = %s"
            " WHERE id = %s AND locked_until = %s",
            (error, claimed.id, claimed.locked_until),
        )
        return cur.rowcount > 0


def release_deliveries(conn: Conn, claimed: Sequence[Claimed]) -> int:
    """Give leased deliveries back unsent: due now, their attempt not counted; return how many.

    For deliveries a deliverer leased but will not send (held while their lease ran short, or
    the deliverer stopping). One whose lease was lost meanwhile is left as it is.
    """
    if not claimed:
        return 0
    with conn.cursor() as cur:
        cur.execute(
            """
            UPDATE webhook_deliveries d
            SET attempts = greatest(d.attempts - 1, 0), locked_until = NULL,
                next_attempt_at = now()
            FROM unnest(%s::uuid[], %s::timestamptz[]) AS v (id, lease)
            WHERE d.id = v.id AND d.locked_until = v.lease AND d.status = 'PENDING'
            """,
            ([str(c.id) for c in claimed], [c.locked_until for c in claimed]),
        )
        return cur.rowcount


# A delivery whose subscription is gone (written while it was being deleted) is never sent:
# it must not count as due, or the deliverer would look again at once. The first in index
# order (a scalar subquery keeps that plan; see _CLAIM). Prepared: an idle look runs it.
_NEXT_DUE = Prepared(
    "taskexec_next_delivery",
    "SELECT extract(epoch FROM next_attempt_at - now())::float8"
    " FROM webhook_deliveries d WHERE status = 'PENDING'"
    " AND (SELECT true FROM webhooks w WHERE w.id = d.webhook_id)"
    " ORDER BY next_attempt_at LIMIT 1",
    {},
    prefix=_INDEX_ORDER,
)


def next_delivery_in(conn: Conn) -> float | None:
    """Seconds until the next pending delivery is due (0 if one is); None when none is pending."""
    with conn.cursor() as cur:
        _NEXT_DUE.run(cur, {})
        row = cur.fetchone()
    if row is None or row[0] is None:
        return None
    return max(0.0, float(row[0]))
