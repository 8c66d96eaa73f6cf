ALTER TABLE devices DROP COLUMN IF EXISTS mqtt_password;
