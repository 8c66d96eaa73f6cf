-- When the current rotation attempt's nudge was sent again because the
-- device showed up on the device API after fetching its new secret but
-- without confirming it (it rebooted in between): once per attempt.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS last_rotation_renudge_at timestamptz NULL;
