"""The webhook event queue: what the task trigger wrote, fanned out to deliveries by deliverers."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import NamedTuple

from shared.store._prepared import Prepared
from shared.store._rows import Conn, _builder
from shared.store.delivery_leases import CLAIMED_SUBSCRIPTION, Claimed


class FanOut(NamedTuple):
    """What one fan-out statement did."""

    events: int  # events taken off the queue (into webhook_events)
    deliveries: int  # deliveries made for them


#: The fan-out: every poll of every deliverer runs it, so it is prepared (parsed and planned
#: once per connection; planning was most of an idle look: 210-250 us of Postgres CPU, 50-70
#: prepared). Its generic plan, made without the LIMIT's value, takes the queue's oldest rows
#: in key order all the same (enable_sort off): a backlog of 20,000 drained as fast as before.
#: The deliveries it makes within the deliverer's room are written leased (see
#: `fan_out_and_lease`), the rest PENDING and due now.
_FAN_OUT = Prepared(
    "taskexec_fan_out",
    f"""
            WITH taken AS (
                -- By the rows' addresses (a TID scan): a queue vacuum has not caught up with
                -- holds thousands of dead rows, and a scan of its heap every poll (the plan the
                -- key's values got on a queue last analyzed empty) cost 0.5 ms per delivery.
                -- The rows are locked here (no one moves them) and queue rows are never updated.
                DELETE FROM webhook_event_queue q
                WHERE q.ctid = ANY (ARRAY(
                    SELECT ctid FROM webhook_event_queue ORDER BY seq
                    LIMIT %(limit)s FOR UPDATE SKIP LOCKED))
                RETURNING q.id, q.type, q.task_id, q.task, q.created_at
            ), events AS (
                INSERT INTO webhook_events (id, type, task_id, task, created_at)
                SELECT id, type, task_id, task, created_at FROM taken
                ON CONFLICT (id) DO NOTHING
                -- The events inserted (not one already there), with what matching needs: no
                -- join back to `taken` (on a CTE's guessed size that became a nested loop).
                -- What the leases return is read here too: webhook_events read again in this
                -- statement would not show the rows it inserts (one snapshot for all of it).
                RETURNING id, type, task_id, task, created_at
            ), matched AS (
                -- `fits`: within the subscription's room (its n-th delivery of this batch).
                SELECT gen_random_uuid() AS id, t.id AS event_id, w.id AS webhook_id, t.type,
                    t.task_id, t.task, t.created_at,
                    row_number() OVER (PARTITION BY w.id ORDER BY t.created_at, t.id)
                        <= coalesce(room.free, %(per)s) AS fits
                FROM events t
                -- The task owner's subscriptions and the admin ones, each by an index
                -- (migrations 0017, 0018): `admin OR owner = ...` scanned every subscription.
                JOIN LATERAL (
                    SELECT o.id, o.created_at, o.events, o.task_definition_id,
                        o.workflow_instance_id
                    FROM webhooks o
                    WHERE o.owner = t.task ->> 'owner' AND NOT o.admin AND NOT o.disabled
                    UNION ALL
                    SELECT a.id, a.created_at, a.events, a.task_definition_id,
                        a.workflow_instance_id
                    FROM webhooks a WHERE a.admin AND NOT a.disabled
                ) w ON w.created_at <= t.created_at
                    AND t.type = ANY (w.events)
                    AND (w.task_definition_id IS NULL
                         OR w.task_definition_id = t.task ->> 'task_definition_id')
                    AND (w.workflow_instance_id IS NULL
                         OR w.workflow_instance_id = t.task ->> 'workflow_instance_id')
                LEFT JOIN unnest(%(room_ids)s::uuid[], %(room_free)s::int[])
                    AS room (webhook_id, free) ON room.webhook_id = w.id
            ), planned AS MATERIALIZED (
                -- Leased: fits, and among the first `free` that fit (oldest event first).
                SELECT id, event_id, webhook_id, type, task_id, task, created_at,
                    fits AND row_number() OVER (
                        ORDER BY fits DESC, created_at, event_id, webhook_id) <= %(free)s
                        AS leased
                FROM matched
            ), made AS (
                -- A leased row as a claim leaves it (claim_deliveries): the attempt counted,
                -- due again only when the lease lapses. The others wait for a claim.
                INSERT INTO webhook_deliveries (id, event_id, webhook_id, type, task_id,
                    created_at, attempts, locked_until, next_attempt_at)
                SELECT id, event_id, webhook_id, type, task_id, created_at,
                    CASE WHEN leased THEN 1 ELSE 0 END,
                    CASE WHEN leased THEN now() + make_interval(secs => %(lease)s) END,
                    CASE WHEN leased THEN now() + make_interval(secs => %(lease)s)
                         ELSE now() END
                FROM planned
            )
            -- The counts on every row; one row of them (the rest null) when nothing is leased.
            SELECT (SELECT count(*) FROM taken) AS events,
                (SELECT count(*) FROM planned) AS deliveries,
                p.id, p.event_id, p.webhook_id, p.type, p.task_id, 1 AS attempts, p.created_at,
                NULL::timestamptz AS retry_from,
                now() + make_interval(secs => %(lease)s) AS locked_until,
                p.created_at AS event_created_at, p.task::text AS task, NULL::jsonb AS data,
                {CLAIMED_SUBSCRIPTION}
            FROM (SELECT) AS one
            LEFT JOIN (planned p JOIN webhooks w ON w.id = p.webhook_id AND p.leased) ON true
            """,
    {
        "limit": "int",
        "per": "int",
        "room_ids": "uuid[]",
        "room_free": "int[]",
        "free": "int",
        "lease": "float8",
    },
    # The oldest in the key's order, never a sort of all. A sort it cannot avoid (the leases'
    # ranking) then costs 1e10 in the plan, which crosses jit_above_cost: compiled by JIT,
    # measured 500-850 ms a run; never wanted for a statement of a few ms, so off. The queue's
    # rows by address (TID scan) even when its stale statistics make a sequential scan look
    # cheaper: that scan reads every dead row, 1 ms a run at 20,000 of them (autovacuum off).
    prefix="SET LOCAL enable_sort = off; SET LOCAL enable_seqscan = off; SET LOCAL jit = off;",
    # A healthy run takes longer than the default bound (~1.3 ms for 30 deliveries: it writes
    # them all), so only a far slower one marks the plan as stale.
    slow_seconds=0.05,
)


def fan_out_and_lease(
    conn: Conn,
    limit: int,
    *,
    free: int,
    per_subscription: int,
    room: Mapping[uuid.UUID, int],
    lease_seconds: float,
) -> tuple[FanOut, list[Claimed]]:
    """Fan up to `limit` queued events out (see `fan_out_events`), leasing what may be sent now.

    The deliveries within the deliverer's room are written leased to it, as
    `claim_deliveries` would lease them (attempts 1, `locked_until` and `next_attempt_at` at
    the lease's end), and returned as Claimed rows: at most `free` of them, at most
    `room[w]` of subscription w's (`per_subscription` for one not in `room`; 0 or less: none),
    oldest event first. A fresh delivery is then written once before its outcome, not
    inserted and updated again by a claim. The others are PENDING and due now, for a claim.
    The leases are this connection's only: the rows are new, no other deliverer saw them,
    and once committed they are due only when the lease lapses (a deliverer killed after the
    fan-out: another claims them then). Run it in autocommit.
    """
    ids = list(room)
    with conn.cursor() as cur:
        _FAN_OUT.run(
            cur,
            {
                "limit": limit,
                "per": per_subscription,
                "room_ids": [str(w) for w in ids],
                "room_free": [room[w] for w in ids],
                "free": max(free, 0),
                "lease": lease_seconds,
            },
        )
        rows = cur.fetchall()
        # The row class's builder, made once per column list (the counts are not its fields).
        build = _builder(Claimed, cur)
    assert rows, "the fan-out returns its counts"
    done = FanOut(int(rows[0][0]), int(rows[0][1]))
    leased = [build(row) for row in rows if row[2]]
    return done, leased


def fan_out_events(conn: Conn, limit: int) -> FanOut:
    """Move up to `limit` queued events, oldest first, into webhook_events with their deliveries.

    One statement, so atomic: an event leaves the queue in the transaction that writes its
    deliveries, and a deliverer killed midway leaves it queued, with none written. Rows another
    deliverer holds are skipped (FOR UPDATE SKIP LOCKED), so several fan out side by side and
    none takes an event twice; an event already in webhook_events (its queue row somehow written
    twice) gets no second set of deliveries. A subscription receives the event when it is
    enabled now, was created by the status change (`created_at` not after the event's), wants
    the type, may see the task (admin, or the task's owner) and its filter matches the task as
    it was. The deliveries are PENDING, due now. Run it in autocommit. A full batch
    (`events == limit`) means more may be queued.
    """
    done, _ = fan_out_and_lease(conn, limit, free=0, per_subscription=0, room={}, lease_seconds=0.0)
    return done


def queued_events(conn: Conn) -> int:
    """How many events wait to be fanned out (the bench and tests; a count of the queue)."""
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM webhook_event_queue")
        row = cur.fetchone()
    return int(row[0]) if row else 0
