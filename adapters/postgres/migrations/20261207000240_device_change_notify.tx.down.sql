DROP TRIGGER IF EXISTS devices_changed_truncate ON devices;
DROP TRIGGER IF EXISTS devices_changed_delete ON devices;
DROP TRIGGER IF EXISTS devices_changed_update ON devices;
DROP FUNCTION IF EXISTS espmdm_devices_changed();
