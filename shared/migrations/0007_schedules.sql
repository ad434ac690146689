-- taskexec: no-transaction
-- Recurring schedules (issue 14): a schedule fires one task per slot. Statement by statement
-- and idempotent (IF NOT EXISTS), the tasks indexes built CONCURRENTLY as in 0002.
CREATE TABLE IF NOT EXISTS schedules (
    id uuid PRIMARY KEY,
    owner text NOT NULL,
    name text NOT NULL,
    cron text,
    interval_ms bigint,
    timezone text NOT NULL DEFAULT 'UTC',
    task jsonb NOT NULL,
    overlap_policy text NOT NULL DEFAULT 'ALLOW',
    catchup_window_ms bigint NOT NULL DEFAULT 60000,
    start_at timestamptz,
    end_at timestamptz,
    paused boolean NOT NULL DEFAULT false,
    next_run_at timestamptz,
    last_run_at timestamptz,
    skipped_count bigint NOT NULL DEFAULT 0,
    last_skipped_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((cron IS NULL) <> (interval_ms IS NULL)),
    CHECK (interval_ms IS NULL OR interval_ms >= 1000),
    CHECK (overlap_policy IN ('ALLOW', 'SKIP', 'CANCEL_PREVIOUS'))
);

-- The sweeper claims due schedules and sleeps until the earliest one: both read this index,
-- never the whole table (no per-schedule timers in memory). A finished schedule (past its
-- endAt) has no next_run_at and drops out of it.
CREATE INDEX IF NOT EXISTS schedules_due ON schedules (next_run_at)
    WHERE NOT paused AND next_run_at IS NOT NULL;

-- The listing: newest first per owner, as the task list pages.
CREATE INDEX IF NOT EXISTS schedules_owner_created ON schedules (owner, created_at DESC, id DESC);

-- Nullable, no default: catalog changes, no table rewrite. No foreign key: a deleted
-- schedule's tasks stay and keep naming it.
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS schedule_id uuid;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS scheduled_for timestamptz;

-- Exactly once per slot: however many sweepers fire the same slot, the second INSERT of
-- (schedule, slot) meets this index and does nothing (ON CONFLICT DO NOTHING). Its leading
-- column also serves ?scheduleId= and the overlap check (the schedule's latest task).
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS tasks_schedule_slot
    ON tasks (schedule_id, scheduled_for) WHERE schedule_id IS NOT NULL;

-- ?scheduleId= lists newest first like every listing (and includes triggered tasks, whose
-- scheduled_for is NULL).
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_schedule_created
    ON tasks (schedule_id, created_at DESC, id DESC) WHERE schedule_id IS NOT NULL;
