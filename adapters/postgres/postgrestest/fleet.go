// Package postgrestest holds data for espmdm's PostgreSQL schema that the
// repository benchmarks (adapters/postgres) and the scale benchmark
// (integration/bench) share.
package postgrestest

import (
	"context"
	"database/sql"
	"fmt"
)

// fleetSQL inserts devices 1..$1 (keys are the number in hex) over the
// first ten device models.
const fleetSQL = `
INSERT INTO devices (key, device_model_id, config, active, rotation_state,
                     secret_created_at, last_rotation_attempt_at, last_rotation_completed_at, new_secret_at)
SELECT lpad(to_hex(i), 8, '0'),
       (SELECT id FROM device_models ORDER BY id OFFSET (i % 10) LIMIT 1),
       jsonb_build_object('i', i, 'name', 'device ' || i),
       i % 20 <> 7,
       s.state,
       CASE WHEN i % 50 <> 3 THEN now() - make_interval(secs => (i * 7919 % 100000) * 82.08) END,
       CASE WHEN s.state IN ('PENDING', 'TIMEOUT') THEN now() - make_interval(mins => 60 + i % 2880) END,
       CASE WHEN s.state = 'OK' AND i % 50 <> 3 THEN now() - make_interval(secs => (i * 7919 % 100000) * 82.08) END,
       CASE WHEN s.state IN ('PENDING', 'TIMEOUT') AND i % 2 = 0 THEN now() - make_interval(hours => i % 216) END
FROM generate_series(1, $1) AS i,
     LATERAL (SELECT CASE WHEN i <= 10 THEN 'PENDING'
                          WHEN i % 100 < 70 THEN 'OK'
                          WHEN i % 100 < 95 THEN 'QUEUED'
                          ELSE 'TIMEOUT' END AS state) AS s`

// InsertFleet inserts n devices over the first ten device models (which
// must exist), shaped like a fleet in the middle of a rotation: 5%
// inactive; ten PENDING, the rest 70% OK, 25% QUEUED and 5% TIMEOUT
// (retried after an hour or more); secrets aged evenly over 0..95 days (so
// about 47% healthy, 47% warning and a few % critical), 2% never rotated;
// half the PENDING and TIMEOUT devices with a generated secret unconfirmed
// for up to 9 days. Then it runs VACUUM ANALYZE on devices, what
// autovacuum would have done by the time anyone looks.
func InsertFleet(ctx context.Context, db *sql.DB, n int) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	// A synchronous commit (test servers may run with
	// synchronous_commit=off), so that VACUUM can mark the pages
	// all-visible at once: it cannot while the commit is not flushed.
	if _, err := tx.ExecContext(ctx, "SET LOCAL synchronous_commit = on"); err != nil {
		_ = tx.Rollback()
		return err
	}
	if _, err := tx.ExecContext(ctx, fleetSQL, n); err != nil {
		_ = tx.Rollback()
		return fmt.Errorf("insert devices: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	if _, err := db.ExecContext(ctx, "VACUUM ANALYZE devices"); err != nil {
		return fmt.Errorf("vacuum analyze: %w", err)
	}
	return nil
}
