-- Why a schedule last skipped a slot (issue 14): catch-up window, overlap, its definition gone,
-- or its input no longer valid against the definition's current schema. Nullable columns
-- without a default: catalog changes, no table rewrite.
ALTER TABLE schedules ADD COLUMN IF NOT EXISTS last_skip_reason text;
ALTER TABLE schedules ADD COLUMN IF NOT EXISTS last_skip_message text;
