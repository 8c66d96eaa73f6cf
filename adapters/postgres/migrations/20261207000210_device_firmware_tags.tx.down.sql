DROP INDEX IF EXISTS devices_tags_idx;
ALTER TABLE devices DROP COLUMN IF EXISTS tags;
DROP INDEX IF EXISTS devices_assigned_firmware_idx;
ALTER TABLE devices DROP COLUMN IF EXISTS assigned_firmware_id;
