"""The webhook event queue: what the task trigger wrote, fanned out to deliveries by deliverers."""

from __future__ import annotations

from typing import NamedTuple

from shared.store._prepared import Prepared
from shared.store._rows import Conn


class FanOut(NamedTuple):
    """What one fan-out statement did."""

    events: int  # events taken off the queue (into webhook_events)
    deliveries: int  # deliveries made for them


#: The fan-out: every poll of every deliverer runs it, so it is prepared (parsed and planned
#: once per connection; planning was most of an idle look: 210-250 us of Postgres CPU, 50-70
#: prepared). Its generic plan, made without the LIMIT's value, takes the queue's oldest rows
#: in key order all the same (enable_sort off): a backlog of 20,000 drained as fast as before.
_FAN_OUT = Prepared(
    "taskexec_fan_out",
    """
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
                RETURNING id, type, task_id, task, created_at
            ), made AS (
                INSERT INTO webhook_deliveries (id, event_id, webhook_id, type, task_id, created_at)
                SELECT gen_random_uuid(), t.id, w.id, t.type, t.task_id, t.created_at
                FROM events t
                JOIN webhooks w ON NOT w.disabled AND w.created_at <= t.created_at
                    AND t.type = ANY (w.events)
                    AND (w.admin OR w.owner = t.task ->> 'owner')
                    AND (w.task_definition_id IS NULL
                         OR w.task_definition_id = t.task ->> 'task_definition_id')
                    AND (w.workflow_instance_id IS NULL
                         OR w.workflow_instance_id = t.task ->> 'workflow_instance_id')
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM taken), (SELECT count(*) FROM made)
            """,
    {"limit": "int"},
    # The oldest in the key's order, never a sort of all.
    prefix="SET LOCAL enable_sort = off;",
)


def fan_out_events(conn: Conn, limit: int) -> FanOut:
    """Move up to `limit` queued events, oldest first, into webhook_events with their deliveries.

    One statement, so atomic: an event leaves the queue in the transaction that writes its
    deliveries, and a deliverer killed midway leaves it queued, with none written. Rows another
    deliverer holds are skipped (FOR UPDATE SKIP LOCKED), so several fan out side by side and
    none takes an event twice; an event already in webhook_events (its queue row somehow written
    twice) gets no second set of deliveries. A subscription receives the event when it is
    enabled now, was created by the status change (`created_at` not after the event's), wants
    the type, may see the task (admin, or the task's owner) and its filter matches the task as
    it was. Run it in autocommit. A full batch (`events == limit`) means more may be queued.
    """
    with conn.cursor() as cur:
        _FAN_OUT.run(cur, {"limit": limit})
        row = cur.fetchone()
    assert row is not None
    return FanOut(int(row[0]), int(row[1]))


def queued_events(conn: Conn) -> int:
    """How many events wait to be fanned out (the bench and tests; a count of the queue)."""
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM webhook_event_queue")
        row = cur.fetchone()
    return int(row[0]) if row else 0
