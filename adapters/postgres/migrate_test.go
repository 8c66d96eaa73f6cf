package postgres_test

import (
	"context"
	"sync"
	"testing"

	"github.com/espmdm/espmdm/adapters/postgres"
)

func TestMigrateAppliesOnEmptyDatabaseAndIsIdempotent(t *testing.T) {
	db, _ := openDB(t)
	ctx := t.Context()

	pending, err := db.MigrationStatus(ctx)
	if err != nil {
		t.Fatalf("MigrationStatus on an empty database: %v", err)
	}
	if pending < 1 {
		t.Fatalf("MigrationStatus on an empty database: got %d pending, want at least 1", pending)
	}

	if err := db.Migrate(ctx); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	if got := tables(t, db); !got["device_models"] || !got["devices"] || !got["firmware"] {
		t.Fatalf("after Migrate: tables %v, want device_models, devices and firmware", got)
	}
	pending, err = db.MigrationStatus(ctx)
	if err != nil {
		t.Fatalf("MigrationStatus: %v", err)
	}
	if pending != 0 {
		t.Errorf("MigrationStatus after Migrate: got %d pending, want 0", pending)
	}

	before := appliedMigrations(t, db)
	if err := db.Migrate(ctx); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	if after := appliedMigrations(t, db); after != before {
		t.Errorf("second Migrate recorded migrations: %d rows before, %d after", before, after)
	}
	if pending, err := db.MigrationStatus(ctx); err != nil || pending != 0 {
		t.Errorf("MigrationStatus after second Migrate: got %d, %v; want 0, nil", pending, err)
	}
}

func TestMigrateConcurrently(t *testing.T) {
	_, url := openDB(t)
	const n = 4
	dbs := make([]*postgres.DB, n)
	for i := range dbs {
		db, err := postgres.Open(t.Context(), url)
		if err != nil {
			t.Fatalf("Open %d: %v", i, err)
		}
		t.Cleanup(func() { _ = db.Close() })
		dbs[i] = db
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := make(chan struct{})
	for i, db := range dbs {
		wg.Go(func() {
			<-start
			errs[i] = db.Migrate(context.Background())
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Migrate %d: %v", i, err)
		}
	}
	pending, err := dbs[0].MigrationStatus(t.Context())
	if err != nil || pending != 0 {
		t.Errorf("MigrationStatus: got %d, %v; want 0, nil", pending, err)
	}
	want := appliedMigrations(t, dbs[0])
	if got := len(embeddedUpMigrations(t)); want != got {
		t.Errorf("applied migrations: got %d rows, want one per embedded migration (%d)", want, got)
	}
}

func TestMigrationStatusAfterPartialHistory(t *testing.T) {
	db := migratedDB(t)
	// Forget the newest migration: it must count as pending again.
	if _, err := db.Bun().ExecContext(t.Context(),
		"DELETE FROM espmdm_migrations WHERE id = (SELECT max(id) FROM espmdm_migrations)"); err != nil {
		t.Fatalf("delete migration row: %v", err)
	}
	pending, err := db.MigrationStatus(t.Context())
	if err != nil || pending != 1 {
		t.Errorf("MigrationStatus: got %d, %v; want 1, nil", pending, err)
	}
	// The migrations are idempotent: re-applying the forgotten one works.
	if err := db.Migrate(t.Context()); err != nil {
		t.Fatalf("Migrate after forgetting one: %v", err)
	}
	if pending, err := db.MigrationStatus(t.Context()); err != nil || pending != 0 {
		t.Errorf("MigrationStatus: got %d, %v; want 0, nil", pending, err)
	}
}

func tables(t *testing.T, db *postgres.DB) map[string]bool {
	t.Helper()
	var names []string
	err := db.Bun().NewSelect().TableExpr("information_schema.tables").Column("table_name").
		Where("table_schema = current_schema()").Scan(t.Context(), &names)
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	out := map[string]bool{}
	for _, n := range names {
		out[n] = true
	}
	return out
}

func appliedMigrations(t *testing.T, db *postgres.DB) int {
	t.Helper()
	var n int
	if err := db.Bun().QueryRowContext(t.Context(), "SELECT count(*) FROM espmdm_migrations").Scan(&n); err != nil {
		t.Fatalf("count applied migrations: %v", err)
	}
	return n
}

func embeddedUpMigrations(t *testing.T) []string {
	t.Helper()
	names, err := postgres.MigrationNames()
	if err != nil {
		t.Fatalf("embedded migrations: %v", err)
	}
	return names
}
