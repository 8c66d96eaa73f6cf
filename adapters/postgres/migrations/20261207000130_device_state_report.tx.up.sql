-- The latest state report of each device (SPEC §15): the members the device
-- sent (checked by espmdm; a JSON object with the §15 names) and when espmdm
-- received it. NULL: the device has not reported yet. Only a report writes
-- them; an admin's change of the device leaves them alone.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS reported jsonb NULL;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS reported_at timestamptz NULL;

-- GET /api/devices?firmware_version= pages by id within one reported version.
CREATE INDEX IF NOT EXISTS devices_reported_version_idx ON devices ((reported->>'firmware_version'), id);
