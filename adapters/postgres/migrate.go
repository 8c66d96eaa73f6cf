package postgres

import (
	"context"
	"database/sql/driver"
	"embed"
	"fmt"
	"io/fs"
	"time"

	"github.com/uptrace/bun/migrate"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migration bookkeeping tables, named for espmdm so a database shared with
// another bun application keeps both histories apart.
const (
	migrationsTable     = "espmdm_migrations"
	migrationLocksTable = "espmdm_migration_locks"
)

// migrateLockKey is the pg_advisory_lock key that serialises Migrate across
// processes ("espmdm" + "mig" in ASCII).
const migrateLockKey int64 = 0x6573706d646d6d67

// migrateLockPoll is how often Migrate retries a held advisory lock. Polling
// with pg_try_advisory_lock (instead of a blocking pg_advisory_lock) keeps
// the wait inside the caller's context and clear of socket read timeouts.
const migrateLockPoll = 100 * time.Millisecond

func loadMigrations() (*migrate.Migrations, error) {
	ms := migrate.NewMigrations()
	sub, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		return nil, fmt.Errorf("postgres: embedded migrations: %w", err)
	}
	if err := ms.Discover(sub); err != nil {
		return nil, fmt.Errorf("postgres: load embedded migrations: %w", err)
	}
	return ms, nil
}

func (db *DB) migrator() (*migrate.Migrator, int, error) {
	ms, err := loadMigrations()
	if err != nil {
		return nil, 0, err
	}
	return migrate.NewMigrator(db.bun, ms,
		migrate.WithTableName(migrationsTable),
		migrate.WithLocksTableName(migrationLocksTable),
		// Mark a migration applied only once it succeeded; each file is
		// a .tx.up.sql, so a failure leaves nothing half done.
		migrate.WithMarkAppliedOnSuccess(true),
	), len(ms.Sorted()), nil
}

// Migrate applies every pending embedded migration. It holds a PostgreSQL
// advisory lock meanwhile, so concurrent callers (replicas starting at
// once) run one after the other and the later ones find nothing to do.
// Applying an up-to-date schema is a no-op.
func (db *DB) Migrate(ctx context.Context) error {
	m, _, err := db.migrator()
	if err != nil {
		return err
	}
	unlock, err := db.advisoryLock(ctx, migrateLockKey)
	if err != nil {
		return err
	}
	defer unlock()
	if err := m.Init(ctx); err != nil {
		return translate("migrate: create migration tables", err, fkNone)
	}
	if _, err := m.Migrate(ctx); err != nil {
		return translate("migrate", err, fkNone)
	}
	return nil
}

// MigrationStatus returns how many embedded migrations are not applied yet
// (0 when the schema is current). A database never migrated counts all.
func (db *DB) MigrationStatus(ctx context.Context) (pending int, err error) {
	m, total, err := db.migrator()
	if err != nil {
		return 0, err
	}
	var exists bool
	if err := db.bun.QueryRowContext(ctx, "SELECT to_regclass(?) IS NOT NULL", migrationsTable).Scan(&exists); err != nil {
		return 0, translate("migration status", err, fkNone)
	}
	if !exists {
		return total, nil
	}
	withStatus, err := m.MigrationsWithStatus(ctx)
	if err != nil {
		return 0, translate("migration status", err, fkNone)
	}
	return len(withStatus.Unapplied()), nil
}

// advisoryLock takes a session-level advisory lock on a connection of its
// own and returns the function that releases it.
func (db *DB) advisoryLock(ctx context.Context, key int64) (unlock func(), err error) {
	conn, err := db.bun.Conn(ctx)
	if err != nil {
		return nil, translate("migrate: lock", err, fkNone)
	}
	t := time.NewTicker(migrateLockPoll)
	defer t.Stop()
	for {
		var got bool
		if err := conn.QueryRowContext(ctx, "SELECT pg_try_advisory_lock(?)", key).Scan(&got); err != nil {
			_ = conn.Close()
			return nil, translate("migrate: lock", err, fkNone)
		}
		if got {
			break
		}
		select {
		case <-ctx.Done():
			_ = conn.Close()
			return nil, translate("migrate: wait for lock", ctx.Err(), fkNone)
		case <-t.C:
		}
	}
	return func() {
		// Unlock even when ctx is done; closing the session would release
		// the lock too, but a pooled connection may outlive us.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if _, err := conn.ExecContext(uctx, "SELECT pg_advisory_unlock(?)", key); err != nil {
			// The session may be broken; make sure it is not reused
			// while holding the lock.
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		}
		_ = conn.Close()
	}, nil
}
