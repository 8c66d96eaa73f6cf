-- Released vs stored firmware (SPEC §16): an upload is released (offered to
-- the model's devices) when released_at is set, stored only when it is NULL.
-- The model's released firmware is its row with the greatest released_at
-- (ties by id). Every upload before this migration was released when it
-- was uploaded.
ALTER TABLE firmware ADD COLUMN IF NOT EXISTS released_at timestamptz NULL;
UPDATE firmware SET released_at = uploaded_at WHERE released_at IS NULL;

-- The released firmware of a model: one index scan.
CREATE INDEX IF NOT EXISTS firmware_released_idx ON firmware (device_model_id, released_at DESC, id DESC)
    WHERE released_at IS NOT NULL;
-- A stored upload is released again (or rolled back to) by its SHA-256.
CREATE INDEX IF NOT EXISTS firmware_model_sha256_idx ON firmware (device_model_id, sha256, id);
