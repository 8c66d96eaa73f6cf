-- Firmware campaigns (SPEC §16): a staged rollout of one upload to a fixed
-- set of a model's devices, in waves. Idempotent, as every migration is.

CREATE TABLE IF NOT EXISTS campaigns (
    id                     bigserial        PRIMARY KEY,
    device_model_id        bigint           NOT NULL REFERENCES device_models (id) ON DELETE CASCADE,
    firmware_id            bigint           NOT NULL REFERENCES firmware (id) ON DELETE CASCADE,
    firmware_sha256        text             NOT NULL CHECK (firmware_sha256 ~ '^[0-9a-f]{64}$'),
    firmware_version       text             NOT NULL,
    selector_tags          text[]           NOT NULL DEFAULT '{}',
    waves                  integer[]        NOT NULL,
    wave_soak_seconds      bigint           NOT NULL CHECK (wave_soak_seconds >= 0),
    max_failure_ratio      double precision NOT NULL CHECK (max_failure_ratio BETWEEN 0 AND 1),
    device_timeout_seconds bigint           NOT NULL CHECK (device_timeout_seconds >= 0),
    rollback_on_abort      boolean          NOT NULL,
    release_on_complete    boolean          NOT NULL,
    state                  text             NOT NULL CHECK (state IN ('running', 'paused', 'aborted', 'completed')),
    -- The wave started last (-1 before the first) and when each started.
    current_wave           integer          NOT NULL DEFAULT -1,
    wave_started_at        timestamptz[]    NOT NULL DEFAULT '{}',
    abort_reason           text             NOT NULL DEFAULT '',
    members                integer          NOT NULL DEFAULT 0,
    created_by             text             NOT NULL DEFAULT '',
    created_at             timestamptz      NOT NULL DEFAULT now(),
    updated_at             timestamptz      NOT NULL DEFAULT now(),
    finished_at            timestamptz      NULL
);

-- At most one running or paused campaign per model (a second is a 409).
CREATE UNIQUE INDEX IF NOT EXISTS campaigns_one_active_per_model ON campaigns (device_model_id)
    WHERE state IN ('running', 'paused');
CREATE INDEX IF NOT EXISTS campaigns_state_id_idx ON campaigns (state, id);
CREATE INDEX IF NOT EXISTS campaigns_model_id_idx ON campaigns (device_model_id, id);

-- The members, fixed at creation. nudge is what the member is owed on
-- its firmware topic: 0 nothing, 1 its assignment, 2 its rollback; set in
-- the transaction that assigns or rolls back, cleared once sent. The
-- reported_* columns are its latest state report while in the campaign.
CREATE TABLE IF NOT EXISTS campaign_members (
    campaign_id         bigint      NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    device_id           bigint      NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    wave                integer     NOT NULL CHECK (wave >= 0),
    state               text        NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'succeeded', 'failed', 'timed_out')),
    assigned_at         timestamptz NULL,
    resolved_at         timestamptz NULL,
    nudge               smallint    NOT NULL DEFAULT 0 CHECK (nudge IN (0, 1, 2)),
    reported_version    text        NULL,
    reported_ota_state  text        NULL,
    reported_ota_target text        NULL,
    reported_ota_result text        NULL,
    reported_at         timestamptz NULL,
    PRIMARY KEY (campaign_id, device_id)
);

-- The worker's counts, timeouts and assignments: one wave of one campaign.
CREATE INDEX IF NOT EXISTS campaign_members_wave_state_idx ON campaign_members (campaign_id, wave, state);
-- A state report finds the device's most recent campaign.
CREATE INDEX IF NOT EXISTS campaign_members_device_idx ON campaign_members (device_id, campaign_id);
-- The owed nudges.
CREATE INDEX IF NOT EXISTS campaign_members_nudge_idx ON campaign_members (campaign_id, device_id) WHERE nudge <> 0;
