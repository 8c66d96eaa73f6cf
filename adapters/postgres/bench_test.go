package postgres_test

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/uptrace/bun"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/adapters/postgres/postgrestest"
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

// fleetSize is the number of devices of the rotation benchmarks (SPEC §10).
const fleetSize = 100000

// fleet is a database of fleetSize devices of 10 models, shaped like a
// fleet in the middle of a rotation (postgrestest.InsertFleet).
type fleet struct {
	db      *postgres.DB
	devices *postgres.DeviceRepo
	query   ports.DashboardQuery
	pending int
	queries *queryLog
}

func newFleet(b *testing.B) *fleet {
	b.Helper()
	db := migratedDB(b)
	r := newRepos(db)
	for i := range 10 {
		r.model(b, "fleet_"+string(rune('a'+i)))
	}
	if err := postgrestest.InsertFleet(b.Context(), db.Bun().DB, fleetSize); err != nil {
		b.Fatalf("fleet: %v", err)
	}
	log := &queryLog{}
	logged := postgres.WithQueryHook(db, log)
	now := time.Now()
	return &fleet{
		db:      logged,
		devices: postgres.NewDeviceRepo(logged),
		query: ports.DashboardQuery{
			WarningBefore:     now.Add(-45 * 24 * time.Hour),
			CriticalBefore:    now.Add(-90 * 24 * time.Hour),
			UnconfirmedBefore: now.Add(-84 * time.Hour),
		},
		pending: 10,
		queries: log,
	}
}

// queryLog remembers the SQL of the queries run while it records.
type queryLog struct {
	mu        sync.Mutex
	recording bool
	queries   []string
}

func (l *queryLog) BeforeQuery(ctx context.Context, _ *bun.QueryEvent) context.Context { return ctx }

func (l *queryLog) AfterQuery(_ context.Context, e *bun.QueryEvent) {
	l.mu.Lock()
	if l.recording {
		l.queries = append(l.queries, e.Query)
	}
	l.mu.Unlock()
}

// record starts recording (on) or stops it and returns what it recorded.
func (l *queryLog) record(on bool) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	q := l.queries
	l.recording, l.queries = on, nil
	return q
}

// explain runs call once and, with -v, logs the plan of every SELECT it
// ran (EXPLAIN ANALYZE, so a locking SELECT locks its rows for a moment).
func (f *fleet) explain(b *testing.B, name string, call func() error) {
	b.Helper()
	f.queries.record(true)
	err := call()
	queries := f.queries.record(false)
	if err != nil {
		b.Fatalf("%s: %v", name, err)
	}
	if !testing.Verbose() {
		return
	}
	for _, q := range queries {
		if !strings.HasPrefix(q, "SELECT") || strings.HasPrefix(q, "SELECT pg_advisory") {
			continue
		}
		rows, err := f.db.Bun().QueryContext(b.Context(), "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "+q)
		if err != nil {
			b.Fatalf("explain: %v", err)
		}
		var plan []string
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				b.Fatal(err)
			}
			plan = append(plan, line)
		}
		_ = rows.Close()
		b.Logf("%s:\n%s\n%s", name, q, strings.Join(plan, "\n"))
	}
}

// BenchmarkDashboardCounts counts the dashboard groups of 100,000 devices.
func BenchmarkDashboardCounts(b *testing.B) {
	f := newFleet(b)
	var counts map[model.DashboardGroup]int
	f.explain(b, "DashboardCounts", func() (err error) {
		counts, err = f.devices.DashboardCounts(b.Context(), f.query)
		return err
	})
	b.Logf("groups: %v", counts)
	b.Run("all_groups", func(b *testing.B) {
		for b.Loop() {
			if _, err := f.devices.DashboardCounts(b.Context(), f.query); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkDashboardPage reads pages of 100 of each dashboard group of
// 100,000 devices, first pages and deep into the cursor.
func BenchmarkDashboardPage(b *testing.B) {
	f := newFleet(b)
	var deep int64
	if err := f.db.Bun().QueryRowContext(b.Context(), "SELECT id FROM devices ORDER BY id OFFSET 90000 LIMIT 1").Scan(&deep); err != nil {
		b.Fatalf("deep cursor: %v", err)
	}
	for _, g := range model.DashboardGroups {
		for _, c := range []struct {
			name  string
			after int64
		}{{"first", 0}, {"deep", deep}} {
			name := string(g) + "_" + c.name
			f.explain(b, "DashboardPage "+name, func() error {
				_, err := f.devices.DashboardPage(b.Context(), f.query, g, 100, c.after)
				return err
			})
			b.Run(name, func(b *testing.B) {
				for b.Loop() {
					p, err := f.devices.DashboardPage(b.Context(), f.query, g, 100, c.after)
					if err != nil {
						b.Fatal(err)
					}
					if len(p.Devices) == 0 {
						b.Fatal("empty page")
					}
				}
			})
		}
	}
}

// BenchmarkRotationCounts counts 100,000 devices by rotation state, alone
// and with the rest of GET /api/rotation/status's queries.
func BenchmarkRotationCounts(b *testing.B) {
	f := newFleet(b)
	ctx := b.Context()
	f.explain(b, "RotationCounts", func() error { _, err := f.devices.RotationCounts(ctx); return err })
	f.explain(b, "InFlight", func() error { _, err := f.devices.InFlight(ctx); return err })
	f.explain(b, "LastRotationCompleted", func() error { _, err := f.devices.LastRotationCompleted(ctx); return err })
	f.explain(b, "ExpiredRotations", func() error {
		_, err := f.devices.ExpiredRotations(ctx, time.Now().Add(-5*time.Minute), time.Now().Add(-time.Minute), 100)
		return err
	})
	b.Run("counts", func(b *testing.B) {
		for b.Loop() {
			if _, err := f.devices.RotationCounts(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("status", func(b *testing.B) {
		for b.Loop() {
			if _, err := f.devices.RotationCounts(ctx); err != nil {
				b.Fatal(err)
			}
			if _, err := f.devices.InFlight(ctx); err != nil {
				b.Fatal(err)
			}
			if _, err := f.devices.LastRotationCompleted(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkStartRotations starts rotations among 100,000 devices (25,000
// QUEUED): ten per call into ten free slots, and a call that finds no slot
// free.
func BenchmarkStartRotations(b *testing.B) {
	f := newFleet(b)
	ctx := b.Context()
	start := func(d *model.Device) ([]model.AuditEntry, error) {
		d.RotationState = model.RotationPending
		d.LastRotationAttemptAt = ptr(time.Now())
		return nil, nil
	}
	retryBefore := time.Now().Add(-time.Hour)
	f.explain(b, "StartRotations", func() error {
		ds, err := f.devices.StartRotations(ctx, f.pending+10, retryBefore, start)
		f.pending += len(ds)
		return err
	})
	b.Run("claim_10", func(b *testing.B) {
		for b.Loop() {
			ds, err := f.devices.StartRotations(ctx, f.pending+10, retryBefore, start)
			if err != nil {
				b.Fatal(err)
			}
			if len(ds) != 10 {
				b.Fatalf("started %d, want 10", len(ds))
			}
			f.pending += len(ds)
		}
	})
	b.Run("no_free_slot", func(b *testing.B) {
		for b.Loop() {
			ds, err := f.devices.StartRotations(ctx, f.pending, retryBefore, start)
			if err != nil || len(ds) != 0 {
				b.Fatalf("started %d, %v; want none", len(ds), err)
			}
		}
	})
}

// BenchmarkDeviceChangeTrigger measures what the change notification
// trigger (migration 20261207000240) costs a write: the bulk UPDATE that
// queues a rotation of 100,000 devices, and one UpdateDevice, with the
// statement-level triggers in place, with them disabled, and with a
// row-level trigger NOTIFYing each id in their stead (the design not
// taken).
func BenchmarkDeviceChangeTrigger(b *testing.B) {
	const n = 100000
	db := migratedDB(b)
	r := newRepos(db)
	m := r.model(b, "trigger")
	ctx := b.Context()
	exec := func(q string, args ...any) {
		b.Helper()
		if _, err := db.Bun().ExecContext(ctx, q, args...); err != nil {
			b.Fatalf("%s: %v", q, err)
		}
	}
	exec(`INSERT INTO devices (key, device_model_id, config, active, rotation_state)
		SELECT lpad(to_hex(i), 8, '0'), ?, jsonb_build_object('i', i), true, 'OK' FROM generate_series(1, ?) AS i`, m.ID, n)
	exec("VACUUM ANALYZE devices")
	var one int64
	if err := db.Bun().QueryRowContext(ctx, "SELECT min(id) FROM devices").Scan(&one); err != nil {
		b.Fatal(err)
	}
	exec(`CREATE FUNCTION bench_row_notify() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN PERFORM pg_notify('espmdm_devices', OLD.id::text); RETURN NULL; END $$`)
	variants := []struct {
		name       string
		setup, end string
	}{
		{"statement_trigger", "", ""},
		{"no_trigger", "ALTER TABLE devices DISABLE TRIGGER USER", "ALTER TABLE devices ENABLE TRIGGER USER"},
		{"row_trigger", "ALTER TABLE devices DISABLE TRIGGER USER; CREATE TRIGGER bench_row AFTER UPDATE ON devices FOR EACH ROW EXECUTE FUNCTION bench_row_notify()",
			"DROP TRIGGER bench_row ON devices; ALTER TABLE devices ENABLE TRIGGER USER"},
	}
	exec("VACUUM ANALYZE devices")
	for _, v := range variants {
		if v.setup != "" {
			exec(v.setup)
		}
		exec("VACUUM devices")
		b.Run("queue_100k/"+v.name, func(b *testing.B) {
			state := []string{"QUEUED", "OK"}
			i := 0
			for b.Loop() {
				exec("UPDATE devices SET rotation_state = ?, updated_at = now() WHERE active AND rotation_state = ?", state[i%2], state[(i+1)%2])
				i++
			}
		})
		exec("VACUUM devices")
		// 200 updates an iteration, so that a few iterations are not
		// one pooled connection's first call of the trigger function.
		b.Run("update_device/"+v.name, func(b *testing.B) {
			const per = 200
			for b.Loop() {
				for range per {
					if _, err := r.devices.UpdateDevice(ctx, one, func(d *model.Device) ([]model.AuditEntry, error) {
						d.Active = !d.Active
						return nil, nil
					}); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*per), "µs/update")
		})
		if v.end != "" {
			exec(v.end)
		}
	}
}

// BenchmarkUpdateDevice measures UpdateDevice as a rotation runs it: one
// of 1,000 devices at a time, four at once, each update with an audit
// entry (as the generation and the ack write theirs). Besides the time it
// reports PostgreSQL's CPU per update (its processes' user and system
// time, from /proc: the stack's server is on this machine), which is what
// the update costs the machine beyond its wall time.
func BenchmarkUpdateDevice(b *testing.B) {
	const n, workers = 1000, 4
	db := migratedDB(b)
	r := newRepos(db)
	m := r.model(b, "upd")
	ctx := b.Context()
	if _, err := db.Bun().ExecContext(ctx, `INSERT INTO devices (key, device_model_id, config, active, rotation_state)
		SELECT lpad(to_hex(i), 8, '0'), ?, jsonb_build_object('i', i), true, 'OK' FROM generate_series(1, ?) AS i`, m.ID, n); err != nil {
		b.Fatal(err)
	}
	var first int64
	if err := db.Bun().QueryRowContext(ctx, "SELECT min(id) FROM devices WHERE device_model_id = ?", m.ID).Scan(&first); err != nil {
		b.Fatal(err)
	}
	var next atomic.Int64
	update := func() error {
		id := first + next.Add(1)%n
		_, err := r.devices.UpdateDevice(ctx, id, func(d *model.Device) ([]model.AuditEntry, error) {
			now := time.Now()
			d.LastRotationFetchAt = &now
			d.GenerationIntentAt = nil
			return []model.AuditEntry{{Kind: model.AuditSecretFetched, Actor: model.DeviceActor(d.ClientID()),
				DeviceID: d.ID, ClientID: d.ClientID(), Outcome: model.OutcomeSuccess, Detail: "the rotation's new secret"}}, nil
		})
		return err
	}
	cpu0 := postgresCPU(b)
	b.ResetTimer()
	var wg sync.WaitGroup
	var failed atomic.Value
	per := b.N/workers + 1
	for range workers {
		wg.Go(func() {
			for range per {
				if err := update(); err != nil {
					failed.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(postgresCPU(b)-cpu0)/float64(per*workers)*1e3, "pg_cpu_µs/update")
}

// postgresCPU is the CPU time, in milliseconds, that the postgres
// processes on this machine (and the children they reaped) have used.
func postgresCPU(tb testing.TB) int64 {
	tb.Helper()
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		tb.Fatal(err)
	}
	var ticks int64
	for _, d := range dirs {
		if d.Name()[0] < '0' || d.Name()[0] > '9' {
			continue
		}
		stat, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue // gone
		}
		s := string(stat)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open || s[open+1:end] != "postgres" {
			continue
		}
		f := strings.Fields(s[end+2:])
		for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime
			v, _ := strconv.ParseInt(f[i], 10, 64)
			ticks += v
		}
	}
	return ticks * 10 // USER_HZ is 100 on Linux
}
