package postgres_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/integration"
)

// TestMain runs the tests on the shared stack and then fails the run when
// a test left a goroutine behind.
func TestMain(m *testing.M) { os.Exit(integration.VerifyNoLeaks(integration.RunTests(m))) }

// openDB opens a fresh empty database of the shared stack, closed when the
// test ends (before the harness drops the database).
func openDB(t testing.TB, opts ...postgres.Option) (*postgres.DB, string) {
	t.Helper()
	url := integration.Shared(t).NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	db, err := postgres.Open(ctx, url, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db, url
}

// migratedDB is openDB plus Migrate.
func migratedDB(t testing.TB) *postgres.DB {
	t.Helper()
	db, _ := openDB(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := db.Migrate(ctx); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	return db
}
