-- Webhook fan-out moves out of the status change's transaction (issue 15, speed). The trigger
-- of 0008 wrote, inside every status change a subscription wants, the event, one delivery per
-- matching subscription (4 index entries each, and a foreign-key check) and a NOTIFY: measured
-- with 5 subscriptions, task throughput fell to 0.39 of the baseline, 0.62 with the deliverer
-- stopped. Now the trigger writes one row to a queue (the event, with the task's snapshot; one
-- index entry), and the deliverer moves queued events into webhook_events and makes their
-- deliveries in its own transactions, in batches (store.fan_out_events). The event is still
-- written in the status change's transaction: a process killed after the commit loses nothing.
-- No NOTIFY either: a notifying commit holds a database-wide lock through its WAL flush, so
-- every notifying commit waits for the one before; the deliverer looks at the queue on a short
-- clock instead. A new table and a new function body: no rewrite, no index on a big table.

CREATE TABLE IF NOT EXISTS webhook_event_queue (
    -- The order the deliverer takes events in (oldest first); a compact, right-growing index.
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The event's id: the webhook-id its receivers see (webhook_events.id once fanned out).
    id uuid NOT NULL,
    type text NOT NULL,
    task_id uuid NOT NULL,
    -- The task row as it was when its status changed (to_jsonb of the row), as in webhook_events.
    task jsonb NOT NULL,
    -- The status change's time: the event's timestamp, and only subscriptions created by then
    -- receive the event.
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION taskexec_task_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    kind text;
BEGIN
    kind := CASE NEW.status
        WHEN 'RUNNING' THEN 'task.started'
        WHEN 'RETRYING' THEN 'task.retrying'
        WHEN 'COMPLETED' THEN 'task.completed'
        WHEN 'FAILED' THEN 'task.failed'
        WHEN 'TIMED_OUT' THEN 'task.timed_out'
        WHEN 'CANCELLED' THEN 'task.cancelled'
    END;
    IF kind IS NULL THEN
        RETURN NULL;
    END IF;
    -- The common case (no subscription wants it) costs one probe of a small table. The
    -- deliverer matches the subscriptions again when it fans the event out.
    IF NOT EXISTS (
        SELECT 1 FROM webhooks w
        WHERE NOT w.disabled AND kind = ANY (w.events)
          AND (w.admin OR w.owner = NEW.owner)
          AND (w.task_definition_id IS NULL OR w.task_definition_id = NEW.task_definition_id)
          AND (w.workflow_instance_id IS NULL OR w.workflow_instance_id = NEW.workflow_instance_id)
    ) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_event_queue (id, type, task_id, task)
        VALUES (gen_random_uuid(), kind, NEW.id, to_jsonb(NEW));
    RETURN NULL;
END
$$;

-- No foreign key from a delivery to its event either (0011 dropped the one to its subscription).
-- Its check is a query Postgres plans once per connection and keeps: planned while
-- webhook_events was small (a new or emptied table), it scans the whole table, and every
-- delivery row written later scans it again. Measured: fanning 500 events out took 1,258 ms
-- with 15,000 events in the table (23 ms without the key); the same kept plan in the workers'
-- connections likely made the old trigger's delivery rows cost 13x more inside the worker than
-- in a fresh connection. The fan-out writes an event and its deliveries in one statement, and
-- the purge deletes an event's deliveries with it (store.purge_old_events).
ALTER TABLE webhook_deliveries DROP CONSTRAINT IF EXISTS webhook_deliveries_event_id_fkey;
