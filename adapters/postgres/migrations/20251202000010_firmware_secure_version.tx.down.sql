ALTER TABLE firmware DROP CONSTRAINT IF EXISTS firmware_secure_version_range;
ALTER TABLE firmware DROP COLUMN IF EXISTS secure_version;
