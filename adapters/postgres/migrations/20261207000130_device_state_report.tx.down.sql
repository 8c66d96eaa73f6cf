DROP INDEX IF EXISTS devices_reported_version_idx;
ALTER TABLE devices DROP COLUMN IF EXISTS reported_at;
ALTER TABLE devices DROP COLUMN IF EXISTS reported;
