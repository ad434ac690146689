-- taskexec: no-transaction
-- GET /api/v1/queues and the queue gauges in /metrics (shared/store/queues.py) count the
-- active, non-manual tasks per executor and per owner. This index holds those rows only, so
-- both reads stay the size of what is moving, not of the ledger's finished millions; the
-- INCLUDE columns answer them from the index when the visibility map allows. Built
-- CONCURRENTLY: submits and claims go on writing tasks while it builds.
CREATE INDEX CONCURRENTLY IF NOT EXISTS tasks_queues
    ON tasks (executor, status) INCLUDE (published_at, next_attempt_at, created_at, owner)
    WHERE status IN ('PENDING', 'RETRYING', 'RUNNING') AND type <> 'MANUAL';
