-- The audit log (SPEC §12): append-only. Rows are inserted in the
-- transaction of the change they record; nothing updates or deletes them:
-- a trigger refuses UPDATE, DELETE and TRUNCATE for every role that does
-- not own the table (and for the owner unless it drops the trigger on
-- purpose). device_id and model_id are plain numbers, not foreign keys: an
-- entry outlives its device.
-- Idempotent like the other migrations.

CREATE TABLE IF NOT EXISTS audit_log (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    kind          text        NOT NULL CHECK (kind ~ '^[a-z_]{1,40}$'),
    actor_type    text        NOT NULL CHECK (actor_type IN ('admin', 'device', 'system')),
    actor_subject text        NOT NULL DEFAULT '',
    actor_client  text        NOT NULL DEFAULT '',
    actor_name    text        NOT NULL DEFAULT '',
    device_id     bigint      NULL CHECK (device_id > 0),
    client_id     text        NOT NULL DEFAULT '',
    model_id      bigint      NULL CHECK (model_id > 0),
    outcome       text        NOT NULL CHECK (outcome IN ('success', 'failure')),
    detail        text        NOT NULL DEFAULT '' CHECK (length(detail) <= 1000)
);

-- The expression each named schedule last started with, so that a change
-- of ROTATION_CRON (or its zone) is audited once, by the first process
-- that starts with it.
CREATE TABLE IF NOT EXISTS rotation_schedule_expression (
    name        text        PRIMARY KEY,
    expression  text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS audit_log_device_idx ON audit_log (device_id, id) WHERE device_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_log_at_idx ON audit_log (at);

CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

DROP TRIGGER IF EXISTS audit_log_no_update ON audit_log;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
