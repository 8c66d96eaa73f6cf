DROP INDEX IF EXISTS firmware_model_sha256_idx;
DROP INDEX IF EXISTS firmware_released_idx;
ALTER TABLE firmware DROP COLUMN IF EXISTS released_at;
