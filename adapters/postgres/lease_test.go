package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/core/model"
)

// terminateSessions ends the sessions of db's database whose
// application_name is name, as a crash of their process would, and waits
// until their backends have exited (and so released their locks). It fails
// the test when there is none.
func terminateSessions(t *testing.T, db *postgres.DB, name string) {
	t.Helper()
	var n, ended int
	err := db.Bun().QueryRowContext(t.Context(), `
		SELECT count(*), count(*) FILTER (WHERE pg_terminate_backend(pid, 10000))
		FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = ? AND pid <> pg_backend_pid()`, name).Scan(&n, &ended)
	if err != nil {
		t.Fatalf("terminate sessions %q: %v", name, err)
	}
	if n == 0 || ended != n {
		t.Fatalf("terminate sessions %q: %d found, %d ended; want at least one, all ended", name, n, ended)
	}
}

// sessions counts the sessions of db's database named name.
func sessions(t *testing.T, db *postgres.DB, name string) int {
	t.Helper()
	var n int
	if err := db.Bun().QueryRowContext(t.Context(),
		"SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = ?", name).Scan(&n); err != nil {
		t.Fatalf("count sessions: %v", err)
	}
	return n
}

// sessionsGone waits (up to 5 s) until no session of db's database is
// named name: a backend exits shortly after its client closes the
// connection, not at once. It reports how many are left.
func sessionsGone(t *testing.T, db *postgres.DB, name string) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := sessions(t, db, name)
		if n == 0 || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func mustHold(t *testing.T, what string, l *postgres.Lease, want bool) {
	t.Helper()
	got, err := l.Hold(t.Context())
	if err != nil {
		t.Fatalf("%s: Hold: %v", what, err)
	}
	if got != want {
		t.Fatalf("%s: Hold = %v, want %v", what, got, want)
	}
}

func TestLeaseAcrossTwoPools(t *testing.T) {
	db1, dsn := openDB(t)
	db2, err := postgres.Open(t.Context(), dsn)
	if err != nil {
		t.Fatalf("Open second pool: %v", err)
	}
	t.Cleanup(func() { _ = db2.Close() })
	a, b := postgres.NewLease(db1, "replica-a"), postgres.NewLease(db2, "replica-b")

	mustHold(t, "a", a, true)
	mustHold(t, "b", b, false)
	for _, l := range []*postgres.Lease{a, b} {
		if got, err := l.Holder(t.Context()); err != nil || got != "replica-a" {
			t.Errorf("Holder = %q, %v; want replica-a", got, err)
		}
	}
	// The holder's session is named; a process that failed to take the
	// lease gave its connection back to the pool unchanged.
	if n := sessions(t, db1, "replica-a"); n != 1 {
		t.Errorf("sessions named replica-a: %d, want 1", n)
	}
	if n := sessions(t, db1, "replica-b"); n != 0 {
		t.Errorf("sessions named replica-b: %d, want 0 (b does not hold the lease)", n)
	}

	if err := a.Release(t.Context()); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if got, err := b.Holder(t.Context()); err != nil || got != "" {
		t.Errorf("Holder after Release = %q, %v; want none at once", got, err)
	}
	if n := sessionsGone(t, db1, "replica-a"); n != 0 {
		t.Errorf("after Release: %d sessions named replica-a, want 0 (the holding session ends)", n)
	}
	mustHold(t, "b after a's release", b, true)
	mustHold(t, "a", a, false)
	if got, err := a.Holder(t.Context()); err != nil || got != "replica-b" {
		t.Errorf("Holder = %q, %v; want replica-b", got, err)
	}
	if err := b.Release(t.Context()); err != nil {
		t.Fatalf("Release: %v", err)
	}
}

// A holder whose backend is terminated (what a database restart or an
// administrator does) learns on its next Hold that it lost the lease, and
// takes it again on the one after; the lock is free from the moment the
// backend is gone.
func TestLeaseHolderWhoseBackendIsTerminated(t *testing.T) {
	db, _ := openDB(t)
	a := postgres.NewLease(db, "worker-a")
	mustHold(t, "a", a, true)
	terminateSessions(t, db, "worker-a")
	if got, err := a.Holder(t.Context()); err != nil || got != "" {
		t.Errorf("Holder after the backend ended = %q, %v; want none", got, err)
	}
	mustHold(t, "a after its backend ended", a, false)
	mustHold(t, "a again", a, true)
	if got, err := a.Holder(t.Context()); err != nil || got != "worker-a" {
		t.Errorf("Holder = %q, %v; want worker-a", got, err)
	}
	if err := a.Release(t.Context()); err != nil {
		t.Fatalf("Release: %v", err)
	}
}

// A holder cut off from the database (its host or network gone) loses the
// lease as soon as the server sees the connection close; the other process
// takes it, and the cut-off one reports not held, then unavailable.
func TestLeaseHolderCutOffFromTheDatabase(t *testing.T) {
	db, dsn := openDB(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	p := newProxy(t, u.Host)
	u.Host = p.Addr()
	viaProxy, err := postgres.Open(t.Context(), u.String(), postgres.WithDialTimeout(time.Second))
	if err != nil {
		t.Fatalf("Open via proxy: %v", err)
	}
	t.Cleanup(func() { _ = viaProxy.Close() })
	cut, other := postgres.NewLease(viaProxy, "cut-off"), postgres.NewLease(db, "survivor")
	mustHold(t, "cut-off", cut, true)
	mustHold(t, "survivor", other, false)

	p.Cut()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, err := other.Hold(t.Context())
		if err != nil {
			t.Fatalf("survivor: Hold: %v", err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("survivor did not get the lease within 10 s of the holder's connection closing")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got, err := cut.Hold(t.Context()); err != nil || got {
		t.Errorf("cut-off: first Hold after the cut = %v, %v; want false, nil (lost)", got, err)
	}
	got, err := cut.Hold(t.Context())
	if got || !errors.Is(err, model.ErrUnavailable) {
		t.Errorf("cut-off: Hold with the database unreachable = %v, %v; want false, ErrUnavailable", got, err)
	}
	if err := cut.Release(t.Context()); err != nil {
		t.Errorf("cut-off: Release = %v, want nil", err)
	}
	if name, err := other.Holder(t.Context()); err != nil || name != "survivor" {
		t.Errorf("Holder = %q, %v; want survivor", name, err)
	}
	_ = other.Release(t.Context())
}

// Hold, Release and Holder may be called from several goroutines at once.
func TestLeaseConcurrentUse(t *testing.T) {
	db, _ := openDB(t)
	a, b := postgres.NewLease(db, "conc-a"), postgres.NewLease(db, "conc-b")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	errs := make(chan error, 64)
	done := make(chan struct{})
	for i := range 8 {
		l := a
		if i%2 == 1 {
			l = b
		}
		go func() {
			defer func() { done <- struct{}{} }()
			for j := range 20 {
				var err error
				switch j % 4 {
				case 0, 1:
					_, err = l.Hold(ctx)
				case 2:
					_, err = l.Holder(ctx)
				case 3:
					if i < 2 {
						err = l.Release(ctx)
					}
				}
				if err != nil {
					errs <- fmt.Errorf("goroutine %d step %d: %w", i, j, err)
					return
				}
			}
		}()
	}
	for range 8 {
		<-done
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	holdA, errA := a.Hold(t.Context())
	holdB, errB := b.Hold(t.Context())
	if errA != nil || errB != nil || holdA == holdB {
		t.Errorf("after concurrent use: a holds %v (%v), b holds %v (%v); want exactly one", holdA, errA, holdB, errB)
	}
	_ = a.Release(t.Context())
	_ = b.Release(t.Context())
	if n := sessionsGone(t, db, "conc-a") + sessionsGone(t, db, "conc-b"); n != 0 {
		t.Errorf("after Release: %d named sessions left, want 0", n)
	}
}
