package postgres_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/core/model"
)

// told is what a DeviceChangeListener tells: "ids" (with ids), "all",
// "up" or "down".
type told struct {
	what string
	ids  []int64
}

type recordingSink struct{ c chan told }

func (s recordingSink) DevicesChanged(ids []int64) { s.c <- told{"ids", slices.Clone(ids)} }
func (s recordingSink) AllDevicesChanged()         { s.c <- told{what: "all"} }
func (s recordingSink) Listening(up bool) {
	if up {
		s.c <- told{what: "up"}
	} else {
		s.c <- told{what: "down"}
	}
}

// listen starts a listener on db with a fast liveness check, and stops
// it when the test ends (checking that it says "down" then).
func listen(t *testing.T, db *postgres.DB) chan told {
	t.Helper()
	sink := recordingSink{make(chan told, 100)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	ln := postgres.NewDeviceChangeListener(db, sink, postgres.WithPingAfter(50*time.Millisecond), postgres.WithSilenceLimit(time.Second),
		postgres.WithListenErrors(func(err error) { t.Logf("listener: %v", err) }))
	wg.Go(func() { ln.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	next(t, sink.c, "up")
	return sink.c
}

// next waits for the next thing told, which must be what (and, for "ids",
// ids in any order).
func next(t *testing.T, c chan told, what string, ids ...int64) {
	t.Helper()
	select {
	case got := <-c:
		slices.Sort(got.ids)
		slices.Sort(ids)
		if got.what != what || (what == "ids" && !slices.Equal(got.ids, ids)) {
			t.Fatalf("told %s %v, want %s %v", got.what, got.ids, what, ids)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("nothing told in 5 s, want %s %v", what, ids)
	}
}

func TestDeviceChangesTold(t *testing.T) {
	db := migratedDB(t)
	r := newRepos(db)
	m := r.model(t, "changes")
	a, b := r.device(t, m, `{}`), r.device(t, m, `{}`)
	c := listen(t, db)
	ctx := t.Context()

	// UpdateDevice: told at commit.
	if _, err := r.devices.UpdateDevice(ctx, a.ID, func(d *model.Device) ([]model.AuditEntry, error) {
		d.Active = false
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	next(t, c, "ids", a.ID)

	// A rolled-back update is not told; nor is an update of last_seen_at
	// alone. The next thing told is b's config change.
	boom := errors.New("boom")
	if _, err := r.devices.UpdateDevice(ctx, a.ID, func(d *model.Device) ([]model.AuditEntry, error) {
		d.Active = true
		return nil, boom
	}); !errors.Is(err, boom) {
		t.Fatalf("UpdateDevice: %v, want boom", err)
	}
	if err := r.devices.TouchLastSeen(ctx, a.ID, time.Now(), time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := r.devices.UpdateDevice(ctx, b.ID, func(d *model.Device) ([]model.AuditEntry, error) {
		d.Config = []byte(`{"n":2}`)
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	next(t, c, "ids", b.ID)

	// A state report, the rotation queue (both rows at once), a deletion.
	if err := r.devices.ReportState(ctx, a.ID, model.StateReport{FirmwareVersion: "1.0.0", At: time.Now()},
		func(*model.StateReport) []model.AuditEntry { return nil }); err != nil {
		t.Fatal(err)
	}
	next(t, c, "ids", a.ID)
	if _, err := db.Bun().ExecContext(ctx, "UPDATE devices SET active = true"); err != nil {
		t.Fatal(err)
	}
	next(t, c, "ids", a.ID) // b was active already: the statement changed only a
	if n, err := r.devices.QueueRotations(ctx, 0); err != nil || n != 2 {
		t.Fatalf("QueueRotations: %d, %v", n, err)
	}
	next(t, c, "ids", a.ID, b.ID)
	if _, err := r.devices.StartRotations(ctx, 1, time.Now(), func(d *model.Device) ([]model.AuditEntry, error) {
		return nil, d.StartAttempt(time.Now())
	}); err != nil {
		t.Fatal(err)
	}
	var pending int64
	if err := db.Bun().QueryRowContext(ctx, "SELECT id FROM devices WHERE rotation_state = 'PENDING'").Scan(&pending); err != nil {
		t.Fatal(err)
	}
	next(t, c, "ids", pending)
	if err := r.devices.DeleteDevice(ctx, b.ID, nil); err != nil {
		t.Fatal(err)
	}
	next(t, c, "ids", b.ID)

	// A statement changing more than 1,000 rows is one "*".
	if _, err := db.Bun().ExecContext(ctx, `INSERT INTO devices (key, device_model_id, config, active, rotation_state)
		SELECT lpad(to_hex(i), 8, '0'), ?, '{}', true, 'OK' FROM generate_series(1, 1500) AS i`, m.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Bun().ExecContext(ctx, "UPDATE devices SET config = '{\"bulk\":true}'"); err != nil {
		t.Fatal(err)
	}
	next(t, c, "all")
	if _, err := db.Bun().ExecContext(ctx, "DELETE FROM devices WHERE key <= '000003e8'"); err != nil { // 1,000 rows
		t.Fatal(err)
	}
	select {
	case got := <-c:
		if got.what != "ids" || len(got.ids) < 300 {
			t.Fatalf("told %s with %d ids, want ids in payloads of at least 300", got.what, len(got.ids))
		}
		n := len(got.ids)
		for n < 1000 {
			got = <-c
			n += len(got.ids)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the deletion of 1,000 rows was not told")
	}
}

// A listener whose connection is cut says "down" at once, then "up" again
// on a new connection.
func TestDeviceChangesListenerReconnects(t *testing.T) {
	db := migratedDB(t)
	r := newRepos(db)
	m := r.model(t, "reconnect")
	a := r.device(t, m, `{}`)
	c := listen(t, db)
	ctx := t.Context()
	var n int
	if err := db.Bun().QueryRowContext(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN %'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("terminated %d listening sessions (%v), want 1", n, err)
	}
	next(t, c, "down")
	next(t, c, "up")
	if _, err := r.devices.UpdateDevice(ctx, a.ID, func(d *model.Device) ([]model.AuditEntry, error) {
		d.Active = false
		return nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	next(t, c, "ids", a.ID)
}

// Without its triggers (migrations not applied, or the triggers disabled)
// the table tells nothing: the listener must not say it listens.
func TestDeviceChangesListenerNeedsTheTriggers(t *testing.T) {
	db := migratedDB(t)
	ctx := t.Context()
	if _, err := db.Bun().ExecContext(ctx, "ALTER TABLE devices DISABLE TRIGGER devices_changed_update"); err != nil {
		t.Fatal(err)
	}
	sink := recordingSink{make(chan told, 100)}
	lctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	ln := postgres.NewDeviceChangeListener(db, sink, postgres.WithPingAfter(50*time.Millisecond), postgres.WithSilenceLimit(300*time.Millisecond))
	wg.Go(func() { ln.Run(lctx) })
	defer func() {
		cancel()
		wg.Wait()
	}()
	select {
	case got := <-sink.c:
		t.Fatalf("told %s with a trigger disabled", got.what)
	case <-time.After(1500 * time.Millisecond):
	}
	if _, err := db.Bun().ExecContext(ctx, "ALTER TABLE devices ENABLE TRIGGER devices_changed_update"); err != nil {
		t.Fatal(err)
	}
	next(t, sink.c, "up")
	// Disabled again: the pings stop, the listener gives up within its
	// silence limit.
	if _, err := db.Bun().ExecContext(ctx, "ALTER TABLE devices DISABLE TRIGGER devices_changed_update"); err != nil {
		t.Fatal(err)
	}
	next(t, sink.c, "down")
}
