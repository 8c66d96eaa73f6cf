package postgres_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/core/model"
)

func queued(t *testing.T, r repos, m model.DeviceModel, n int) []model.Device {
	t.Helper()
	var out []model.Device
	for range n {
		d := r.device(t, m, `{}`)
		d, err := r.devices.UpdateDevice(t.Context(), d.ID, func(cur *model.Device) ([]model.AuditEntry, error) {
			cur.RotationState = model.RotationQueued
			return nil, nil
		})
		if err != nil {
			t.Fatalf("UpdateDevice: %v", err)
		}
		out = append(out, d)
	}
	return out
}

func startPending(d *model.Device) ([]model.AuditEntry, error) {
	d.RotationState = model.RotationPending
	d.LastRotationAttemptAt = ptr(time.Now())
	return nil, nil
}

// A device whose row another transaction holds (an update in progress) is
// skipped, not waited for: StartRotations takes the next one at once.
func TestStartRotationsSkipsALockedDevice(t *testing.T) {
	r := newRepos(migratedDB(t))
	m := r.model(t, "skiplocked")
	ds := queued(t, r, m, 2)

	locked := make(chan struct{})
	release := make(chan struct{})
	updateDone := make(chan error, 1)
	go func() {
		_, err := r.devices.UpdateDevice(context.Background(), ds[0].ID, func(cur *model.Device) ([]model.AuditEntry, error) {
			close(locked)
			<-release
			return nil, nil
		})
		updateDone <- err
	}()
	<-locked
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	started, err := r.devices.StartRotations(ctx, 10, time.Now(), startPending)
	cancel()
	close(release)
	if err != nil {
		t.Fatalf("StartRotations while a device is locked: %v", err)
	}
	if got := deviceIDs(started); !slices.Equal(got, []int64{ds[1].ID}) {
		t.Errorf("StartRotations started %v, want only the unlocked device %d", got, ds[1].ID)
	}
	if err := <-updateDone; err != nil {
		t.Fatalf("UpdateDevice: %v", err)
	}
	// Free again, the skipped device is next.
	started, err = r.devices.StartRotations(t.Context(), 10, time.Now(), startPending)
	if err != nil || !slices.Equal(deviceIDs(started), []int64{ds[0].ID}) {
		t.Errorf("StartRotations after the update = %v, %v; want [%d]", deviceIDs(started), err, ds[0].ID)
	}
}

// The slot bound holds across processes: callers on separate pools (as
// replicas have) never start more than the limit together.
func TestStartRotationsAcrossPools(t *testing.T) {
	db, dsn := openDB(t)
	if err := db.Migrate(t.Context()); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	r := newRepos(db)
	m := r.model(t, "pools")
	queued(t, r, m, 20)
	const pools, limit = 4, 5
	devs := make([]*postgres.DeviceRepo, pools)
	for i := range devs {
		p, err := postgres.Open(t.Context(), dsn)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { _ = p.Close() })
		devs[i] = postgres.NewDeviceRepo(p)
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		started []int64
	)
	begin := make(chan struct{})
	for _, d := range devs {
		for range 3 {
			wg.Go(func() {
				<-begin
				ds, err := d.StartRotations(context.Background(), limit, time.Now(), startPending)
				if err != nil {
					t.Errorf("StartRotations: %v", err)
				}
				mu.Lock()
				started = append(started, deviceIDs(ds)...)
				mu.Unlock()
			})
		}
	}
	close(begin)
	wg.Wait()
	if len(started) != limit {
		t.Errorf("%d callers on %d pools started %d devices (%v), want %d", pools*3, pools, len(started), started, limit)
	}
}

func TestSecretSHA256MustBeLowerCaseHex(t *testing.T) {
	r := newRepos(migratedDB(t))
	d := r.device(t, r.model(t, "shacheck"), `{}`)
	hex64 := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, bad := range []string{"abc", hex64[1:], hex64 + "0", strings.ToUpper(hex64), "zz" + hex64[2:]} {
		_, err := r.devices.UpdateDevice(t.Context(), d.ID, func(cur *model.Device) ([]model.AuditEntry, error) {
			cur.SecretSHA256 = bad
			return nil, nil
		})
		var ve *model.ValidationError
		if !errors.As(err, &ve) || ve.Field != "secret_sha256" {
			t.Errorf("UpdateDevice(SecretSHA256 %q): got %v, want a ValidationError for secret_sha256", bad, err)
		}
	}
}

// The rotation migration rolls back (its down file undoes it, and the
// initial schema's down the rest) and applies again.
func TestMigrateRollbackAndReapply(t *testing.T) {
	db := migratedDB(t)
	if got := tables(t, db); !got["rotation_schedule"] {
		t.Fatalf("after Migrate: tables %v, want rotation_schedule", got)
	}
	if err := postgres.Rollback(t.Context(), db); err != nil {
		t.Fatalf("Rollback: %v", err)
	}
	if got := tables(t, db); got["rotation_schedule"] || got["devices"] {
		t.Errorf("after Rollback: tables %v, want the schema gone", got)
	}
	if err := db.Migrate(t.Context()); err != nil {
		t.Fatalf("Migrate after Rollback: %v", err)
	}
	if pending, err := db.MigrationStatus(t.Context()); err != nil || pending != 0 {
		t.Errorf("MigrationStatus = %d, %v; want 0, nil", pending, err)
	}
	r := newRepos(db)
	d := r.device(t, r.model(t, "reapplied"), `{}`)
	if _, err := r.devices.UpdateDevice(t.Context(), d.ID, func(cur *model.Device) ([]model.AuditEntry, error) {
		cur.SecretSHA256 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
		return nil, nil
	}); err != nil {
		t.Errorf("UpdateDevice(SecretSHA256) after re-applying: %v", err)
	}
}

func deviceIDs(ds []model.Device) []int64 {
	var out []int64
	for _, d := range ds {
		out = append(out, d.ID)
	}
	return out
}
