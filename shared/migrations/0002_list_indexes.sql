-- taskexec: no-transaction
-- Built CONCURRENTLY: on a ledger that already holds millions of rows a plain CREATE INDEX
-- blocks every write to tasks for as long as the build takes. Installs that applied this file
-- before it was concurrent (when it ran in a transaction) never run it again; this version
-- ends with the same indexes, same names and definitions (tests/integration/test_migrations.py
-- compares the two), so the schema means the same either way (docs/operations.md, Migrations).
--
-- Listing as a tenant. Every list by a principal without tasks:admin is scoped to its owner,
-- so owner + filter is the common shape; measured over a million rows (bench/list_tasks.py):
--
-- "My tasks in status X" (the orchestrator polling its FAILED or RETRYING tasks): with only
-- (owner, created_at) and (status, created_at) the planner filters one index by the other or
-- ANDs two bitmaps, 10-50 ms for the count; this index answers the page and the count from
-- the index alone, under 3 ms.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_owner_status_created
    ON tasks (owner, status, created_at DESC, id DESC);

-- Owner + type or + definition: the owner index carries those columns, so the (capped)
-- count is an index-only scan of the owner's entries instead of bitmap ANDs with heap
-- reads (owner + type 110 ms -> 9 ms, owner + definition 78 ms -> 21 ms).
-- Replaced with no moment without one: the new one is built beside the old, the old dropped,
-- the new renamed (a rename takes only a SHARE UPDATE EXCLUSIVE lock, writes go on). Each step
-- is safe to repeat after a failure at any point.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_owner_created_next
    ON tasks (owner, created_at DESC, id DESC) INCLUDE (status, type, task_definition_id);
DROP INDEX CONCURRENTLY IF EXISTS tasks_owner_created;
ALTER INDEX IF EXISTS tasks_owner_created_next RENAME TO tasks_owner_created;

-- The workflow filter orders by (created_at, id) like every other listing; with the id in the
-- index the page comes out in order, without an incremental sort.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_workflow_next
    ON tasks (workflow_instance_id, created_at DESC, id DESC)
    WHERE workflow_instance_id IS NOT NULL;
DROP INDEX CONCURRENTLY IF EXISTS tasks_workflow;
ALTER INDEX IF EXISTS tasks_workflow_next RENAME TO tasks_workflow;
