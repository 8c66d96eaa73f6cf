-- Core dumps (SPEC §17). A firmware upload records the app_elf_sha256 of
-- its app descriptor and whether that ELF is stored; a device's core dumps
-- are records here (the bytes are blobs) with their analysis, claimed by
-- the workers one dump at a time. Idempotent, as every migration is.

ALTER TABLE firmware ADD COLUMN IF NOT EXISTS elf_sha256 text NULL
    CONSTRAINT firmware_elf_sha256_format CHECK (elf_sha256 ~ '^[0-9a-f]{64}$');
ALTER TABLE firmware ADD COLUMN IF NOT EXISTS has_elf boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS firmware_elf ON firmware (device_model_id, elf_sha256) WHERE elf_sha256 IS NOT NULL;

CREATE TABLE IF NOT EXISTS coredumps (
    id               bigserial   PRIMARY KEY,
    device_id        bigint      NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    device_model_id  bigint      NOT NULL REFERENCES device_models (id) ON DELETE CASCADE,
    sha256           text        NOT NULL,
    size             bigint      NOT NULL,
    -- info is what the dump says about itself (chip, format, the ELF it
    -- names); elf_prefix is info's ELF prefix, for the requeue on an ELF.
    info             jsonb       NOT NULL,
    elf_prefix       text        NOT NULL DEFAULT '',
    received_at      timestamptz NOT NULL DEFAULT now(),
    status           text        NOT NULL,
    reason           text        NOT NULL DEFAULT '',
    elf_sha256       text        NULL,
    firmware_version text        NULL,
    analysis         jsonb       NULL,
    -- crash_function is the analysis's crash frame's function ('' when
    -- none), kept for the model's crash groups.
    crash_function   text        NULL,
    analysed_at      timestamptz NULL,
    attempts         integer     NOT NULL DEFAULT 0,
    claimed_until    timestamptz NULL,
    CONSTRAINT coredumps_sha256_format CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    CONSTRAINT coredumps_size_positive CHECK (size > 0),
    CONSTRAINT coredumps_status_known CHECK (status IN ('pending', 'analysed', 'no_elf', 'failed')),
    CONSTRAINT coredumps_elf_prefix_format CHECK (elf_prefix ~ '^[0-9a-f]{0,64}$')
);
CREATE INDEX IF NOT EXISTS coredumps_device ON coredumps (device_id, id);
CREATE INDEX IF NOT EXISTS coredumps_pending ON coredumps (id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS coredumps_no_elf ON coredumps (device_model_id) WHERE status = 'no_elf';
CREATE INDEX IF NOT EXISTS coredumps_blob ON coredumps (device_model_id, sha256);
CREATE INDEX IF NOT EXISTS coredumps_crashes ON coredumps (device_model_id, received_at) WHERE status = 'analysed';
