-- Webhook deliveries no longer reference their subscription by a foreign key (issue 15,
-- speed). The key's check ran once per delivery row inside every status change's transaction
-- and locked the subscription's row (FOR KEY SHARE): concurrent status changes locking the
-- same few rows made a MultiXact each time. Measured with bench/webhooks.py (5 subscriptions,
-- 2 worker processes): the worker's Postgres backends used 590 µs more per delivery with the
-- key, 284 µs without. A statement trigger deletes a subscription's deliveries with it, as the
-- cascade did. A delivery written while its subscription was being deleted (the two
-- transactions racing) is never claimed (claims join webhooks) and goes with its event.
-- The key to webhook_events stays: that row is the transaction's own, nobody else locks it.
ALTER TABLE webhook_deliveries DROP CONSTRAINT IF EXISTS webhook_deliveries_webhook_id_fkey;

CREATE OR REPLACE FUNCTION taskexec_webhooks_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM webhook_deliveries d USING gone g WHERE d.webhook_id = g.id;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS webhooks_delete_deliveries ON webhooks;
CREATE TRIGGER webhooks_delete_deliveries AFTER DELETE ON webhooks
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
    EXECUTE FUNCTION taskexec_webhooks_deleted();
