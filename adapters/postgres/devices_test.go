package postgres_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

func TestUpdateDeviceSerialisesConcurrentUpdates(t *testing.T) {
	r := newRepos(migratedDB(t))
	m := r.model(t, "counter")
	d := r.device(t, m, `{"n": 0}`)

	const workers = 20
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			_, err := r.devices.UpdateDevice(context.Background(), d.ID, func(cur *model.Device) ([]model.AuditEntry, error) {
				var cfg struct{ N int }
				if err := json.Unmarshal(cur.Config, &cfg); err != nil {
					return nil, err
				}
				// Widen the window for a lost update.
				time.Sleep(2 * time.Millisecond)
				cur.Config = json.RawMessage(fmt.Sprintf(`{"n": %d}`, cfg.N+1))
				return nil, nil
			})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("UpdateDevice: %v", err)
		}
	}
	got, err := r.devices.GetDevice(t.Context(), d.ID)
	if err != nil {
		t.Fatalf("GetDevice: %v", err)
	}
	var cfg struct{ N int }
	if err := json.Unmarshal(got.Config, &cfg); err != nil {
		t.Fatalf("config %s: %v", got.Config, err)
	}
	if cfg.N != workers {
		t.Errorf("after %d concurrent increments: n = %d, want %d (lost updates)", workers, cfg.N, workers)
	}
}

// UpdateDevice locks the device row only: the model row stays free, so a
// firmware upload of the model is not held up by a device update.
func TestUpdateDeviceDoesNotLockTheModel(t *testing.T) {
	r := newRepos(migratedDB(t))
	m := r.model(t, "nolock")
	d := r.device(t, m, `{}`)
	other := r.device(t, m, `{}`)
	_, err := r.devices.UpdateDevice(t.Context(), d.ID, func(cur *model.Device) ([]model.AuditEntry, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		f := model.Firmware{DeviceModelID: m.ID, Version: "2.0.0", Chip: "esp32", SHA256: strings.Repeat("ab", 32), Size: 1}
		if err := r.firmware.RecordFirmware(ctx, &f, nil); err != nil {
			return nil, fmt.Errorf("RecordFirmware while a device of the model is locked: %w", err)
		}
		if _, err := r.devices.UpdateDevice(ctx, other.ID, func(o *model.Device) ([]model.AuditEntry, error) { o.Active = false; return nil, nil }); err != nil {
			return nil, fmt.Errorf("UpdateDevice of another device while one is locked: %w", err)
		}
		cur.Config = json.RawMessage(`{"done": true}`)
		return nil, nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestConstraintTranslation(t *testing.T) {
	r := newRepos(migratedDB(t))
	ctx := t.Context()
	m := r.model(t, "constraints")
	d := r.device(t, m, `{}`)

	t.Run("duplicate model code", func(t *testing.T) {
		dup := model.DeviceModel{Code: m.Code, Name: "again"}
		err := r.models.CreateModel(ctx, &dup, nil)
		wantErrIs(t, "CreateModel", err, model.ErrConflict)
		if err != nil && !strings.Contains(err.Error(), "device model code already exists") {
			t.Errorf("CreateModel: error %q does not say what conflicts", err)
		}
	})
	t.Run("duplicate device key does not echo the key", func(t *testing.T) {
		dup := model.Device{Key: d.Key, DeviceModelID: m.ID, Config: json.RawMessage(`{}`), Active: true}
		err := r.devices.CreateDevice(ctx, &dup, nil)
		wantErrIs(t, "CreateDevice", err, model.ErrConflict)
		if err != nil && strings.Contains(err.Error(), d.Key) {
			t.Errorf("CreateDevice: error %q contains the key value", err)
		}
	})
	t.Run("device of a missing model", func(t *testing.T) {
		nd := model.Device{Key: randomKey(), DeviceModelID: m.ID + 1000, Config: json.RawMessage(`{}`), Active: true}
		wantErrIs(t, "CreateDevice", r.devices.CreateDevice(ctx, &nd, nil), model.ErrNotFound)
	})
	t.Run("firmware of a missing model", func(t *testing.T) {
		f := model.Firmware{DeviceModelID: m.ID + 1000, Version: "1", Chip: "esp32", SHA256: strings.Repeat("0", 64)}
		wantErrIs(t, "RecordFirmware", r.firmware.RecordFirmware(ctx, &f, nil), model.ErrNotFound)
	})
	t.Run("deleting a model in use", func(t *testing.T) {
		wantErrIs(t, "DeleteModel", r.models.DeleteModel(ctx, m.ID, nil), model.ErrConflict)
	})
	t.Run("rows the checks refuse", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			do    func() error
			field string
			value string
		}{
			{"bad model code", func() error {
				return r.models.CreateModel(ctx, &model.DeviceModel{Code: "Bad-Code!", Name: "x"}, nil)
			}, "code", "Bad-Code!"},
			{"empty model name", func() error {
				return r.models.CreateModel(ctx, &model.DeviceModel{Code: "noname", Name: ""}, nil)
			}, "name", ""},
			{"bad device key", func() error {
				return r.devices.CreateDevice(ctx, &model.Device{Key: "UPPER123", DeviceModelID: m.ID, Config: json.RawMessage(`{}`)}, nil)
			}, "key", "UPPER123"},
			{"config not an object", func() error {
				return r.devices.CreateDevice(ctx, &model.Device{Key: randomKey(), DeviceModelID: m.ID, Config: json.RawMessage(`[1,2]`)}, nil)
			}, "config", "[1,2]"},
			{"config with a lone surrogate escape", func() error {
				return r.devices.CreateDevice(ctx, &model.Device{Key: randomKey(), DeviceModelID: m.ID, Config: json.RawMessage(`{"k":"\ud800"}`)}, nil)
			}, "", `\ud800`},
			{"unknown rotation state", func() error {
				_, err := r.devices.UpdateDevice(ctx, d.ID, func(cur *model.Device) ([]model.AuditEntry, error) {
					cur.RotationState = "ROTATING"
					return nil, nil
				})
				return err
			}, "rotation_state", "ROTATING"},
			{"bad firmware digest", func() error {
				return r.firmware.RecordFirmware(ctx, &model.Firmware{DeviceModelID: m.ID, Version: "1", Chip: "esp32", SHA256: "XYZ"}, nil)
			}, "sha256", "XYZ"},
		} {
			err := tc.do()
			var ve *model.ValidationError
			if !errors.As(err, &ve) || ve.Field != tc.field {
				t.Errorf("%s: got error %v, want a *model.ValidationError for %q", tc.name, err, tc.field)
				continue
			}
			if tc.value != "" && strings.Contains(err.Error(), tc.value) {
				t.Errorf("%s: error %q echoes the value", tc.name, err)
			}
		}
		got, err := r.devices.GetDevice(ctx, d.ID)
		if err != nil || got.RotationState != model.RotationOK {
			t.Errorf("after a refused update: got state %q, %v; want OK", got.RotationState, err)
		}
	})
}

func TestTimestampsAreUTC(t *testing.T) {
	r := newRepos(migratedDB(t))
	ctx := t.Context()
	m := r.model(t, "utc")
	zone := time.FixedZone("UTC+5", 5*3600)
	at := time.Date(2025, 3, 1, 12, 30, 0, 123456000, zone)
	d := model.Device{Key: randomKey(), DeviceModelID: m.ID, Config: json.RawMessage(`{}`), Active: true, SecretCreatedAt: &at}
	if err := r.devices.CreateDevice(ctx, &d, nil); err != nil {
		t.Fatalf("CreateDevice: %v", err)
	}
	if err := r.devices.TouchLastSeen(ctx, d.ID, at, time.Minute); err != nil {
		t.Fatalf("TouchLastSeen: %v", err)
	}
	got, err := r.devices.GetDevice(ctx, d.ID)
	if err != nil {
		t.Fatalf("GetDevice: %v", err)
	}
	for name, ts := range map[string]time.Time{
		"CreatedAt": got.CreatedAt, "UpdatedAt": got.UpdatedAt, "SecretCreatedAt": *got.SecretCreatedAt, "LastSeenAt": *got.LastSeenAt,
		"model CreatedAt": m.CreatedAt, "create result CreatedAt": d.CreatedAt,
	} {
		if ts.Location() != time.UTC {
			t.Errorf("%s: location %v, want UTC", name, ts.Location())
		}
	}
	if !got.SecretCreatedAt.Equal(at) || !got.LastSeenAt.Equal(at) {
		t.Errorf("instants changed: SecretCreatedAt %v, LastSeenAt %v, want %v", got.SecretCreatedAt, got.LastSeenAt, at)
	}
}

func TestListDevicesPagesAcross250DevicesWithFilters(t *testing.T) {
	r := newRepos(migratedDB(t))
	ctx := t.Context()
	ma, mb := r.model(t, "page_a"), r.model(t, "page_b")
	states := []model.RotationState{model.RotationOK, model.RotationQueued, model.RotationPending, model.RotationTimeout}
	var all []model.Device
	for i := range 250 {
		m := ma
		if i%3 == 0 {
			m = mb
		}
		d := r.device(t, m, fmt.Sprintf(`{"i": %d}`, i))
		d, err := r.devices.UpdateDevice(ctx, d.ID, func(cur *model.Device) ([]model.AuditEntry, error) {
			cur.RotationState = states[i%len(states)]
			cur.Active = i%5 != 0
			return nil, nil
		})
		if err != nil {
			t.Fatalf("UpdateDevice: %v", err)
		}
		all = append(all, d)
	}

	type filter struct {
		name string
		f    ports.DeviceFilter
		keep func(model.Device) bool
	}
	filters := []filter{
		{"none", ports.DeviceFilter{}, func(model.Device) bool { return true }},
		{"model a", ports.DeviceFilter{ModelID: &ma.ID}, func(d model.Device) bool { return d.DeviceModelID == ma.ID }},
		{"queued", ports.DeviceFilter{RotationState: ptr(model.RotationQueued)}, func(d model.Device) bool { return d.RotationState == model.RotationQueued }},
		{"inactive", ports.DeviceFilter{Active: ptr(false)}, func(d model.Device) bool { return !d.Active }},
		{"model b, TIMEOUT, active", ports.DeviceFilter{ModelID: &mb.ID, RotationState: ptr(model.RotationTimeout), Active: ptr(true)},
			func(d model.Device) bool {
				return d.DeviceModelID == mb.ID && d.RotationState == model.RotationTimeout && d.Active
			}},
	}
	for _, fc := range filters {
		var want []int64
		for _, d := range all {
			if fc.keep(d) {
				want = append(want, d.ID)
			}
		}
		for _, limit := range []int{0, 1, 7, 50, 250, 1000, 5000} {
			f := fc.f
			f.Limit = limit
			effective := limit
			switch {
			case limit == 0:
				effective = ports.DefaultPageSize
			case limit > ports.MaxPageSize:
				effective = ports.MaxPageSize
			}
			var got []int64
			for pages := 0; ; pages++ {
				if pages > len(all)+1 {
					t.Fatalf("%s, limit %d: pagination does not end", fc.name, limit)
				}
				p, err := r.devices.ListDevices(ctx, f)
				if err != nil {
					t.Fatalf("%s, limit %d: ListDevices: %v", fc.name, limit, err)
				}
				if len(p.Devices) > effective {
					t.Fatalf("%s, limit %d: page of %d", fc.name, limit, len(p.Devices))
				}
				for _, d := range p.Devices {
					if d.ModelCode == "" || !fc.keep(d) {
						t.Fatalf("%s, limit %d: device %+v does not match", fc.name, limit, d)
					}
					got = append(got, d.ID)
				}
				if p.NextAfterID == 0 {
					break
				}
				if len(p.Devices) != effective || p.NextAfterID != p.Devices[len(p.Devices)-1].ID {
					t.Fatalf("%s, limit %d: page of %d with NextAfterID %d", fc.name, limit, len(p.Devices), p.NextAfterID)
				}
				f.AfterID = p.NextAfterID
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s, limit %d: got %d ids, want %d (%v...)", fc.name, limit, len(got), len(want), want[:min(5, len(want))])
			}
		}
	}

	// A page that ends exactly at the last row says so.
	p, err := r.devices.ListDevices(ctx, ports.DeviceFilter{Limit: 250})
	if err != nil || len(p.Devices) != 250 || p.NextAfterID != 0 {
		t.Errorf("exact last page: got %d devices, next %d, %v; want 250, 0, nil", len(p.Devices), p.NextAfterID, err)
	}
}

func TestDeviceKeysExistManyKeys(t *testing.T) {
	r := newRepos(migratedDB(t))
	m := r.model(t, "keys")
	want := map[string]bool{}
	var keys []string
	for range 30 {
		d := r.device(t, m, `{}`)
		want[d.Key] = true
		keys = append(keys, d.Key, randomKey())
	}
	got, err := r.devices.DeviceKeysExist(t.Context(), keys)
	if err != nil {
		t.Fatalf("DeviceKeysExist: %v", err)
	}
	if len(got) != len(want) {
		t.Errorf("DeviceKeysExist: got %d keys, want %d", len(got), len(want))
	}
	for k := range want {
		if !got[k] {
			t.Errorf("DeviceKeysExist: key %s missing", k)
		}
	}
}

func TestUnavailable(t *testing.T) {
	wantUnavailable := func(t *testing.T, what string, err error) {
		t.Helper()
		var ue *model.UnavailableError
		if !errors.Is(err, model.ErrUnavailable) || !errors.As(err, &ue) || ue.Service != "postgres" {
			t.Errorf("%s: got error %v, want a postgres *model.UnavailableError", what, err)
		}
	}

	t.Run("Open on a closed port", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		db, err := postgres.Open(ctx, "postgres://postgres:hunter2@"+addr+"/postgres?sslmode=disable")
		if err == nil {
			db.Close()
		}
		wantUnavailable(t, "Open", err)
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Open: error %q contains the password", err)
		}
	})

	t.Run("server goes away under an open pool", func(t *testing.T) {
		_, dbURL := openDB(t)
		u, err := url.Parse(dbURL)
		if err != nil {
			t.Fatal(err)
		}
		p := newProxy(t, u.Host)
		u.Host = p.Addr()
		db, err := postgres.Open(t.Context(), u.String(), postgres.WithDialTimeout(2*time.Second))
		if err != nil {
			t.Fatalf("Open through the proxy: %v", err)
		}
		defer db.Close()
		if err := db.Migrate(t.Context()); err != nil {
			t.Fatalf("Migrate: %v", err)
		}
		r := newRepos(db)
		m := r.model(t, "goes_away")
		p.Cut()

		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		_, err = r.models.GetModel(ctx, m.ID)
		wantUnavailable(t, "GetModel", err)
		_, err = r.devices.ListDevices(ctx, ports.DeviceFilter{})
		wantUnavailable(t, "ListDevices", err)
		_, err = r.devices.UpdateDevice(ctx, 1, func(*model.Device) ([]model.AuditEntry, error) { return nil, nil })
		wantUnavailable(t, "UpdateDevice", err)
		wantUnavailable(t, "Ping", db.Ping(ctx))
		_, err = db.MigrationStatus(ctx)
		wantUnavailable(t, "MigrationStatus", err)
	})

	t.Run("a statement cut off by its deadline", func(t *testing.T) {
		db := migratedDB(t)
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		r := newRepos(db)
		_, err := r.devices.UpdateDevice(ctx, 1, func(*model.Device) ([]model.AuditEntry, error) { return nil, nil })
		// No such device: a quick ErrNotFound, the deadline is not hit.
		wantErrIs(t, "UpdateDevice(missing)", err, model.ErrNotFound)
		m := r.model(t, "slow")
		d := r.device(t, m, `{}`)
		_, err = r.devices.UpdateDevice(ctx, d.ID, func(*model.Device) ([]model.AuditEntry, error) {
			<-ctx.Done()
			return nil, nil
		})
		wantUnavailable(t, "UpdateDevice past its deadline", err)
	})
}

func TestOpenRefusesBadURLWithoutEchoingIt(t *testing.T) {
	for _, dsn := range []string{"", "postgres://user:s3cret@host:bad port/db", "::not a url s3cret"} {
		_, err := postgres.Open(t.Context(), dsn)
		if err == nil {
			t.Errorf("Open(%q): no error", dsn)
			continue
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("Open: error %q echoes the URL", err)
		}
	}
}
