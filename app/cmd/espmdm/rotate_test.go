package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"go.uber.org/fx"

	"github.com/espmdm/espmdm/adapters/postgres"
	"github.com/espmdm/espmdm/app"
	"github.com/espmdm/espmdm/integration"
	"github.com/espmdm/espmdm/ports"
)

type rotateOnceReport struct {
	LeaseHeld     bool `json:"lease_held"`
	ScheduleFired bool `json:"schedule_fired"`
	Queued        int  `json:"queued"`
	TimedOut      int  `json:"timed_out"`
	Started       int  `json:"started"`
}

func rotateOnce(t *testing.T) rotateOnceReport {
	t.Helper()
	code, stdout, stderr := runCLIContext(t, testContext(t, 3*time.Minute), "rotate-once", "--json")
	if code != 0 {
		t.Fatalf("rotate-once --json: exit %d, stderr %q", code, stderr)
	}
	var rep rotateOnceReport
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("rotate-once --json: %v: %q", err, stdout)
	}
	return rep
}

// TestRotateOnce runs `espmdm rotate-once` as a CronJob would: each run
// takes the lease, fires the schedule when due, times out expired attempts
// and starts free slots; with the lease held elsewhere it does nothing.
func TestRotateOnce(t *testing.T) {
	st := integration.Shared(t)
	cfg := serveEnv(t, st)
	ctx := testContext(t, 3*time.Minute)

	var models ports.ModelAdmin
	var devs ports.DeviceAdmin
	core := fx.New(app.Core(cfg), fx.Populate(&models, &devs))
	if err := core.Start(ctx); err != nil {
		t.Fatalf("start the core: %v", err)
	}
	t.Cleanup(func() { _ = core.Stop(testContext(t, time.Minute)) })
	m, err := models.CreateModel(ctx, ports.NewModel{Code: "ro_" + randHex(3), Name: "rotate-once test"})
	if err != nil {
		t.Fatal(err)
	}
	kc := kcAdmin{t, st}
	for range 3 {
		d, err := devs.CreateDevice(ctx, ports.NewDevice{DeviceModelID: m.ID, Config: json.RawMessage(`{}`)})
		if err != nil {
			t.Fatal(err)
		}
		kc.cleanup(d.ClientID())
	}
	db, err := postgres.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := db.Bun().ExecContext(ctx, q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}

	// The first run ever records the schedule; nothing is due.
	if rep := rotateOnce(t); !rep.LeaseHeld || rep.ScheduleFired || rep.Started != 0 {
		t.Fatalf("first run = %+v, want the lease and nothing else", rep)
	}
	// A fire time has passed since (ROTATION_CRON, first Saturday of the
	// month): the run fires once and starts the queued devices.
	exec(`UPDATE rotation_schedule SET last_fire_at = now() - interval '40 days'`)
	if rep := rotateOnce(t); !rep.ScheduleFired || rep.Queued != 3 || rep.Started != 3 {
		t.Fatalf("run after a missed fire = %+v, want one fire queuing and starting 3", rep)
	}
	if rep := rotateOnce(t); rep.ScheduleFired || rep.Started != 0 {
		t.Fatalf("the next run = %+v, want no second fire and no free work", rep)
	}
	// An attempt older than ROTATION_TIMEOUT_SECONDS (300) times out; it
	// is retried only after ROTATION_RETRY_SECONDS (3600).
	exec(`UPDATE devices SET last_rotation_attempt_at = now() - interval '10 minutes'
	      WHERE id = (SELECT min(id) FROM devices)`)
	if rep := rotateOnce(t); rep.TimedOut != 1 || rep.Started != 0 {
		t.Fatalf("run after an expired attempt = %+v, want 1 timed out, none started", rep)
	}
	// Another process holds the lease: the run does nothing.
	other := postgres.NewLease(db, "espmdm-elsewhere")
	if held, err := other.Hold(ctx); err != nil || !held {
		t.Fatalf("hold the lease: %t, %v", held, err)
	}
	defer func() { _ = other.Release(ctx) }()
	exec(`UPDATE devices SET last_rotation_attempt_at = now() - interval '10 minutes' WHERE rotation_state = 'PENDING'`)
	if rep := rotateOnce(t); rep.LeaseHeld || rep.TimedOut != 0 {
		t.Fatalf("run while another process holds the lease = %+v, want nothing done", rep)
	}
	code, stdout, _ := runCLIContext(t, testContext(t, time.Minute), "rotate-once")
	if code != 0 || !strings.Contains(stdout, "another espmdm process holds the rotation lease") {
		t.Fatalf("rotate-once without the lease: exit %d, %q", code, stdout)
	}
}
