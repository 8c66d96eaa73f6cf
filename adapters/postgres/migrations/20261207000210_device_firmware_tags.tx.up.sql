-- A device's assigned firmware (SPEC §16): set by a campaign, it overrides
-- the model's released firmware for this device; NULL: the released one.
-- Firmware rows go only with their model, whose devices are gone by then.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS assigned_firmware_id bigint NULL
    REFERENCES firmware (id) ON DELETE SET NULL;
CREATE INDEX IF NOT EXISTS devices_assigned_firmware_idx ON devices (assigned_firmware_id)
    WHERE assigned_firmware_id IS NOT NULL;

-- Device tags (SPEC §16): 0 to 32 of ^[a-z0-9_.:-]{1,64}$, sorted, no
-- duplicates (espmdm normalises them). GET /api/devices?tag= and campaign
-- selectors match with @> (the GIN index).
ALTER TABLE devices ADD COLUMN IF NOT EXISTS tags text[] NOT NULL DEFAULT '{}';
CREATE INDEX IF NOT EXISTS devices_tags_idx ON devices USING GIN (tags);
