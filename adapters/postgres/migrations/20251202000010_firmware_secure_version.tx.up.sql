-- The app descriptor's secure_version of each upload, so an image that
-- anti-rollback devices would refuse can be caught at upload. Rows recorded
-- before this migration did not keep it: 0, which nothing is lower than.
ALTER TABLE firmware ADD COLUMN IF NOT EXISTS secure_version bigint NOT NULL DEFAULT 0;
ALTER TABLE firmware DROP CONSTRAINT IF EXISTS firmware_secure_version_range;
ALTER TABLE firmware ADD CONSTRAINT firmware_secure_version_range
    CHECK (secure_version >= 0 AND secure_version <= 4294967295);
