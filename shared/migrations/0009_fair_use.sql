-- taskexec: no-transaction
-- Fair use (docs/architecture.md, "Release: windows, limits, fairness"): concurrency limits
-- per definition, per key and per principal; the ready and held sets the releaser reads.
-- Statement by statement, indexes built CONCURRENTLY, every statement safe to rerun; nullable
-- columns without a default are catalog changes, no table rewrite.
ALTER TABLE task_definitions ADD COLUMN IF NOT EXISTS concurrency_limit integer;
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS max_running integer;

-- The limits a task was submitted under (NULL: none of that kind): the definition's
-- concurrencyLimit, executionConfig.concurrency's key and limit, the principal's maxRunning.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS definition_limit integer;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS concurrency_key text;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS key_limit integer;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS owner_limit integer;
-- The full limit a waiting task is held back by ('definition:<id>', 'key:<owner>:<key>',
-- 'principal:<owner>'); NULL while it is not held.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS held_on text;

-- Ready: waiting, due (next_attempt_at cleared once due), held by no limit, no message yet.
-- The releaser reads it owner by owner (round robin), priority then submission order
-- within an owner; the API asks it whether an owner already has work waiting. Rows the fast
-- path publishes at insert never enter it, so an idle submission pays nothing for it.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_ready
    ON tasks (executor, owner, priority DESC, created_at)
    WHERE published_at IS NULL AND next_attempt_at IS NULL AND held_on IS NULL
      AND type <> 'MANUAL' AND status IN ('PENDING', 'RETRYING');

-- Held back by a full limit: per limit, owner by owner, in the order they will be let go.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_held
    ON tasks (held_on, owner, priority DESC, created_at)
    WHERE held_on IS NOT NULL AND status IN ('PENDING', 'RETRYING');

-- What counts against a limit: limited tasks RUNNING (the claim's count), or already sent to
-- a worker (the releaser's count, so it does not send more than the room). Only limited
-- tasks are in these, so unlimited work never touches them.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_limited_definition
    ON tasks (task_definition_id, status)
    WHERE definition_limit IS NOT NULL
      AND (status = 'RUNNING' OR (status IN ('PENDING', 'RETRYING') AND published_at IS NOT NULL));
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_limited_owner
    ON tasks (owner, concurrency_key, status)
    WHERE (concurrency_key IS NOT NULL OR owner_limit IS NOT NULL)
      AND (status = 'RUNNING' OR (status IN ('PENDING', 'RETRYING') AND published_at IS NOT NULL));
