-- taskexec: no-transaction
-- Issue 16: a waiting task's age counts from when it became due. The sweeper makes a delayed
-- task or a retry in its backoff ready by clearing next_attempt_at (the claim and the
-- releaser's tasks_ready read a NULL as "due"), which lost that time: GET /api/v1/queues then
-- counted such a task's oldestWaitingAge from its created_at, hours too old for a task
-- delayed by hours. `due_at` keeps the cleared value. A nullable column without a default is
-- added without rewriting the table; the queues' partial index gains it (and keeps its name)
-- so the read stays index-only, built CONCURRENTLY beside the old one before that is dropped.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS due_at timestamptz;
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_queues_due
    ON tasks (executor, status) INCLUDE (published_at, next_attempt_at, due_at, created_at, owner)
    WHERE status IN ('PENDING', 'RETRYING', 'RUNNING') AND type <> 'MANUAL';
DROP INDEX CONCURRENTLY IF EXISTS tasks_queues;
ALTER INDEX tasks_queues_due RENAME TO tasks_queues;
