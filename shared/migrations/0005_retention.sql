-- taskexec: no-transaction
-- Retention: finished tasks are deleted once their endTime is older than their retention
-- (TASKEXEC_RETENTION, TASKEXEC_RETENTION_FAILED, or their definition's `retention`), unless
-- pinned. Both columns have constant defaults, so adding them rewrites no table.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS pinned boolean NOT NULL DEFAULT false;
ALTER TABLE task_definitions ADD COLUMN IF NOT EXISTS retention text;

-- The purge walks this index once per (definition, terminal status), oldest endTime first,
-- and reads only the rows it deletes: each range holds one retention, so the scan stops at
-- the first row not yet expired. Expiry is computed at purge time from end_time rather than
-- stored, so the statements that end a task (the hot path) are untouched and a changed
-- retention applies to tasks already finished.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_retention
    ON tasks (task_definition_id, status, end_time)
    WHERE end_time IS NOT NULL AND NOT pinned
      AND status IN ('COMPLETED', 'FAILED', 'TIMED_OUT', 'CANCELLED');

-- The purge deletes a task's idempotency record with it, found by task id.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idempotency_keys_task ON idempotency_keys (task_id);
