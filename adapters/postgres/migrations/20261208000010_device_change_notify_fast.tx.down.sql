-- Back to migration 20261207000240's trigger function.
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
