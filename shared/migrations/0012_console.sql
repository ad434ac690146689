-- taskexec: no-transaction
-- The console's queues page counts tasks completed and failed per minute over the last hour:
-- a range of end_time across every definition, which tasks_retention (definition first, and
-- without pinned rows) cannot serve. Partial: active tasks have no end_time and stay out, so
-- the index holds only finished rows and submissions do not write to it. Built CONCURRENTLY,
-- as every index on tasks, so a large ledger keeps taking writes while it builds.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_ended ON tasks (end_time)
    WHERE end_time IS NOT NULL;
