-- taskexec: no-transaction
-- Statement by statement, the index built CONCURRENTLY so a large tasks table keeps taking
-- writes meanwhile (see 0002); IF NOT EXISTS makes a rerun after a failure safe.
--
-- Delayed submission (runAt / delay): the time the client asked a task to start, kept after it
-- started so GET can still show it. While it waits, next_attempt_at holds the same time and
-- published_at is NULL: the task lives only here, and the sweeper releases it to Redis.
-- (A nullable column without a default: a catalog change, no table rewrite.)
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS run_at timestamptz;

-- The releaser sleeps until the earliest waiting task is due: min(next_attempt_at) over tasks
-- that no message carries yet. Immediate tasks are inserted already published, so this index
-- holds only the waiting ones (delayed tasks, long retry backoffs, failed publishes).
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_release_due ON tasks (next_attempt_at)
    WHERE published_at IS NULL AND status IN ('PENDING', 'RETRYING');
