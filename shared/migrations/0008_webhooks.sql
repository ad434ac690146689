-- Webhooks (issue 15): subscriptions, the events a status change causes, and one delivery per
-- (event, subscription). The event is written by a trigger in the transaction that changes the
-- status, so no code path can change a status without its event, and a process killed right
-- after the commit loses nothing. New tables and a trigger: no rewrite of tasks.

CREATE TABLE IF NOT EXISTS webhooks (
    id uuid PRIMARY KEY,
    owner text NOT NULL,
    -- The owner held tasks:admin when it subscribed (or last changed it): it receives every
    -- owner's events; otherwise only its own tasks' events.
    admin boolean NOT NULL DEFAULT false,
    url text NOT NULL,
    events text[] NOT NULL,
    task_definition_id text,
    workflow_instance_id text,
    description text,
    disabled boolean NOT NULL DEFAULT false,
    disabled_reason text,
    disabled_at timestamptz,
    secret text NOT NULL,
    -- After a rotation the old secret signs beside the new one until it expires.
    previous_secret text,
    previous_secret_expires_at timestamptz,
    -- Set by the first failed delivery after a success, cleared by the next success: a
    -- subscription failing for longer than the configured period is disabled.
    failing_since timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS webhooks_owner_created ON webhooks (owner, created_at DESC, id DESC);

CREATE TABLE IF NOT EXISTS webhook_events (
    id uuid PRIMARY KEY,
    type text NOT NULL,
    -- Null for an event about no task (webhook.test).
    task_id uuid,
    -- The task row as it was when its status changed (to_jsonb of the row): the delivery's
    -- `data` is rendered from it, so a late delivery still says what happened then.
    task jsonb,
    -- The `data` of an event about no task (webhook.test), sent as it is.
    data jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Retention deletes old events (their deliveries cascade) oldest first.
CREATE INDEX IF NOT EXISTS webhook_events_created ON webhook_events (created_at);

CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id uuid PRIMARY KEY,
    event_id uuid NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    webhook_id uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    -- Copied from the event: the log filters by them without a join.
    type text NOT NULL,
    task_id uuid,
    status text NOT NULL DEFAULT 'PENDING',
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- The retry horizon counts from here (a redelivery restarts it); null: from created_at.
    retry_from timestamptz,
    -- A deliverer's claim: another deliverer may take the row once it lapses.
    locked_until timestamptz,
    last_attempt_at timestamptz,
    response_status integer,
    response_time_ms integer,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (status IN ('PENDING', 'DELIVERED', 'FAILED'))
);

-- What a deliverer claims next: pending rows by due time, never the delivered history.
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'PENDING';
-- The delivery log: one subscription's deliveries, newest first.
CREATE INDEX IF NOT EXISTS webhook_deliveries_log
    ON webhook_deliveries (webhook_id, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS webhook_deliveries_event ON webhook_deliveries (event_id);

CREATE OR REPLACE FUNCTION taskexec_task_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    kind text;
    event uuid;
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
    -- The common case (no subscription wants it) costs one probe of a small table.
    IF NOT EXISTS (
        SELECT 1 FROM webhooks w
        WHERE NOT w.disabled AND kind = ANY (w.events)
          AND (w.admin OR w.owner = NEW.owner)
          AND (w.task_definition_id IS NULL OR w.task_definition_id = NEW.task_definition_id)
          AND (w.workflow_instance_id IS NULL OR w.workflow_instance_id = NEW.workflow_instance_id)
    ) THEN
        RETURN NULL;
    END IF;
    event := gen_random_uuid();
    INSERT INTO webhook_events (id, type, task_id, task) VALUES (event, kind, NEW.id, to_jsonb(NEW));
    INSERT INTO webhook_deliveries (id, event_id, webhook_id, type, task_id)
        SELECT gen_random_uuid(), event, w.id, kind, NEW.id FROM webhooks w
        WHERE NOT w.disabled AND kind = ANY (w.events)
          AND (w.admin OR w.owner = NEW.owner)
          AND (w.task_definition_id IS NULL OR w.task_definition_id = NEW.task_definition_id)
          AND (w.workflow_instance_id IS NULL OR w.workflow_instance_id = NEW.workflow_instance_id);
    -- Wakes the deliverers at commit (one notification per transaction, however many rows).
    PERFORM pg_notify('taskexec_webhooks', '');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS tasks_webhook_events ON tasks;
CREATE TRIGGER tasks_webhook_events AFTER UPDATE OF status ON tasks
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION taskexec_task_event();
