-- Delayed submission (runAt / delay): the time the client asked a task to start, kept after it
-- started so GET can still show it. While it waits, next_attempt_at holds the same time and
-- published_at is NULL: the task lives only here, and the sweeper releases it to Redis.
ALTER TABLE tasks ADD COLUMN run_at timestamptz;

-- The releaser sleeps until the earliest waiting task is due: min(next_attempt_at) over tasks
-- that no message carries yet. Immediate tasks are inserted already published, so this index
-- holds only the waiting ones (delayed tasks, long retry backoffs, failed publishes).
CREATE INDEX tasks_release_due ON tasks (next_attempt_at)
    WHERE published_at IS NULL AND status IN ('PENDING', 'RETRYING');
