-- taskexec: no-transaction
-- Replay (POST /api/v1/tasks/{id}/retry): a retry is a new task that names the one it
-- replays. No foreign key: retention may delete the original first, and the retry keeps
-- saying what it came from. (A nullable column without a default: no table rewrite.)
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS retry_of uuid;

-- The original's GET lists its retries (retriedBy), and a retry by filter skips tasks already
-- retried; only retries have the column set, so the partial index stays small.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_retry_of ON tasks (retry_of)
    WHERE retry_of IS NOT NULL;
