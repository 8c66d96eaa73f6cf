-- When a PENDING device last fetched its credentials, so an attempt whose
-- nudge went unanswered (an offline device) can free its slot after
-- ROTATION_FETCH_TIMEOUT_SECONDS instead of the whole ROTATION_TIMEOUT_SECONDS.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS last_rotation_fetch_at timestamptz NULL;
