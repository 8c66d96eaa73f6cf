-- Credential rotation (SPEC §4): the digest of the secret generated in a
-- device's latest rotation, the schedule's last fire, and the indexes the
-- rotation queue and the dashboard read at 100,000 devices.
-- Every statement is idempotent (IF [NOT] EXISTS, a guarded constraint) so
-- that a crash between the migration's commit and its "applied" mark cannot
-- wedge the next start.

ALTER TABLE devices ADD COLUMN IF NOT EXISTS secret_sha256 text NULL;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conname = 'devices_secret_sha256_format' AND conrelid = 'devices'::regclass
    ) THEN
        ALTER TABLE devices ADD CONSTRAINT devices_secret_sha256_format
            CHECK (secret_sha256 ~ '^[0-9a-f]{64}$');
    END IF;
END
$$;

-- One row per named schedule: when it last fired. AdvanceFire moves it
-- with a conditional INSERT/UPDATE, so a tick fires once across replicas.
CREATE TABLE IF NOT EXISTS rotation_schedule (
    name         text        PRIMARY KEY,
    last_fire_at timestamptz NOT NULL
);

-- The rotation queue, as StartRotations claims it: each partial index holds
-- only the devices that can be claimed and is read in claim order, so a
-- claim is a short index range scan whatever the fleet size.
-- Active QUEUED devices by oldest secret (never set first), then id.
CREATE INDEX IF NOT EXISTS devices_queued_claim_idx
    ON devices (secret_created_at ASC NULLS FIRST, id)
    WHERE rotation_state = 'QUEUED' AND active;
-- Active TIMEOUT devices by oldest attempt; a missing attempt time sorts
-- (and is due) first.
CREATE INDEX IF NOT EXISTS devices_timeout_claim_idx
    ON devices ((COALESCE(last_rotation_attempt_at, '-infinity'::timestamptz)), id)
    WHERE rotation_state = 'TIMEOUT' AND active;
-- PENDING devices (a handful: at most the concurrency) by attempt: the slot
-- count, ExpiredRotations and InFlight.
CREATE INDEX IF NOT EXISTS devices_pending_attempt_idx
    ON devices ((COALESCE(last_rotation_attempt_at, '-infinity'::timestamptz)), id)
    WHERE rotation_state = 'PENDING';
-- The two indexes above replace the initial schema's whole-table ones.
DROP INDEX IF EXISTS devices_rotation_secret_idx;
DROP INDEX IF EXISTS devices_rotation_attempt_idx;

-- The dashboard's rare groups: devices with an old secret (its age counts
-- from created_at when secret_created_at is unset) and devices with an
-- unconfirmed generated secret. The planner reads these for the critical
-- and warning pages and the id order for the dense healthy one.
CREATE INDEX IF NOT EXISTS devices_secret_age_idx
    ON devices ((COALESCE(secret_created_at, created_at)))
    WHERE active;
CREATE INDEX IF NOT EXISTS devices_unconfirmed_idx
    ON devices (new_secret_at)
    WHERE active AND new_secret_at IS NOT NULL;

-- RotationCounts: an index-only scan of this small index (instead of the
-- table) wherever autovacuum has marked the pages all-visible.
CREATE INDEX IF NOT EXISTS devices_state_counts_idx ON devices (active, rotation_state);

-- LastRotationCompleted: max() reads the end of this index.
CREATE INDEX IF NOT EXISTS devices_last_completed_idx
    ON devices (last_rotation_completed_at)
    WHERE last_rotation_completed_at IS NOT NULL;
