package postgres

import (
	"context"

	"github.com/uptrace/bun"
)

// MigrationNames lists the embedded migrations, for tests.
func MigrationNames() ([]string, error) {
	ms, err := loadMigrations()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, m := range ms.Sorted() {
		names = append(names, m.Name)
	}
	return names, nil
}

// WithQueryHook returns db with hook added to every query of the returned
// DB (the pool is shared), for tests that look at the SQL.
func WithQueryHook(db *DB, hook bun.QueryHook) *DB {
	return &DB{bun: db.bun.WithQueryHook(hook)}
}

// Rollback rolls the last group of applied migrations back.
func Rollback(ctx context.Context, db *DB) error {
	m, _, err := db.migrator()
	if err != nil {
		return err
	}
	if err := m.Lock(ctx); err != nil {
		return err
	}
	defer func() { _ = m.Unlock(ctx) }()
	_, err = m.Rollback(ctx)
	return err
}
