-- Every committed change of a devices row is told on the channel
-- espmdm_devices (LISTEN/NOTIFY), so that each replica's device cache
-- (adapters/devicecache) drops what it holds of that device. The trigger
-- is in the database, so every writer is covered: the repository's
-- UpdateDevice closure, the rotation queue's bulk statements, state
-- reports, a later branch's columns, an operator's psql session. NOTIFY
-- is transactional: the notification is delivered when, and only if, the
-- changing transaction commits.
--
-- One trigger per statement, not per row, reading the statement's
-- transition tables: a statement sends one notification whatever the
-- number of rows ("*", everything changed, above 1,000 rows: the bulk
-- queueing of a 100,000-device rotation costs one notification, not
-- 100,000 for every replica to read), else the ids, comma-separated, in
-- payloads well under NOTIFY's 8,000 bytes.
--
-- An UPDATE that changes nothing but last_seen_at (TouchLastSeen: once a
-- minute per device) is not told: the cache keeps its own last_seen_at,
-- and a notification a minute per device would empty it for nothing.
-- Every other column, present or added later, is compared.
CREATE OR REPLACE FUNCTION espmdm_devices_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
	n bigint;
	payload text;
BEGIN
	IF TG_OP = 'TRUNCATE' THEN
		PERFORM pg_notify('espmdm_devices', '*');
		RETURN NULL;
	END IF;
	SELECT count(*) INTO n FROM changed_old;
	IF n = 0 THEN
		RETURN NULL;
	END IF;
	IF n > 1000 THEN
		PERFORM pg_notify('espmdm_devices', '*');
		RETURN NULL;
	END IF;
	IF TG_OP = 'DELETE' THEN
		FOR payload IN
			SELECT string_agg(o.id::text, ',') FROM (
				SELECT id, (row_number() OVER () - 1) / 300 AS chunk FROM changed_old
			) o GROUP BY o.chunk
		LOOP
			PERFORM pg_notify('espmdm_devices', payload);
		END LOOP;
		RETURN NULL;
	END IF;
	FOR payload IN
		SELECT string_agg(c.id::text, ',') FROM (
			SELECT nw.id, (row_number() OVER () - 1) / 300 AS chunk
			FROM changed_new nw JOIN changed_old o ON o.id = nw.id
			WHERE (to_jsonb(nw) - 'last_seen_at') IS DISTINCT FROM (to_jsonb(o) - 'last_seen_at')
		) c GROUP BY c.chunk
	LOOP
		PERFORM pg_notify('espmdm_devices', payload);
	END LOOP;
	RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS devices_changed_update ON devices;
CREATE TRIGGER devices_changed_update
	AFTER UPDATE ON devices
	REFERENCING OLD TABLE AS changed_old NEW TABLE AS changed_new
	FOR EACH STATEMENT EXECUTE FUNCTION espmdm_devices_changed();

DROP TRIGGER IF EXISTS devices_changed_delete ON devices;
CREATE TRIGGER devices_changed_delete
	AFTER DELETE ON devices
	REFERENCING OLD TABLE AS changed_old
	FOR EACH STATEMENT EXECUTE FUNCTION espmdm_devices_changed();

DROP TRIGGER IF EXISTS devices_changed_truncate ON devices;
CREATE TRIGGER devices_changed_truncate
	AFTER TRUNCATE ON devices
	FOR EACH STATEMENT EXECUTE FUNCTION espmdm_devices_changed();
