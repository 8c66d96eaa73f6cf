-- espmdm initial schema: device models, devices, firmware history.
-- Every statement is idempotent (IF NOT EXISTS) so that a crash between the
-- migration's commit and its "applied" mark cannot wedge the next start.

CREATE TABLE IF NOT EXISTS device_models (
    id               bigserial   PRIMARY KEY,
    code             text        NOT NULL,
    name             text        NOT NULL,
    firmware_version text        NULL,
    config_schema    jsonb       NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT device_models_code_key UNIQUE (code),
    CONSTRAINT device_models_code_format CHECK (code ~ '^[a-z0-9_]{1,50}$'),
    CONSTRAINT device_models_name_length CHECK (char_length(name) BETWEEN 1 AND 255)
);

CREATE TABLE IF NOT EXISTS devices (
    id                         bigserial   PRIMARY KEY,
    key                        text        NOT NULL,
    device_model_id            bigint      NOT NULL,
    config                     jsonb       NOT NULL,
    active                     boolean     NOT NULL DEFAULT true,
    rotation_state             text        NOT NULL DEFAULT 'OK',
    secret_created_at          timestamptz NULL,
    last_rotation_attempt_at   timestamptz NULL,
    last_rotation_completed_at timestamptz NULL,
    last_seen_at               timestamptz NULL,
    new_secret_at              timestamptz NULL,
    previous_secret            bytea       NULL,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT devices_key_key UNIQUE (key),
    CONSTRAINT devices_key_format CHECK (key ~ '^[a-z0-9]{8}$'),
    CONSTRAINT devices_config_object CHECK (jsonb_typeof(config) = 'object'),
    CONSTRAINT devices_rotation_state_valid
        CHECK (rotation_state IN ('OK', 'QUEUED', 'PENDING', 'TIMEOUT')),
    CONSTRAINT devices_device_model_id_fkey FOREIGN KEY (device_model_id)
        REFERENCES device_models (id) ON DELETE RESTRICT
);

-- List filters; each ends in id so a filtered page is an index range scan
-- in cursor order. The model index also serves the foreign key check when
-- a model is deleted.
CREATE INDEX IF NOT EXISTS devices_model_id_idx ON devices (device_model_id, id);
CREATE INDEX IF NOT EXISTS devices_rotation_state_id_idx ON devices (rotation_state, id);
CREATE INDEX IF NOT EXISTS devices_active_id_idx ON devices (active, id);
-- The rotation queue: QUEUED by oldest secret, TIMEOUT by oldest attempt.
CREATE INDEX IF NOT EXISTS devices_rotation_secret_idx ON devices (rotation_state, secret_created_at);
CREATE INDEX IF NOT EXISTS devices_rotation_attempt_idx ON devices (rotation_state, last_rotation_attempt_at);

CREATE TABLE IF NOT EXISTS firmware (
    id              bigserial   PRIMARY KEY,
    device_model_id bigint      NOT NULL,
    version         text        NOT NULL,
    project_name    text        NOT NULL DEFAULT '',
    idf_version     text        NOT NULL DEFAULT '',
    chip            text        NOT NULL,
    chip_id         integer     NOT NULL,
    sha256          text        NOT NULL,
    size            bigint      NOT NULL,
    uploaded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT firmware_sha256_format CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    CONSTRAINT firmware_size_nonnegative CHECK (size >= 0),
    CONSTRAINT firmware_device_model_id_fkey FOREIGN KEY (device_model_id)
        REFERENCES device_models (id) ON DELETE CASCADE
);

-- History and "current firmware" of a model: newest (highest id) first.
CREATE INDEX IF NOT EXISTS firmware_model_id_idx ON firmware (device_model_id, id);
