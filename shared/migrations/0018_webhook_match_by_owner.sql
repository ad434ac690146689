-- Every status change a subscription may want probes `webhooks` (the trigger of 0014), and the
-- fan-out matches each event against it. Both asked `admin OR owner = <the task's owner>`,
-- which no index serves: each was a scan of every subscription. Measured with 10,000
-- subscriptions of other owners (none matching): a status change took 1,051 us instead of
-- 435 (the task path more than twice as expensive in Postgres), and fanning out 30 events
-- 40 ms instead of 2.1. Now each asks twice, by index: the task owner's subscriptions
-- (webhooks_owner_created leads with owner) and the admin ones (webhooks_admin_enabled,
-- migration 0017: only the enabled admin subscriptions, usually few).

-- No `SET enable_seqscan = off` on the function, which would keep a plan cached while
-- `webhooks` was small from scanning it once it has grown: that costs every status change
-- about 5 us of Postgres CPU (measured, 242 against 236 us per change), and the ANALYZE that
-- autovacuum runs as the table grows replans the probes anyway (docs/operations.md says what
-- to schedule without autovacuum).
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
    -- The common case (no subscription wants it) costs two index probes, in one statement
    -- (one executor start, not two). The deliverer matches the subscriptions again when it
    -- fans the event out.
    IF NOT EXISTS (
        SELECT 1 FROM webhooks w
        WHERE w.owner = NEW.owner AND NOT w.disabled AND kind = ANY (w.events)
          AND (w.task_definition_id IS NULL OR w.task_definition_id = NEW.task_definition_id)
          AND (w.workflow_instance_id IS NULL OR w.workflow_instance_id = NEW.workflow_instance_id)
        UNION ALL
        SELECT 1 FROM webhooks w
        WHERE w.admin AND NOT w.disabled AND kind = ANY (w.events)
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
