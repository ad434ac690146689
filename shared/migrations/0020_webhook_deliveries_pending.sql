-- taskexec: no-transaction
-- A deliverer's claim takes the first due deliveries of each subscription with room. It read
-- the pending rows in due order (webhook_deliveries_due) and skipped those of subscriptions at
-- their cap, so a slow receiver's backlog (its deliveries due but not sendable: its cap full)
-- was walked by every claim of every deliverer before anyone else's rows: measured 2.07 ms per
-- claim with 15,000 such rows instead of about 0.1, growing with the backlog, about ten claims
-- a second while rows wait. With this index the claim finds the subscriptions that have
-- pending rows (a skip scan, one probe each) and reads each one's first due rows: 0.09 ms with
-- the same backlog. One more index entry per delivery written or claimed; none once delivered.
CREATE INDEX CONCURRENTLY IF NOT EXISTS webhook_deliveries_pending
    ON webhook_deliveries (webhook_id, next_attempt_at) WHERE status = 'PENDING';
