-- taskexec: no-transaction
-- The delivery log's filters read only what they return. `status=FAILED` walked the
-- subscription's whole log (webhook_deliveries_log, newest first) filtering on status, and
-- `taskId` did the same on task_id: a busy subscription's log holds hundreds of millions of
-- rows (500 deliveries/s kept 7 days), so one request could read all of them. Failed rows are
-- few: a partial index of them costs a write only when a delivery fails. A task's events are
-- few: the filter finds them by webhook_events' task_id (one entry per event, written by the
-- fan-out, never by a status change) and their deliveries by webhook_deliveries_event.
-- (`status=PENDING` is read through webhook_deliveries_pending, migration 0020. `DELIVERED`
-- rows are most of a log, found at once walking it.)
CREATE INDEX CONCURRENTLY IF NOT EXISTS webhook_deliveries_failed
    ON webhook_deliveries (webhook_id, created_at DESC, id DESC) WHERE status = 'FAILED';
CREATE INDEX CONCURRENTLY IF NOT EXISTS webhook_events_task
    ON webhook_events (task_id) WHERE task_id IS NOT NULL;
