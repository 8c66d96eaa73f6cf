-- The sealed password of the device's broker account (SPEC §19), sealed
-- like previous_secret. NULL: no account password yet (a device made before
-- broker accounts, or under MQTT_AUTH=none); the reconciler makes one and
-- the device receives it at its next /iot/provisioning fetch.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS mqtt_password bytea NULL;
