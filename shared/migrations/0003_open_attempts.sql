-- taskexec: no-transaction
-- Built CONCURRENTLY so that a large task_attempts keeps taking writes meanwhile (see 0002).
-- The sweeper looks for attempts left open by workers that vanished (see
-- store.close_abandoned_attempts) every round; only running attempts are open, so this partial
-- index stays as small as the number of tasks running, however long the history grows.
CREATE INDEX CONCURRENTLY IF NOT EXISTS task_attempts_open
    ON task_attempts (task_id, attempt) WHERE ended_at IS NULL;
