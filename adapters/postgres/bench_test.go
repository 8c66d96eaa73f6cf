package postgres_test

import (
	"testing"

	"github.com/espmdm/espmdm/core/model"
	"github.com/espmdm/espmdm/ports"
)

// BenchmarkListDevices reads pages of 100 from 10,000 devices (of 10
// models, states and active flags spread evenly), unfiltered and filtered,
// at the start and deep into the cursor.
func BenchmarkListDevices(b *testing.B) {
	const n = 10000
	db := migratedDB(b)
	r := newRepos(db)
	var models []model.DeviceModel
	for i := range 10 {
		models = append(models, r.model(b, "bench_"+string(rune('a'+i))))
	}
	// Bulk-load with one statement; keys are the row number in hex.
	_, err := db.Bun().ExecContext(b.Context(), `
		INSERT INTO devices (key, device_model_id, config, active, rotation_state, secret_created_at)
		SELECT lpad(to_hex(i), 8, '0'),
		       (SELECT id FROM device_models ORDER BY id OFFSET (i % 10) LIMIT 1),
		       jsonb_build_object('i', i, 'name', 'device ' || i),
		       i % 7 <> 0,
		       (ARRAY['OK','QUEUED','PENDING','TIMEOUT'])[1 + i % 4],
		       now() - make_interval(secs => i)
		FROM generate_series(1, ?) AS i`, n)
	if err != nil {
		b.Fatalf("bulk insert: %v", err)
	}
	if _, err := db.Bun().ExecContext(b.Context(), "ANALYZE devices"); err != nil {
		b.Fatalf("analyze: %v", err)
	}
	var deep int64
	if err := db.Bun().QueryRowContext(b.Context(), "SELECT id FROM devices ORDER BY id OFFSET 9000 LIMIT 1").Scan(&deep); err != nil {
		b.Fatalf("deep cursor: %v", err)
	}
	queued := model.RotationQueued
	for _, bc := range []struct {
		name string
		f    ports.DeviceFilter
	}{
		{"first_page", ports.DeviceFilter{Limit: 100}},
		{"deep_cursor", ports.DeviceFilter{Limit: 100, AfterID: deep}},
		{"model_filter", ports.DeviceFilter{Limit: 100, ModelID: &models[3].ID}},
		{"state_active_filter", ports.DeviceFilter{Limit: 100, RotationState: &queued, Active: ptr(true)}},
		{"page_of_1000", ports.DeviceFilter{Limit: 1000}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				p, err := r.devices.ListDevices(b.Context(), bc.f)
				if err != nil {
					b.Fatal(err)
				}
				if len(p.Devices) == 0 {
					b.Fatal("empty page")
				}
			}
		})
	}
	b.Run("all_pages_of_100", func(b *testing.B) {
		for b.Loop() {
			f := ports.DeviceFilter{Limit: 100}
			total := 0
			for {
				p, err := r.devices.ListDevices(b.Context(), f)
				if err != nil {
					b.Fatal(err)
				}
				total += len(p.Devices)
				if p.NextAfterID == 0 {
					break
				}
				f.AfterID = p.NextAfterID
			}
			if total != n {
				b.Fatalf("paged %d devices, want %d", total, n)
			}
		}
	})
}
