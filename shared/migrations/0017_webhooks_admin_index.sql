-- taskexec: no-transaction
-- The enabled admin subscriptions (usually few), for the trigger's probe and the fan-out's
-- match (migration 0018 says why). Built CONCURRENTLY, as every index on an existing table,
-- so subscriptions can be created and changed while it builds.
CREATE INDEX CONCURRENTLY IF NOT EXISTS webhooks_admin_enabled ON webhooks (created_at)
    WHERE admin AND NOT disabled;
